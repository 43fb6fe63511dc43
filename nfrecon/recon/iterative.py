"""Iterative reconstruction on the voxel projector: CGLS, SIRT and OS-SART (pure PyTorch).

Volumes are (nz, ny, nx) tensors of mu (1/mm), projection stacks (views, rows, cols) of
line integrals. Every solver works in the dtype and on the device of the projections
(float32 unless they are float64), starts from ``x0`` (zero by default) and returns an
:class:`IterativeResult`. ``A`` is a :class:`~nfrecon.ops.projector.VoxelProjector` (or
any object with ``A(x)``, ``A.T(y)``, ``A.vol_geom.shape`` and ``A.geom.proj_shape``).

Residual history: ``residuals[k]`` is ``||A x_k - p|| / ||p||`` for the estimate after
``k`` iterations (``k = 0`` is ``x0``), so it holds ``n_iter + 1`` values. For
OS-SART the values between the first and the last (both exact) are accumulated over the
subsets during the pass that starts from ``x_k``, each subset measured just before its
own update: no extra projection, exact when there is one subset (SIRT).

``callback(k, x)`` is called after iteration ``k`` (1-based) with the current volume
(the live tensor: read it, do not modify it); a truthy return value stops the run.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from nfrecon.errors import InputError
from nfrecon.geometry.cone import ConeGeometry
from nfrecon.geometry.volume import VolumeGeometry
from nfrecon.ops.projector import VoxelProjector

Callback = Callable[[int, torch.Tensor], Any]


@dataclass
class IterativeResult:
    """Outcome of an iterative reconstruction.

    volume: (nz, ny, nx) mu in 1/mm; n_iter: iterations run; residuals: relative data
    residual ``||A x_k - p|| / ||p||`` for k = 0..n_iter; wall_s: seconds, setup included;
    stopped_early: the tolerance was met or the callback asked to stop.
    """

    volume: torch.Tensor
    n_iter: int
    residuals: list[float] = field(default_factory=list)
    wall_s: float = 0.0
    stopped_early: bool = False


# ---------------------------------------------------------------------- validation
def as_projections(name: str, proj, proj_shape: Sequence[int]) -> torch.Tensor:
    """``proj`` as a floating tensor of the expected shape, free of NaN/Inf."""
    proj = torch.as_tensor(proj)
    if not (proj.is_floating_point() and proj.dtype in (torch.float32, torch.float64)):
        proj = proj.to(torch.float32)
    if tuple(proj.shape) != tuple(proj_shape):
        raise InputError(f"{name}: proj has shape {tuple(proj.shape)}, geometry expects {tuple(proj_shape)}")
    if not bool(torch.isfinite(proj).all()):
        raise InputError(f"{name}: proj contains NaN or Inf")
    return proj


def initial_volume(name: str, x0, vol_shape: Sequence[int], like: torch.Tensor) -> torch.Tensor:
    """A fresh copy of ``x0`` (zeros when None) with the dtype and device of ``like``."""
    if x0 is None:
        return torch.zeros(tuple(vol_shape), dtype=like.dtype, device=like.device)
    x = torch.as_tensor(x0).to(dtype=like.dtype, device=like.device).clone()
    if tuple(x.shape) != tuple(vol_shape):
        raise InputError(f"{name}: x0 has shape {tuple(x.shape)}, volume geometry expects {tuple(vol_shape)}")
    if not bool(torch.isfinite(x).all()):
        raise InputError(f"{name}: x0 contains NaN or Inf")
    return x


def check_iterations(name: str, n_iter: int, tol: float | None) -> None:
    if int(n_iter) != n_iter or n_iter < 1:
        raise InputError(f"{name}: n_iter must be a positive integer, got {n_iter}")
    if tol is not None and not (math.isfinite(tol) and tol > 0):
        raise InputError(f"{name}: tol must be positive, got {tol}")


def _check_relax(name: str, relax: float) -> None:
    if not (0 < relax < 2):
        raise InputError(f"{name}: relax must lie in (0, 2), got {relax}")


# ---------------------------------------------------------------------- bookkeeping
def norm(t: torch.Tensor) -> float:
    """Euclidean norm of a tensor, accumulated in float64."""
    return float(torch.linalg.vector_norm(t.reshape(-1), dtype=torch.float64))


class Monitor:
    """Times a run, keeps its relative residual history and calls the user's callback."""

    def __init__(self, proj: torch.Tensor, callback: Callback | None):
        self.start = time.perf_counter()
        self.scale = norm(proj) or 1.0
        self.residuals: list[float] = []
        self.callback = callback

    def record(self, residual_norm: float) -> float:
        """Store ``residual_norm / ||p||`` and return it."""
        self.residuals.append(residual_norm / self.scale)
        return self.residuals[-1]

    def stop_requested(self, k: int, x: torch.Tensor) -> bool:
        return bool(self.callback(k, x)) if self.callback is not None else False

    def result(self, x: torch.Tensor, n_iter: int, stopped: bool) -> IterativeResult:
        if x.is_cuda:
            torch.cuda.synchronize(x.device)
        return IterativeResult(x, n_iter, self.residuals, time.perf_counter() - self.start, stopped)


