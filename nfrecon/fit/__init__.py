"""Fitting fields to scans: per-scan NAF and CondCBNT test-time fitting, CondCBNT pretraining."""
