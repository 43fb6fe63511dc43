"""Image-quality metrics of a reconstruction ``x`` against a ground truth ``gt``.

Inputs are numpy arrays or torch tensors of equal shape (volumes indexed [z, y, x]); all
arithmetic is float64, on the device of the torch input when there is one (the ground
truth's first). ``data_range`` R defaults to max(gt), as CondCBNT does; it is in the units
of the volume (e.g. 1/mm for mu) and must be > 0.

Definitions (``DEFINITIONS`` holds the same words for reports):
- PSNR = 10 log10(R^2 / MSE) dB; identical inputs give +inf.
- SSIM 3D: Wang et al.'s SSIM with a uniform 7^3 window, K1 = 0.01, K2 = 0.03,
  C1 = (K1 R)^2, C2 = (K2 R)^2, sample (co)variances (normalised by N - 1), averaged
  over the voxels whose window lies inside the volume; this equals
  ``skimage.metrics.structural_similarity(gt, x, win_size=7, data_range=R)`` on 3D input.
- SSIM 2D, three axes (R2-Gaussian's definition): the same SSIM with a 7x7 window on every
  slice perpendicular to z, to y and to x; slices whose ground truth has max <= 0 are
  skipped; the mean per axis, then the mean of the three axes.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch

from nfrecon.errors import InputError

K1, K2 = 0.01, 0.03

DEFINITIONS = {
    "psnr_db": "10*log10(R^2/MSE) in dB, R = data_range",
    "ssim_3d": "SSIM, uniform 7^3 window, K1=0.01, K2=0.03, C=(K*R)^2, sample covariance (N-1), "
    "mean over voxels whose window is inside the volume (= skimage structural_similarity, win_size=7)",
    "ssim_2d_mean_3axes": "2D SSIM (uniform 7x7 window, same constants) per slice along z, y and x, "
    "slices with max(gt) <= 0 skipped, mean per axis, then mean of the 3 axes (R2-Gaussian)",
    "ssim_2d_axes": "the per-axis means of ssim_2d_mean_3axes, keyed by the axis normal to the slices",
    "mae": "mean |x - gt|, units of the volume",
    "rmse": "sqrt(mean (x - gt)^2), units of the volume",
    "data_range": "R: max(gt) unless given, units of the volume",
}


class SliceSSIM(NamedTuple):
    """Slice-wise SSIM: ``mean`` of the three axis means; ``z``, ``y``, ``x`` are the means
    over the slices perpendicular to that axis (z: axial, y: coronal, x: sagittal)."""

    mean: float
    z: float
    y: float
    x: float


def _device_of(*arrays) -> torch.device:
    for a in arrays:
        if isinstance(a, torch.Tensor):
            return a.device
    return torch.device("cpu")


def _as_float64(a, name: str, device: torch.device) -> torch.Tensor:
    if isinstance(a, torch.Tensor):
        t = a.detach().to(device=device, dtype=torch.float64)
    else:
        arr = np.asarray(a)
        if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
            raise InputError(f"metrics: {name} must be numeric, got dtype {arr.dtype}")
        t = torch.from_numpy(arr.astype(np.float64)).to(device)
    if not bool(torch.isfinite(t).all()):
        raise InputError(f"metrics: {name} contains NaN or Inf")
    return t


def _pair(x, gt, ndim: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Validated float64 tensors (x, gt) on one device."""
    device = _device_of(gt, x)
    xt, gtt = _as_float64(x, "x", device), _as_float64(gt, "gt", device)
    if xt.shape != gtt.shape:
        raise InputError(f"metrics: x and gt shapes differ: {tuple(xt.shape)} vs {tuple(gtt.shape)}")
    if ndim is not None and gtt.ndim != ndim:
        raise InputError(f"metrics: expected a {ndim}D volume [z, y, x], got shape {tuple(gtt.shape)}")
    if gtt.numel() == 0:
        raise InputError("metrics: x and gt are empty")
    return xt, gtt


def _range(gt: torch.Tensor, data_range) -> float:
    r = float(gt.max()) if data_range is None else data_range
    try:
        r = float(r)
    except (TypeError, ValueError):
        raise InputError(f"metrics: data_range must be a number, got {data_range!r}") from None
    if not (math.isfinite(r) and r > 0):
        what = "max(gt)" if data_range is None else "data_range"
        raise InputError(f"metrics: data_range must be finite and > 0, got {what} = {r:g}; pass data_range")
    return r


def _box_mean(t: torch.Tensor, dims: tuple[int, ...], window: int) -> torch.Tensor:
    """Mean over a ``window``-wide box along ``dims``, kept only where the box is inside."""
    for d in dims:
        t = t.unfold(d, window, 1).sum(-1)
    return t / window ** len(dims)