def safe_reciprocal(t: torch.Tensor, rtol: float = 1e-6) -> torch.Tensor:
    """1 / t where ``t > rtol * max(t)``, else 0 (rays missing the volume, voxels no ray sees)."""
    floor = rtol * float(t.max()) if t.numel() else 0.0
    return torch.where(t > floor, t.reciprocal(), torch.zeros_like(t))


def operator_norm(A: VoxelProjector, like: torch.Tensor, n_iter: int = 12) -> float:
    """Largest singular value of ``A`` by power iteration on ``A^T A``.

    Starts from ones, which is not orthogonal to the leading singular vector of a
    nonnegative matrix (Perron-Frobenius). ``like`` fixes the dtype and device. The
    estimate approaches the norm from below; 0 when no ray crosses the volume.
    """
    x = torch.ones(A.vol_geom.shape, dtype=like.dtype, device=like.device)
    sigma = 0.0
    for _ in range(int(n_iter)):
        y = A.T(A(x / norm(x)))
        sigma = math.sqrt(norm(y))
        if sigma == 0:
            break
        x = y
    return sigma


# ---------------------------------------------------------------------- CGLS
def cgls(
    proj,
    A: VoxelProjector,
    n_iter: int,
    x0=None,
    tol: float | None = None,
    callback: Callback | None = None,
) -> IterativeResult:
    """Conjugate gradient least squares: minimise ``||A x - p||^2``.

    Each iteration costs one projection and one backprojection. Stops after ``n_iter``
    iterations, once ``||A x - p|| / ||p|| < tol``, or when the normal-equations residual
    ``A^T (p - A x)`` is exactly zero (both count as ``stopped_early``). From ``x0 = 0``
    the iterates stay in the range of ``A^T`` and tend to the minimum-norm least-squares
    solution; iterate ``k`` minimises ``||A x - p||`` over the Krylov space
    ``span{A^T p, (A^T A) A^T p, ...}`` of dimension ``k``.
    """
    check_iterations("cgls", n_iter, tol)
    p = as_projections("cgls", proj, A.geom.proj_shape)
    x = initial_volume("cgls", x0, A.vol_geom.shape, p)
    mon = Monitor(p, callback)
    r = p - A(x) if x0 is not None else p.clone()
    s = A.T(r)
    d = s.clone()
    gamma = norm(s) ** 2
    res = mon.record(norm(r))
    k, stopped = 0, (tol is not None and res < tol) or gamma == 0
    while k < n_iter and not stopped:
        q = A(d)
        alpha = gamma / max(norm(q) ** 2, torch.finfo(p.dtype).tiny)
        x.add_(d, alpha=alpha)
        r.sub_(q, alpha=alpha)
        s = A.T(r)
        gamma, gamma_old = norm(s) ** 2, gamma
        d.mul_(gamma / gamma_old).add_(s)
        k += 1
        res = mon.record(norm(r))
        stopped = mon.stop_requested(k, x) or (tol is not None and res < tol) or gamma == 0
    return mon.result(x, k, stopped)


