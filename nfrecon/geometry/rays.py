"""Detector rays, ray/box intersection and sampling along rays (torch, any device).

A ray runs from the source through the centre of one detector pixel. Rays are addressed
by a flat index ``view * rows * cols + row * cols + col`` into a ``[view, v, u]`` stack.
Directions are unit vectors, so the ray parameter ``t`` is a distance in mm from the
source. Everything is (z, y, x) order.
"""

from __future__ import annotations

import numpy as np
import torch

from nfrecon.geometry.cone import ConeGeometry


def geometry_tensors(geom: ConeGeometry, device=None, dtype=torch.float64) -> dict[str, torch.Tensor]:
    """The per-view vectors of ``geom`` as (views, 3) tensors (keys src, det, u, v)."""
    return {k: torch.tensor(getattr(geom, k), dtype=dtype, device=device) for k in ("src", "det", "u", "v")}


def pixel_rays(
    geom: ConeGeometry,
    flat_index: torch.Tensor,
    tensors: dict[str, torch.Tensor] | None = None,
    dtype=torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Origins (R, 3) and unit directions (R, 3) of the rays with the given flat indices.

    Computed in float64 and returned as ``dtype`` on ``flat_index``'s device.
    ``tensors`` may hold :func:`geometry_tensors` to avoid re-uploading per call.
    """
    device = flat_index.device
    t = tensors if tensors is not None else geometry_tensors(geom, device)
    nv, nu = geom.det_shape
    flat = flat_index.long()
    view = torch.div(flat, nv * nu, rounding_mode="floor")
    rem = flat - view * (nv * nu)
    row = torch.div(rem, nu, rounding_mode="floor")
    col = rem - row * nu
    cu = (col.to(torch.float64) - (nu - 1) / 2)[:, None]
    cv = (row.to(torch.float64) - (nv - 1) / 2)[:, None]
    src = t["src"][view]
    pix = t["det"][view] + cu * t["u"][view] + cv * t["v"][view]
    d = pix - src
    d = d / torch.linalg.norm(d, dim=1, keepdim=True)
    return src.to(dtype), d.to(dtype)


def ray_box(
    origins: torch.Tensor, dirs: torch.Tensor, box_min, box_max
) -> tuple[torch.Tensor, torch.Tensor]:
    """Slab-method intersection of rays with an axis-aligned box.

    Returns ``t_near, t_far`` (R,) in units of the ray parameter (mm for unit directions),
    with ``t_near >= 0`` (the part behind the origin is cut). A ray that misses the box
    (or only grazes it) gets ``t_near = t_far = 0``, so its length is 0 and its samples are
    finite. Axis-parallel rays are handled (no NaN or Inf).
    """
    lo = torch.as_tensor(np.asarray(box_min, dtype=np.float64), dtype=origins.dtype, device=origins.device)
    hi = torch.as_tensor(np.asarray(box_max, dtype=np.float64), dtype=origins.dtype, device=origins.device)
    tiny = torch.finfo(dirs.dtype).tiny
    safe = torch.where(dirs.abs() < tiny, torch.full_like(dirs, tiny), dirs)
    inv = 1.0 / safe
    t0 = (lo - origins) * inv
    t1 = (hi - origins) * inv
    t_near = torch.minimum(t0, t1).amax(dim=1).clamp(min=0.0)
    t_far = torch.maximum(t0, t1).amin(dim=1)
    hit = t_far > t_near
    return torch.where(hit, t_near, 0.0), torch.where(hit, t_far, 0.0)


def stratified_offsets(
    n_rays: int,
    n_samples: int,
    jitter: bool = True,
    generator: torch.Generator | None = None,
    device=None,
    dtype=torch.float32,
) -> torch.Tensor:
    """Position of each sample within its bin, in [0, 1): uniform draws (n_rays, N) when
    jittered, else the midpoints 0.5 as a (1, N) row. The one place ray jitter is drawn."""
    if jitter:
        return torch.rand(n_rays, n_samples, device=device, dtype=dtype, generator=generator)
    return torch.full((1, n_samples), 0.5, device=device, dtype=dtype)


def stratified_samples(
    t_near: torch.Tensor,
    t_far: torch.Tensor,
    n_samples: int,
    jitter: bool = True,
    generator: torch.Generator | None = None,
    offsets: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n_samples`` positions per ray between entry and exit, one per equal bin.

    Returns ``t`` (R, N) and the bin length ``dt`` (R, 1) in mm (0 for rays that miss).
    With ``jitter`` each sample is uniform within its bin (an unbiased estimate of the
    line integral ``sum(mu(t) * dt)``); without, samples sit at the bin midpoints.
    ``offsets`` (from :func:`stratified_offsets`) replaces the draw.
    """
    length = (t_far - t_near).clamp(min=0.0)[:, None]
    dt = length / n_samples
    k = torch.arange(n_samples, device=t_near.device, dtype=t_near.dtype)[None]
    if offsets is None:
        offsets = stratified_offsets(t_near.shape[0], n_samples, jitter, generator, t_near.device, t_near.dtype)
    return t_near[:, None] + (k + offsets) * dt, dt


def packed_step_samples(
    t_near: torch.Tensor, t_far: torch.Tensor, step: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Midpoint samples with spacing at most ``step`` mm, packed ray after ray.

    Ray ``r`` gets ``n_r = ceil(length_r / step)`` equal bins (none when it misses the box).
    Returns ``ray`` (S,), the ray of each sample in ascending order, ``t`` (S,) its
    parameter (mm along a unit direction) and the bin length ``dt`` (R,) of every ray, with
    S = sum n_r. A ray's samples do not depend on the other rays in the batch.
    """
    length = (t_far - t_near).clamp(min=0.0)
    count = torch.ceil(length / step).long()
    dt = length / count.clamp(min=1)
    ray = torch.repeat_interleave(torch.arange(len(count), device=t_near.device), count)
    first = torch.cumsum(count, 0) - count
    k = (torch.arange(len(ray), device=t_near.device) - first[ray]).to(t_near.dtype)
    return ray, t_near[ray] + (k + 0.5) * dt[ray], dt
