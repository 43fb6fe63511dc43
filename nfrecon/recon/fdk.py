"""FDK (Feldkamp-Davis-Kress) reconstruction for circular cone-beam scans, pure PyTorch.

Steps, per view ``i`` of a circular :class:`ConeGeometry` (any cone_vec vectors whose
sources lie on a circle about the z axis):

1. cosine pre-weighting ``sdd / |pixel - source|`` (flat detector, sdd the perpendicular
   source-to-detector distance; the principal point is the foot of that perpendicular);
2. redundancy weight: 1/2 for a full circle, Parker's weights for a short scan, times the
   view's angular integration weight (half the distance to its neighbours, so uneven
   angular steps are integrated correctly);
3. ramp filtering along detector rows (u) with the band-limited spatial ramp kernel,
   zero-padded to twice the row length, apodised, and scaled to the virtual detector
   through the rotation axis (pitch ``du * sod / sdd``, sod the source-to-axis distance);
4. voxel-driven backprojection: each voxel centre is projected onto the detector,
   the filtered view is read by bilinear interpolation (zero outside the detector) and
   weighted by ``(sod / U)^2``, U the source-to-voxel distance along the detector normal.
   ``backend`` 'torch' runs it with ``grid_sample``; 'cpp' / 'cuda' with the fused kernel of
   ``cuda/include/nfrecon/fdk.h`` (same arithmetic per voxel and view; the CPU kernel sums
   the views in double), 'auto' picks the kernel of the projections' device when it builds.

With these factors a uniform object reconstructs to its attenuation: the result is mu in
1/mm for projections of line integrals (dimensionless) and geometry in mm.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
import torch.nn.functional as F

from nfrecon.errors import InputError
from nfrecon.geometry.cone import ConeGeometry
from nfrecon.geometry.volume import VolumeGeometry
from nfrecon.ops.backend import require_kernels, resolve_backend
from nfrecon.ops.projector import PROJECTOR_BACKENDS
from nfrecon.recon.filters import check_filter, padded_length, ramp_filter_rows, ramp_response
from nfrecon.recon.weights import angular_sampling, cosine_weights, fan_angles, parker_weights


def fdk(
    proj,
    geom: ConeGeometry,
    vol_geom: VolumeGeometry,
    *,
    filter: str = "ram-lak",
    cutoff: float = 1.0,
    short_scan: bool | str = "auto",
    chunk_voxels: int = 2**22,
    backend: str = "auto",
) -> torch.Tensor:
    """FDK reconstruction of line integrals ``proj`` (views, rows, cols) -> mu (nz, ny, nx), 1/mm.

    geom: circular cone-beam geometry (sources on a circle about z); vol_geom: output grid.
    filter: apodisation, one of ram-lak, shepp-logan, cosine, hamming, hann; cutoff:
    window cutoff as a fraction of the Nyquist frequency (the response is zero above it).
    short_scan: "auto" (Parker weights when the views do not close the circle, i.e. some
    gap between neighbouring views exceeds twice the mean step 360 deg / views), True
    (always Parker over the covered arc) or False (uniform 1/2 redundancy weights).
    A short scan covering less than 180 degrees plus the fan angle warns
    (``UserWarning``) and goes on: rays near the detector edges then lack their
    conjugates and the image shows short-scan artefacts.

    Runs on ``proj``'s device in float32 (float64 if ``proj`` is float64); a numpy
    array is read as a CPU tensor. Memory: besides the input, one filtered copy of the
    projections and the output volume, the working set is at most ``chunk_voxels``
    (voxel, view) samples at under 64 bytes each (the default 2**22 bounds it to about
    270 MB; at least one volume slice times one view); filtering goes by blocks of views
    of the same size. backend: auto, torch, cpp or cuda, for the backprojection (module doc);
    the kernels need no working set beyond the output.

    Raises InputError for a non-circular geometry, projections whose shape does not
    match the geometry or that hold NaN/Inf, an unknown filter, a cutoff outside (0, 1],
    or a volume that reaches behind a source, an unknown backend or one that cannot run here.
    """
    proj = _check_inputs(proj, geom, vol_geom, filter, cutoff, short_scan, chunk_voxels)
    if backend not in PROJECTOR_BACKENDS:
        raise InputError(f"--backend: FDK runs on one of {', '.join(PROJECTOR_BACKENDS)}, got {backend!r}")
    name = resolve_backend(backend, proj.device)
    mats = _projection_matrices(geom, vol_geom)
    _check_in_front(mats, vol_geom)
    filtered = _weight_and_filter(proj, geom, filter, cutoff, short_scan, int(chunk_voxels))
    if name in ("cpp", "cuda"):
        require_kernels(name)
        return _backproject_kernel(filtered, mats, geom, vol_geom)
    return _backproject(filtered, mats, vol_geom, int(chunk_voxels))


def _check_inputs(proj, geom, vol_geom, filter, cutoff, short_scan, chunk_voxels) -> torch.Tensor:
    if not isinstance(geom, ConeGeometry):
        raise InputError(f"geometry: FDK needs a ConeGeometry, got {type(geom).__name__}")
    if not isinstance(vol_geom, VolumeGeometry):
        raise InputError(f"volume geometry: FDK needs a VolumeGeometry, got {type(vol_geom).__name__}")
    if not geom.is_circular():
        raise InputError("geometry: FDK needs a circular trajectory (sources on one circle about the z axis)")
    proj = torch.as_tensor(proj)
    if tuple(proj.shape) != geom.proj_shape:
        raise InputError(f"projections: shape {tuple(proj.shape)} does not match the geometry's {geom.proj_shape}")
    if proj.dtype != torch.float64:
        proj = proj.to(torch.float32)
    if not bool(torch.isfinite(proj).all()):
        raise InputError("projections: contain NaN or Inf")
    check_filter(filter, cutoff)
    if short_scan not in ("auto", True, False):
        raise InputError(f"short_scan: must be 'auto', True or False, got {short_scan!r}")
    if int(chunk_voxels) < 1:
        raise InputError(f"chunk_voxels: must be >= 1, got {chunk_voxels}")
    return proj


def _redundancy(geom: ConeGeometry, short_scan) -> np.ndarray:
    """Angular integration weight times redundancy weight per view and column (views, cols)."""
    sampling = angular_sampling(geom.circular_angles())
    parker = short_scan is True or (short_scan == "auto" and not sampling.closed)
    if not parker:
        step = sampling.circle_step if sampling.closed else sampling.arc_step
        return np.broadcast_to(0.5 * step[:, None], (geom.n_views, geom.det_shape[1]))
    gamma = fan_angles(geom)
    need = np.pi + 2 * np.abs(gamma).max()
    if sampling.coverage < need - 1e-9:
        warnings.warn(
            f"FDK short scan: the views cover {np.rad2deg(sampling.coverage):.1f} deg, less than 180 deg plus "
            f"the fan angle ({np.rad2deg(need):.1f} deg); expect short-scan artefacts",
            UserWarning,
            stacklevel=4,
        )
    return sampling.arc_step[:, None] * parker_weights(sampling.beta, gamma, sampling.coverage)


def _weight_and_filter(proj: torch.Tensor, geom: ConeGeometry, name: str, cutoff: float, short_scan, chunk: int):
    """Pre-weighted, ramp-filtered projections (views, rows, cols), in 1/mm times sod^2 (mm^2),
    so that the backprojection only divides by U^2."""
    n_views, nv, nu = proj.shape
    n_fft = padded_length(nu)
    response = ramp_response(n_fft, name, cutoff, proj.dtype, proj.device)
    sod = np.hypot(geom.src[:, 1], geom.src[:, 2])
    pitch = np.linalg.norm(geom.u, axis=1) * sod / geom.sdd  # virtual detector pitch at the axis (mm)
    view_weight = _redundancy(geom, short_scan) * (sod**2 / pitch)[:, None]
    view_weight = torch.as_tensor(view_weight, dtype=proj.dtype, device=proj.device)
    out = torch.empty_like(proj)
    block = max(1, chunk // (nv * n_fft))
    for start in range(0, n_views, block):
        views = slice(start, start + block)
        rows = proj[views] * cosine_weights(geom, views, proj.device, proj.dtype) * view_weight[views, None, :]
        out[views] = ramp_filter_rows(rows, response)
    return out


def _projection_matrices(geom: ConeGeometry, vol_geom: VolumeGeometry) -> np.ndarray:
    """Per view, the 3x4 matrix mapping a voxel's offset from the volume centre (z, y, x, 1)
    to (gx * U, gy * U, U): the detector hit in ``grid_sample`` coordinates
    (align_corners=False; x along columns, y along rows) and U, the distance from the
    source along the detector normal. Shape (views, 3, 4), float64."""
    nv, nu = geom.det_shape
    dual = np.linalg.pinv(np.stack([geom.u, geom.v], axis=2))  # (views, 2, 3): pixel coordinates of in-plane vectors
    normal, sdd = geom.normal, geom.sdd
    # hit p of voxel x: p - det = (src - det) + sdd (x - src) / U, so index * U = pix0 U + sdd dual (x - src)
    pix0 = np.einsum("vij,vj->vi", dual, geom.src - geom.det) + np.array([(nu - 1) / 2, (nv - 1) / 2])
    mat = np.zeros((geom.n_views, 3, 4))
    mat[:, :2, :3] = sdd[:, None, None] * dual + pix0[:, :, None] * normal[:, None, :]
    mat[:, 2, :3] = normal
    # pixel index c -> grid coordinate (2 c + 1) / n - 1
    n = np.array([nu, nv], dtype=np.float64)
    mat[:, :2, :3] = (2 / n)[None, :, None] * mat[:, :2, :3] + (1 / n - 1)[None, :, None] * normal[:, None, :]
    mat[:, :, 3] = -np.einsum("vij,vj->vi", mat[:, :, :3], geom.src - np.asarray(vol_geom.center))
    return mat


def _check_in_front(mats: np.ndarray, vol_geom: VolumeGeometry) -> None:
    """InputError if some voxel lies at or behind a source (U <= 0 at a box corner)."""
    half = vol_geom.size / 2
    corners = np.array([[sz, sy, sx] for sz in (-1, 1) for sy in (-1, 1) for sx in (-1, 1)]) * half
    depth = np.einsum("vj,cj->vc", mats[:, 2, :3], corners) + mats[:, 2, 3:]
    if np.any(depth <= 0):
        raise InputError("volume geometry: the volume reaches behind the X-ray source of some view")


def _backproject(
    filtered: torch.Tensor, mats: np.ndarray, vol_geom: VolumeGeometry, chunk: int
) -> torch.Tensor:
    """Voxel-driven backprojection of filtered views (already times sod^2), weighted by
    1 / U^2 -> (nz, ny, nx).

    ``mats``: :func:`_projection_matrices`. Voxels go by z-slabs and views by blocks, at
    most ``chunk`` (voxel, view) pairs at a time (at least one slice by one view).
    """
    device, dtype = filtered.device, filtered.dtype
    n_views = filtered.shape[0]
    mats = torch.as_tensor(mats, dtype=dtype, device=device)
    images = filtered[:, None]  # (views, 1, rows, cols)
    nz, ny, nx = vol_geom.shape
    z, y, x = (
        torch.as_tensor(vol_geom.axis_coords(a) - vol_geom.center[a], dtype=dtype, device=device) for a in range(3)
    )
    slab = max(1, min(nz, chunk // (ny * nx)))
    block = max(1, min(n_views, chunk // (slab * ny * nx)))
    out = torch.empty(vol_geom.shape, dtype=dtype, device=device)
    for z0 in range(0, nz, slab):
        zs = z[z0 : z0 + slab]
        acc = torch.zeros((len(zs), ny, nx), dtype=dtype, device=device)
        for v0 in range(0, n_views, block):
            m = mats[v0 : v0 + block]
            b = m.shape[0]
            h = [
                (m[:, k, 0:1] * zs + m[:, k, 3:4])[:, :, None, None]
                + (m[:, k, 1:2] * y)[:, None, :, None]
                + (m[:, k, 2:3] * x)[:, None, None, :]
                for k in range(3)
            ]
            inv = h[2].reciprocal_()
            grid = torch.stack((h[0].mul_(inv), h[1].mul_(inv)), dim=-1).view(b, 1, -1, 2)
            vals = F.grid_sample(
                images[v0 : v0 + block], grid, mode="bilinear", padding_mode="zeros", align_corners=False
            )
            acc += (vals.view(b, len(zs), ny, nx) * inv.square_()).sum(0)
        out[z0 : z0 + len(zs)] = acc
    return out


def _backproject_kernel(filtered: torch.Tensor, mats: np.ndarray, geom: ConeGeometry, vol_geom: VolumeGeometry):
    """:func:`_backproject` by the fused kernel (``torch.ops.nfrecon.fdk_backproject``).

    The kernel reads pixel-index coordinates: ``col = gx * nu / 2 + (nu - 1) / 2`` (the
    inverse of grid_sample's align_corners=False mapping), so its matrices are ``mats`` with
    rows 0 and 1 mapped that way (float64, then the projections' dtype).
    """
    device, dtype = filtered.device, filtered.dtype
    nv, nu = geom.det_shape
    pix = mats.copy()
    pix[:, 0] = nu / 2 * mats[:, 0] + (nu - 1) / 2 * mats[:, 2]
    pix[:, 1] = nv / 2 * mats[:, 1] + (nv - 1) / 2 * mats[:, 2]
    m = torch.as_tensor(pix.reshape(len(pix), 12), dtype=dtype, device=device).contiguous()
    z, y, x = (
        torch.as_tensor(vol_geom.axis_coords(a) - vol_geom.center[a], dtype=dtype, device=device).contiguous()
        for a in range(3)
    )
    return torch.ops.nfrecon.fdk_backproject(filtered.contiguous(), m, z, y, x)
