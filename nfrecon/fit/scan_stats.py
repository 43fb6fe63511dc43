"""Attenuation statistics of a scan, read off its projections before a field is built.

Both numbers are in 1/mm. :func:`estimate_mu_max` sets the upper end of a field's sigmoid
output (NAF fields, pretrained backbones); :func:`mean_attenuation` is the value a fresh
field starts near. Projections are line integrals (dimensionless), the recon grid's box
(mm) is where the rays' chords are measured.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from nfrecon.data.scan import Scan
from nfrecon.errors import InputError
from nfrecon.geometry.rays import pixel_rays, ray_box
from nfrecon.recon.fdk import fdk

# the FDK behind the estimate runs on at most 64^3 voxels: a percentile needs no finer grid
COARSE_CELLS = 64
# mu_max = 1.25 x the 99.9th percentile of a mu volume (coarse FDK or ground truth): headroom
# above the brightest structures, so that the field's sigmoid does not saturate on them
MU_MAX_MARGIN = 1.25
MU_MAX_PERCENTILE = 99.9


def volume_mu_max(volume, margin: float = MU_MAX_MARGIN) -> float:
    """``margin`` times the 99.9th percentile of a mu volume (1/mm)."""
    return margin * float(np.percentile(volume, MU_MAX_PERCENTILE))


def estimate_mu_max(scan: Scan, margin: float = MU_MAX_MARGIN) -> float:
    """Upper end of the attenuation range (1/mm) for the field's sigmoid output.

    From an FDK of the scan on a coarse (<= 64^3) version of the recon grid: ``margin``
    times its 99.9th percentile. For non-circular geometries: ``margin`` times the
    largest line integral divided by the shortest chord through the box that carries it.
    """
    grid = scan.recon_geom
    if scan.geom.is_circular():
        coarse = grid.with_shape(tuple(min(n, COARSE_CELLS) for n in grid.shape))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            vol = fdk(scan.projections, scan.geom, coarse).numpy()
        value = volume_mu_max(vol, margin)
    else:
        value = margin * (float(scan.projections.max()) / float(min(grid.size)))
    if not np.isfinite(value) or value <= 0:
        raise InputError("cannot estimate the attenuation range of this scan; pass --mu-max")
    return value


def mean_attenuation(scan: Scan, max_rays: int = 65536) -> float:
    """Mean mu (1/mm) along the rays: sum of line integrals / sum of chord lengths in the box
    (every k-th ray, at most ``max_rays`` of them)."""
    step = max(1, scan.geom.n_rays // max_rays)
    idx = torch.arange(0, scan.geom.n_rays, step)
    o, d = pixel_rays(scan.geom, idx, dtype=torch.float64)
    t_near, t_far = ray_box(o, d, scan.recon_geom.box_min, scan.recon_geom.box_max)
    chord = float((t_far - t_near).clamp(min=0).sum())
    total = float(np.clip(scan.projections.reshape(-1)[idx.numpy()], 0, None).sum())
    return total / chord if chord > 0 else 0.0
