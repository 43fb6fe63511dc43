"""Resampling a volume [z, y, x] between two grids in world coordinates (trilinear, anti-aliased)."""

from __future__ import annotations

import numpy as np
import torch

from nfrecon.errors import InputError
from nfrecon.geometry.volume import VolumeGeometry


def _hat_integral(t: np.ndarray) -> np.ndarray:
    """Antiderivative of the hat function max(0, 1 - |t|), zero at t = -1."""
    t = np.clip(t, -1.0, 1.0)
    return np.where(t <= 0, 0.5 * (t + 1) ** 2, 1.0 - 0.5 * (1 - t) ** 2)


def _axis_weights(src_c: np.ndarray, src_h: float, dst_c: np.ndarray, dst_h: float) -> np.ndarray:
    """Dense (n_dst, n_src) weights of one axis; row sums are the fraction inside the source box.

    The source signal is the linear interpolant of the samples at ``src_c``, constant from
    the outermost centres to the box faces (as the projector reads it). A destination
    voxel larger than a source voxel averages that signal over its extent (box filter);
    otherwise it samples it at its centre.
    """
    n = len(src_c)
    s = (dst_c - src_c[0]) / src_h  # destination centres in source index units
    i = np.arange(n)[None, :]
    if dst_h <= src_h * (1 + 1e-9):
        inside = (s >= -0.5 - 1e-9) & (s <= n - 0.5 + 1e-9)
        sc = np.clip(s, 0, n - 1)[:, None]
        return np.clip(1.0 - np.abs(sc - i), 0.0, None) * inside[:, None]
    half = 0.5 * dst_h / src_h
    a, b = np.clip(s - half, -0.5, n - 0.5), np.clip(s + half, -0.5, n - 0.5)
    ai, bi = np.clip(a, 0, n - 1)[:, None], np.clip(b, 0, n - 1)[:, None]
    w = _hat_integral(bi - i) - _hat_integral(ai - i)
    w[:, 0] += np.clip(np.minimum(b, 0.0) - a, 0.0, None)  # border pieces: constant values
    w[:, -1] += np.clip(b - np.maximum(a, n - 1.0), 0.0, None)
    return w / (2 * half)


def _apply_axis(vol: torch.Tensor, weights: np.ndarray, axis: int) -> torch.Tensor:
    """Contract ``vol`` along ``axis`` with the (n_dst, n_src) ``weights`` (a dense matmul)."""
    w = torch.as_tensor(weights, dtype=vol.dtype, device=vol.device)
    return torch.tensordot(w, vol, dims=([1], [axis])).movedim(0, axis)


def resample(volume, src_geom: VolumeGeometry, dst_geom: VolumeGeometry, fill: float = 0.0):
    """Resample ``volume`` [z, y, x] from ``src_geom`` onto ``dst_geom`` in world coordinates.

    Trilinear interpolation (separable, exact), with anti-aliasing along every axis where
    the destination voxel is larger than the source voxel: the value is then the mean of
    the interpolated signal over the destination voxel (a box filter of the destination
    width), so block averages are exact and the mean of a volume is preserved.
    Destination points outside the source box get ``fill`` (e.g. 0 for air in mu, -1000 in
    HU), partly covered voxels a proportional mix. numpy in -> float32 numpy out; a torch
    tensor stays on its device and dtype.
    """
    is_tensor = isinstance(volume, torch.Tensor)
    vol = volume if is_tensor else torch.from_numpy(np.ascontiguousarray(volume, dtype=np.float32))
    if tuple(vol.shape) != src_geom.shape:
        raise InputError(f"resample: volume has shape {tuple(vol.shape)}, source geometry expects {src_geom.shape}")
    if not vol.is_floating_point():
        vol = vol.float()
    weights = [
        _axis_weights(src_geom.axis_coords(a), src_geom.voxel_size[a], dst_geom.axis_coords(a), dst_geom.voxel_size[a])
        for a in range(3)
    ]
    # contract the axis that shrinks the data most first
    for a in sorted(range(3), key=lambda a: weights[a].shape[0] / weights[a].shape[1]):
        vol = _apply_axis(vol, weights[a], a)
    if fill != 0.0:
        fz, fy, fx = (torch.as_tensor(w.sum(1), dtype=vol.dtype, device=vol.device) for w in weights)
        vol = vol + fill * (1.0 - fz[:, None, None] * fy[None, :, None] * fx[None, None, :])
    return vol if is_tensor else vol.numpy()