# ---------------------------------------------------------------------- SIRT / OS-SART
def sirt(
    proj,
    A: VoxelProjector,
    n_iter: int,
    relax: float = 1.0,
    nonneg: bool = True,
    x0=None,
    tol: float | None = None,
    callback: Callback | None = None,
) -> IterativeResult:
    """SIRT: ``x <- x + relax * C A^T R (p - A x)``, with ``R = 1/(A 1)``, ``C = 1/(A^T 1)``.

    Rays missing the volume and voxels no ray crosses get weight 0. ``nonneg`` clips
    negative mu after each update. Stops after ``n_iter`` iterations or after the first
    iteration that starts with ``||A x - p|| / ||p|| < tol``. Setup: one extra projection
    and backprojection; each iteration one of each.
    """
    check_iterations("sirt", n_iter, tol)
    _check_relax("sirt", relax)
    p = as_projections("sirt", proj, A.geom.proj_shape)
    x = initial_volume("sirt", x0, A.vol_geom.shape, p)
    return _sart([p], [A], x, x0 is not None, n_iter, relax, nonneg, tol, Monitor(p, callback))


def os_sart(
    proj,
    geom: ConeGeometry,
    vol_geom: VolumeGeometry,
    n_iter: int,
    n_subsets: int,
    relax: float = 1.0,
    nonneg: bool = True,
    x0=None,
    tol: float | None = None,
    callback: Callback | None = None,
    projector_options: Mapping[str, Any] | None = None,
) -> IterativeResult:
    """OS-SART: SIRT updates over ordered subsets of views, one pass = one iteration.

    Subset ``j`` holds views ``j, j + n_subsets, ...`` (each subset spans the whole arc);
    each has its own projector ``VoxelProjector(vol_geom, geom[idx], **projector_options)``
    and its own ``R``, ``C`` weights (kept in memory: one projection stack plus
    ``n_subsets`` volumes). ``n_subsets = 1`` is SIRT, ``n_subsets = views`` is SART.
    """
    check_iterations("os_sart", n_iter, tol)
    _check_relax("os_sart", relax)
    if int(n_subsets) != n_subsets or not 1 <= n_subsets <= geom.n_views:
        raise InputError(f"os_sart: n_subsets must be an integer in [1, {geom.n_views}], got {n_subsets}")
    p = as_projections("os_sart", proj, geom.proj_shape)
    x = initial_volume("os_sart", x0, vol_geom.shape, p)
    mon = Monitor(p, callback)
    subsets = [np.arange(j, geom.n_views, int(n_subsets)) for j in range(int(n_subsets))]
    ops = [VoxelProjector(vol_geom, geom[idx], **dict(projector_options or {})) for idx in subsets]
    projs = [p[torch.as_tensor(idx, device=p.device)] for idx in subsets]
    return _sart(projs, ops, x, x0 is not None, n_iter, relax, nonneg, tol, mon)


def _sart(projs, ops, x, exact_start, n_iter, relax, nonneg, tol, mon: Monitor) -> IterativeResult:
    """Shared SIRT/OS-SART loop over (projection subset, projector) pairs."""
    ones_x = torch.ones_like(x)
    row = [safe_reciprocal(A(ones_x)) for A in ops]
    col = [safe_reciprocal(A.T(torch.ones_like(p))) * relax for A, p in zip(ops, projs)]
    del ones_x

    def exact_residual() -> float:
        return math.sqrt(sum(norm(p - A(x)) ** 2 for p, A in zip(projs, ops)))

    mon.record(exact_residual() if exact_start else math.sqrt(sum(norm(p) ** 2 for p in projs)))
    k, stopped = 0, False
    while k < n_iter and not stopped:
        sq = 0.0
        for p, A, R, C in zip(projs, ops, row, col):
            r = p - A(x)
            sq += norm(r) ** 2
            x.addcmul_(C, A.T(r.mul_(R)))
            if nonneg:
                x.clamp_(min=0)
        running = math.sqrt(sq) / mon.scale  # residual of the pass's start, subset by subset
        if k > 0:
            mon.residuals.append(running)
        k += 1
        stopped = mon.stop_requested(k, x) or (tol is not None and running < tol)
    mon.record(exact_residual())
    return mon.result(x, k, stopped)