def _ssim_map(x: torch.Tensor, gt: torch.Tensor, r: float, dims: tuple[int, ...], window: int) -> torch.Tensor:
    """Local SSIM on the valid region (cropped by window // 2 along ``dims``)."""
    if not isinstance(window, (int, np.integer)) or window < 3 or window % 2 == 0:
        raise InputError(f"metrics: window must be an odd integer >= 3, got {window}")
    for d in dims:
        if gt.shape[d] < window:
            raise InputError(f"metrics: volume shape {tuple(gt.shape)} is smaller than the {window}-voxel SSIM window")
    cov_norm = window ** len(dims) / (window ** len(dims) - 1)
    c1, c2 = (K1 * r) ** 2, (K2 * r) ** 2
    ux, uy = _box_mean(x, dims, window), _box_mean(gt, dims, window)
    # In place from here on (volumes are large): a1 a2 / (b1 b2) with
    # a1 = 2 ux uy + C1, a2 = 2 vxy + C2, b1 = ux^2 + uy^2 + C1, b2 = vx + vy + C2.
    uxuy = ux * uy
    a2 = _box_mean(x * gt, dims, window).sub_(uxuy).mul_(2 * cov_norm).add_(c2)
    b1 = ux.square_().add_(uy.square_())  # ux^2 + uy^2 (ux, uy are overwritten)
    b2 = _box_mean(x * x, dims, window).add_(_box_mean(gt * gt, dims, window)).sub_(b1).mul_(cov_norm).add_(c2)
    a1 = uxuy.mul_(2).add_(c1)
    return a1.mul_(a2).div_(b1.add_(c1).mul_(b2))


def _psnr(x: torch.Tensor, gt: torch.Tensor, r: float) -> float:
    mse = float(torch.mean((x - gt) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(r * r / mse)


def _slices(x: torch.Tensor, gt: torch.Tensor, r: float, window: int) -> SliceSSIM:
    per_axis = []
    for axis in range(3):
        dims = tuple(d for d in range(3) if d != axis)
        per_slice = _ssim_map(x, gt, r, dims, window).mean(dim=dims)
        keep = gt.amax(dim=dims) > 0
        per_axis.append(float(per_slice[keep].mean()) if bool(keep.any()) else math.nan)
    return SliceSSIM(float(np.mean(per_axis)), *per_axis)


def psnr(x, gt, data_range=None) -> float:
    """PSNR in dB: 10 log10(R^2 / MSE), R = ``data_range`` or max(gt); +inf when x == gt."""
    xt, gtt = _pair(x, gt)
    return _psnr(xt, gtt, _range(gtt, data_range))


def ssim3d(x, gt, data_range=None, window: int = 7) -> float:
    """Mean 3D SSIM of [z, y, x] volumes with a uniform ``window``^3 box (see module doc)."""
    xt, gtt = _pair(x, gt, ndim=3)
    return float(_ssim_map(xt, gtt, _range(gtt, data_range), (0, 1, 2), window).mean())


def ssim_slices(x, gt, data_range=None, window: int = 7) -> SliceSSIM:
    """2D SSIM of every slice along z, y and x (R2-Gaussian's definition, see module doc).

    An axis on which every ground-truth slice has max <= 0 gets NaN.
    """
    xt, gtt = _pair(x, gt, ndim=3)
    return _slices(xt, gtt, _range(gtt, data_range), window)


def evaluate(x, gt, data_range=None) -> dict:
    """All metrics of ``x`` against ``gt`` with the data range used and their definitions.

    Keys: psnr_db, ssim_3d, ssim_2d_mean_3axes, ssim_2d_axes {z, y, x}, mae, rmse (units of
    the volume), data_range, data_range_source ("max(gt)" or "given"), definitions.
    """
    xt, gtt = _pair(x, gt, ndim=3)
    r = _range(gtt, data_range)
    diff = xt - gtt
    slices = _slices(xt, gtt, r, 7)
    return {
        "psnr_db": _psnr(xt, gtt, r),
        "ssim_3d": float(_ssim_map(xt, gtt, r, (0, 1, 2), 7).mean()),
        "ssim_2d_mean_3axes": slices.mean,
        "ssim_2d_axes": {"z": slices.z, "y": slices.y, "x": slices.x},
        "mae": float(diff.abs().mean()),
        "rmse": math.sqrt(float((diff * diff).mean())),
        "data_range": r,
        "data_range_source": "max(gt)" if data_range is None else "given",
        "definitions": dict(DEFINITIONS),
    }
