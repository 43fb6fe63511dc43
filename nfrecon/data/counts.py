"""Detector counts <-> line integrals, and the noise model of simulated scans.

Line integrals are ``p = -ln(I / I0)`` (dimensionless); arrays are ``[view, v, u]`` (any
leading shape works). The noise model is Poisson photon counting with mean
``I0 * exp(-p)`` plus optional Gaussian electronic (read) noise in counts.
"""

from __future__ import annotations

import numpy as np
import torch

from nfrecon.errors import InputError

MIN_TRANSMISSION = 1e-6  # measured transmissions are clamped here: p <= -ln(1e-6) = 13.8


def counts_to_line_integrals(counts, flat, dark=None, min_transmission: float = MIN_TRANSMISSION) -> np.ndarray:
    """Flat/dark-field normalisation and log: ``p = -ln((I - D) / (F - D))`` as float32.

    counts I: raw detector values (views, rows, cols); flat F and dark D: one (rows, cols)
    frame or one per view (same shape as counts); dark defaults to 0. Average repeated
    flat/dark frames beforehand. The transmission ``(I - D) / (F - D)`` is clamped to
    ``>= min_transmission`` (1e-6 by default, so p <= 13.8) to keep the log finite where
    noise makes ``I <= D``.
    """
    arrays = {"counts": counts, "flat": flat, "dark": 0.0 if dark is None else dark}
    arrays = {k: np.asarray(v, dtype=np.float64) for k, v in arrays.items()}
    for name, arr in arrays.items():
        if not np.all(np.isfinite(arr)):
            raise InputError(f"{name}: contains NaN or Inf")
        if np.any(arr < 0):
            raise InputError(f"{name}: negative detector values (min {arr.min():g})")
    c, f, d = arrays["counts"], arrays["flat"], arrays["dark"]
    try:
        shape = np.broadcast_shapes(c.shape, f.shape, d.shape)
    except ValueError:
        shape = None
    if shape != c.shape:
        raise InputError(f"flat/dark: shapes {f.shape} / {d.shape} do not match the counts {c.shape}")
    gain = f - d
    if np.any(gain <= 0):
        raise InputError(f"flat: {np.count_nonzero(gain <= 0)} pixels have flat <= dark (dead or saturated pixels?)")
    if not 0 < min_transmission < 1:
        raise InputError(f"min_transmission: must be in (0, 1), got {min_transmission}")
    transmission = np.clip((c - d) / gain, min_transmission, None)
    return (-np.log(transmission)).astype(np.float32)


def add_noise(clean_p, photons, read_noise_std: float = 0.0, generator: torch.Generator | int | None = None):
    """Noisy line integrals from noiseless ``clean_p`` (numpy or torch, any shape).

    Counts ``N ~ Poisson(I0 exp(-p)) + Normal(0, read_noise_std^2)`` are clamped to
    ``N >= 1`` and converted back to ``-ln(N / I0)``. photons I0: a positive scalar or an
    array broadcastable to ``clean_p`` (per-pixel flat field). ``generator``: a torch
    Generator on the data's device, or a seed (int); None draws from torch's global RNG.
    numpy in -> float32 numpy out; a tensor keeps its device and dtype.
    """
    is_tensor = isinstance(clean_p, torch.Tensor)
    p = clean_p if is_tensor else torch.from_numpy(np.asarray(clean_p, dtype=np.float32))
    if not torch.isfinite(p).all():
        raise InputError("projections: contain NaN or Inf")
    i0 = torch.as_tensor(np.asarray(photons, dtype=np.float64), device=p.device)
    if not (torch.isfinite(i0).all() and (i0 > 0).all()):
        raise InputError(f"photons: photon count must be positive, got {photons}")
    if not (np.isfinite(read_noise_std) and read_noise_std >= 0):
        raise InputError(f"read_noise: must be >= 0 counts, got {read_noise_std}")
    if isinstance(generator, int):
        generator = torch.Generator(device=p.device).manual_seed(generator)
    mean = i0 * torch.exp(-p.double())
    counts = torch.poisson(mean, generator=generator)
    if read_noise_std > 0:
        counts = counts + read_noise_std * torch.randn(counts.shape, generator=generator, dtype=counts.dtype,
                                                       device=counts.device)
    noisy = (torch.log(i0) - torch.log(counts.clamp(min=1.0))).to(p.dtype)
    return noisy if is_tensor else noisy.numpy()
