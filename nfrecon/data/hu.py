"""Hounsfield units <-> linear attenuation mu (1/mm), for numpy arrays and torch tensors."""

from __future__ import annotations

import numpy as np
import torch

from nfrecon.errors import InputError

MU_WATER = 0.0206
"""mu of water (1/mm) at about 60 keV: the default of every HU conversion."""


def _slope(mu_water: float, mu_slope: float | None) -> float:
    slope = mu_water if mu_slope is None else mu_slope
    if not (np.isfinite(mu_water) and mu_water > 0 and np.isfinite(slope) and slope > 0):
        raise InputError(f"HU conversion: mu_water and mu_slope must be positive, got {mu_water}, {mu_slope}")
    return float(slope)


def hu_to_mu(hu, mu_water: float = MU_WATER, mu_slope: float | None = None, hu_min: float | None = -1000.0,
             hu_max: float | None = None):
    """Linear attenuation (1/mm) from Hounsfield units: ``mu_water + slope * clip(HU) / 1000``.

    ``slope`` defaults to ``mu_water`` (so ``mu = mu_water * (1 + HU/1000)``); HU are clipped
    to ``[hu_min, hu_max]`` (None: open) and the result to ``mu >= 0``. Works on numpy arrays
    (returns float32) and torch tensors (keeps device; integer tensors become float32).
    """
    slope = _slope(mu_water, mu_slope)
    if isinstance(hu, torch.Tensor):
        h = hu if hu.is_floating_point() else hu.float()
        if hu_min is not None or hu_max is not None:
            h = h.clamp(min=hu_min, max=hu_max)
        return (mu_water + slope * h / 1000.0).clamp(min=0.0)
    h = np.clip(np.asarray(hu, dtype=np.float32), hu_min, hu_max)
    return np.clip(mu_water + slope * h / 1000.0, 0.0, None).astype(np.float32)


def mu_to_hu(mu, mu_water: float = MU_WATER, mu_slope: float | None = None):
    """Hounsfield units from mu (1/mm): ``1000 * (mu - mu_water) / slope``, slope = mu_water by default.

    numpy: float64 in -> float64 out, anything else -> float32; torch tensors keep their dtype.
    """
    slope = _slope(mu_water, mu_slope)
    if isinstance(mu, torch.Tensor):
        return (mu - mu_water) * (1000.0 / slope)
    mu = np.asarray(mu)
    dtype = np.float64 if mu.dtype == np.float64 else np.float32
    return ((mu.astype(dtype) - mu_water) * (1000.0 / slope)).astype(dtype)
