"""Fitting fields to scans: per-scan NAF fitting (and, later, conditioned fields)."""
