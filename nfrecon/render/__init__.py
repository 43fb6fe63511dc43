"""Differentiable ray marching of fields through cone-beam geometry."""
