"""The iterative baselines as one configurable method: settings, the data-relative TV weight, a run.

:class:`IterativeSettings` names a solver of :mod:`nfrecon.recon.iterative` /
:mod:`nfrecon.recon.tv` with its parameters; :func:`reconstruct` runs it on a scan's
projections. Shared by ``nfrecon iterative`` and ``nfrecon bench``.

The TV weight is relative. ``tv`` minimises ``1/2 ||A x - p||^2 + lam_abs * TV(x)``
(x >= 0) with ``lam_abs = lam * (M / N) * x_ref * l^3`` (see :func:`tv_scale`), where M is
the number of rays that cross the volume box, N the number of voxels, l the mean chord
(mm) of those rays through the box and ``x_ref = sum(p) / sum(chords)`` the mean
attenuation along them (1/mm). With that factor the objective is
``M (x_ref l)^2 * [1/2 mean_rays(((A x - p) / (x_ref l))^2) + lam * mean_voxels(|grad x|) * l / x_ref]``:
both terms are dimensionless means, so one ``lam`` weighs data against TV the same way
for any number of views, detector pixels or voxels of the same field of view, and for
any overall attenuation scale of the object.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch

from nfrecon.errors import InputError
from nfrecon.geometry.cone import ConeGeometry
from nfrecon.geometry.volume import VolumeGeometry
from nfrecon.ops.projector import VoxelProjector
from nfrecon.recon.iterative import IterativeResult, cgls, os_sart, sirt
from nfrecon.recon.tv import tv_pdhg

Method = Literal["cgls", "sirt", "os-sart", "tv"]
METHODS: tuple[str, ...] = Method.__args__

# Iterations run when none are asked for, from PSNR curves on the torso CT (protocol
# condcbnt scaled to 32^3, 50 noisy views): CGLS peaks at 10-11 iterations (23.9 dB) and
# then fits the noise (semi-convergence); SIRT levels off near 150 (24.3 dB of 24.4);
# OS-SART with 10 subsets gains 0.05 dB per pass at 20 passes (25.8 dB); TV with the default
# lam gains < 0.05 dB per iteration after about 100 (33.1 dB at 32^3, 35.0 dB at 64^3).
DEFAULT_ITERS = {"cgls": 10, "sirt": 150, "os-sart": 20, "tv": 100}
DEFAULT_SUBSETS = 10
# Relative TV weight (module doc): the best PSNR after 100 iterations in each case measured
# (torso CT, protocol condcbnt scaled, noisy views):
# 32^3, 50 views: lam 3e-5 31.4 dB, 1e-4 33.1, 3e-4 32.8, 1e-3 28.0 (still converging);
# 32^3, 400 views: 3e-5 31.3 dB, 1e-4 32.7, 3e-4 31.9;
# 64^3, 50 views: 3e-5 34.7 dB (SSIM 0.85), 1e-4 35.0 (0.81), 3e-4 33.5 (0.74).
DEFAULT_LAM = 1e-4


@dataclass(frozen=True)
class IterativeSettings:
    """A solver and its parameters.

    method: cgls (unconstrained least squares), sirt, os-sart (ordered subsets of views),
    tv (Chambolle-Pock for least squares + relative TV weight ``lam``); iters: iterations
    (None: :data:`DEFAULT_ITERS`); subsets: OS-SART subsets (each holds every k-th view);
    lam: relative TV weight (see the module doc); tol: stop once the solver's change or
    residual measure falls below it (None: run all iterations); nonneg: clip mu at 0
    (sirt, os-sart, tv; cgls is unconstrained and ignores it); backend: the projector's
    implementation (auto, torch, cpp, cuda: :class:`~nfrecon.ops.projector.VoxelProjector`).
    """

    method: Method = "tv"
    iters: int | None = None
    subsets: int = DEFAULT_SUBSETS
    lam: float = DEFAULT_LAM
    tol: float | None = None
    nonneg: bool = True
    backend: str = "auto"

    @property
    def n_iter(self) -> int:
        return DEFAULT_ITERS[self.method] if self.iters is None else int(self.iters)

    def check(self, n_views: int) -> None:
        """InputError naming the option for values the solver cannot run with."""
        if self.method not in METHODS:
            raise InputError(f"--method: unknown method {self.method!r}; known: {', '.join(METHODS)}")
        if self.iters is not None and (int(self.iters) != self.iters or self.iters < 1):
            raise InputError(f"--iters: must be a positive integer, got {self.iters}")
        if self.method == "os-sart" and not (int(self.subsets) == self.subsets and 1 <= self.subsets <= n_views):
            raise InputError(f"--subsets: must be an integer in [1, {n_views}] (the scan's views), got {self.subsets}")
        if not (math.isfinite(self.lam) and self.lam >= 0):
            raise InputError(f"--lam: must be a finite number >= 0, got {self.lam}")
        if self.tol is not None and not (math.isfinite(self.tol) and self.tol > 0):
            raise InputError(f"--tol: must be a positive number, got {self.tol}")


def tv_scale(proj: torch.Tensor, A: VoxelProjector) -> dict:
    """The factor that turns the relative TV weight into the absolute one, and its parts.

    Returns ``{"scale": (M / N) * x_ref * l^3 (mm^2), "rays": M, "voxels": N,
    "mean_chord_mm": l, "x_ref_per_mm": x_ref}`` (module doc). The chords are the line
    integrals of a uniform box of 1/mm (one projection); negative line integrals
    (noise in air) count as 0.
    """
    chords = A(torch.ones(A.vol_geom.shape, dtype=proj.dtype, device=proj.device))
    hit = chords > 1e-6 * float(chords.max())
    rays = int(hit.sum())
    if rays == 0:
        raise InputError("tv: no ray of the scan crosses the reconstruction volume")
    chord_sum = float(chords[hit].sum(dtype=torch.float64))
    ell = chord_sum / rays
    x_ref = float(proj[hit].clamp(min=0).sum(dtype=torch.float64)) / chord_sum
    n = A.vol_geom.n_voxels
    return {"scale": rays / n * x_ref * ell**3, "rays": rays, "voxels": n, "mean_chord_mm": ell, "x_ref_per_mm": x_ref}


def reconstruct(
    proj: torch.Tensor,
    geom: ConeGeometry,
    vol_geom: VolumeGeometry,
    settings: IterativeSettings,
    callback: Callable[[int, torch.Tensor], object] | None = None,
) -> tuple[IterativeResult, dict]:
    """Run ``settings`` on line integrals ``proj`` (views, rows, cols) on their device.

    Returns the solver's result (volume (nz, ny, nx) mu in 1/mm, residual history, wall
    time of the solver) and a JSON-able record of what ran (``lam_abs`` and the parts of
    :func:`tv_scale` for tv). ``callback(k, x)`` as in :mod:`nfrecon.recon.iterative`.
    """
    settings.check(geom.n_views)
    n = settings.n_iter
    info: dict = {"method": settings.method, "iterations_requested": n}
    if settings.method == "os-sart":
        result = os_sart(proj, geom, vol_geom, n, int(settings.subsets), nonneg=settings.nonneg, tol=settings.tol,
                         callback=callback, projector_options={"backend": settings.backend})
        info["subsets"] = int(settings.subsets)
    else:
        A = VoxelProjector(vol_geom, geom, backend=settings.backend)
        if settings.method == "cgls":
            result = cgls(proj, A, n, tol=settings.tol, callback=callback)
        elif settings.method == "sirt":
            result = sirt(proj, A, n, nonneg=settings.nonneg, tol=settings.tol, callback=callback)
        else:
            scale = tv_scale(proj, A)
            lam_abs = settings.lam * scale["scale"]
            result = tv_pdhg(proj, A, n, lam_abs, nonneg=settings.nonneg, tol=settings.tol, callback=callback)
            info.update(lam=settings.lam, lam_abs=lam_abs, lam_scale=scale)
    info["nonneg"] = settings.nonneg and settings.method != "cgls"
    return result, info
