"""TIGRE geometries and NAF / R2-Gaussian datasets <-> nfrecon.

Conventions, with their sources (CERN/TIGRE and Ruyi-Zha/naf_cbct, r2_gaussian on GitHub):

- Axis orders (TIGRE Python, ``utilities/cuda_interface/_types.pxd``): ``nVoxel``,
  ``dVoxel``, ``sVoxel``, ``offOrigin`` are (z, y, x); ``nDetector``, ``dDetector``,
  ``sDetector``, ``offDetector`` are (v, u) = (rows, cols). Volumes are numpy arrays
  ``[z, y, x]`` (x contiguous) and ``tigre.Ax`` returns projections ``[angle, v, u]``.
- Projection geometry (``Common/CUDA/Siddon_projection.cu``, ``computeDeltas_Siddon``): in
  TIGRE's world (X, Y, Z), at angle ``a`` (a rotation about Z, ``eulerZYZ`` with the
  other two Euler angles 0) the source is at ``DSO (cos a, sin a, 0)``, the detector centre
  at ``-(DSD - DSO) (cos a, sin a, 0) + offU (-sin a, cos a, 0) + offV (0, 0, 1)``, a
  column step is ``dU (-sin a, cos a, 0)`` and, because the kernel reads detector row
  ``nV - 1 - v`` from a frame whose row vector points down, output row ``v`` steps by
  ``+dV`` along Z. The volume centre is at ``offOrigin`` and voxel indices grow with X, Y, Z.
  So TIGRE's (Z, Y, X) is nfrecon's (z, y, x) unchanged, raw TIGRE projections are already
  in our ``[view, v, u]`` layout, and TIGRE angle ``a`` is our (ASTRA) angle ``a + 90 deg``.
- NAF / R2-Gaussian files (``layout="naf"``): their configs list ``nVoxel``, ``dVoxel``,
  ``sVoxel``, ``offOrigin`` as (x, y, z) and ``offDetector`` as (u, v) (NAF
  ``dataGenerator/generateData.py`` reverses them before calling TIGRE; r2_gaussian
  ``ct_utils.get_geometry`` does the same), ``nDetector``/``dDetector``/``sDetector`` as
  (v, u); the stored ``image`` is ``[x, y, z]`` (passed to ``tigre.Ax`` as
  ``transpose(2, 1, 0)``) and the stored ``projections`` are ``tigre.Ax(...)[:, ::-1, :]``
  (rows flipped). NAF's own ray generator (``src/dataset/tigre.py``, ``angle2pose``/
  ``get_rays``) agrees: the source at ``DSO (cos a, sin a, 0)``, stored rows running
  towards -Z, except that it applies ``offDetector``'s v part along the stored rows
  (-Z), against TIGRE's +Z; we follow TIGRE, which generated the data (the published
  NAF / R2-Gaussian scans have zero offsets). NAF's loader also reads ``nDetector`` as
  (W, H), so only its square detectors are unambiguous. NAF pickles store lengths in mm
  (its loader converts to metres itself).
  Angles (``data["train"]["angles"]``) are in radians.

Lengths are taken as given (mm for NAF pickles); per-view ``DSO``, ``DSD`` and
``offDetector`` are supported; detector rotations, centre-of-rotation shifts and per-view
volume offsets are not.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from nfrecon.errors import InputError
from nfrecon.geometry.cone import ConeGeometry
from nfrecon.geometry.volume import VolumeGeometry

_LAYOUTS = ("naf", "tigre")


def _check_layout(layout: str) -> None:
    if layout not in _LAYOUTS:
        raise InputError(f"TIGRE layout must be one of {_LAYOUTS}, got {layout!r}")


def _field(cfg, key: str, default=None):
    value = cfg.get(key, default) if isinstance(cfg, Mapping) else getattr(cfg, key, default)
    if value is None:
        raise InputError(f"TIGRE config: missing {key}")
    return value


def _per_view(cfg, key: str, n_views: int, width: int, default=None) -> np.ndarray:
    """Field ``key`` (one value or one per view) as float64, shape (n_views, width).

    Trailing zero entries beyond ``width`` are dropped (TIGRE pads offDetector to 3).
    """
    raw = _field(cfg, key, default)
    arr = np.asarray(raw, dtype=np.float64)
    if arr.ndim >= 1 and arr.shape[-1] > width and width > 1 and np.all(arr[..., width:] == 0):
        arr = arr[..., :width]
    if width == 1 and arr.ndim <= 1 and arr.size in (1, n_views):
        return np.broadcast_to(arr.reshape(-1, 1), (n_views, 1))
    if arr.shape in ((width,), (n_views, width)):
        return np.broadcast_to(arr, (n_views, width))
    raise InputError(f"TIGRE config: {key} has shape {arr.shape}, expected ({width},) or one per view")


def _counts_sizes(cfg, n_key: str, d_key: str, s_key: str, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Counts and element sizes (from ``s_key`` / counts when ``d_key`` is absent)."""
    n = np.asarray(_field(cfg, n_key), dtype=np.float64).reshape(-1)
    if n.size != width or np.any(n < 1) or np.any(n != np.round(n)):
        raise InputError(f"TIGRE config: {n_key} must be {width} positive integers, got {n.tolist()}")
    has_d = (d_key in cfg) if isinstance(cfg, Mapping) else hasattr(cfg, d_key)
    if has_d:
        d = np.asarray(_field(cfg, d_key), dtype=np.float64)
    else:
        d = np.asarray(_field(cfg, s_key), dtype=np.float64) / n
    if d.size != width:
        raise InputError(f"TIGRE config: {d_key} must have {width} entries, got {d.tolist()}")
    return n.astype(int), d.reshape(-1)


def from_tigre(cfg, angles, *, layout: str = "naf") -> tuple[ConeGeometry, VolumeGeometry]:
    """Cone and volume geometry of a TIGRE scan.

    cfg: a mapping or object with DSD, DSO, nDetector, dDetector (or sDetector), nVoxel,
    dVoxel (or sVoxel), offOrigin, offDetector (optional: mode, rotDetector, COR); angles:
    TIGRE gantry angles in radians, shape (views,). ``layout`` gives the axis order of
    cfg: ``"naf"`` (NAF / R2-Gaussian configs and pickles) or ``"tigre"`` (attributes of a
    ``tigre.geometry``); see the module docstring. The result applies to projections and
    volumes converted with :func:`tigre_projections_to_vu` / :func:`tigre_volume_to_zyx`.
    """
    _check_layout(layout)
    a = np.asarray(angles, dtype=np.float64)
    if a.ndim == 2 and a.shape[1] == 3 and np.allclose(a[:, 1:], 0):
        a = a[:, 0]
    if a.ndim != 1 or a.size == 0 or not np.all(np.isfinite(a)):
        raise InputError(f"TIGRE angles: expected a finite 1-D array of radians, got shape {a.shape}")
    mode = _field(cfg, "mode", "cone")
    if mode != "cone":
        raise InputError(f"TIGRE config: mode must be 'cone', got {mode!r}")
    n = a.size
    for key in ("rotDetector", "COR"):
        if np.any(np.asarray(_field(cfg, key, 0.0), dtype=np.float64) != 0):
            raise InputError(f"TIGRE config: non-zero {key} is not supported")

    flip = slice(None, None, -1) if layout == "naf" else slice(None)
    (nv, nu), (dv, du) = _counts_sizes(cfg, "nDetector", "dDetector", "sDetector", 2)
    n_vox, d_vox = _counts_sizes(cfg, "nVoxel", "dVoxel", "sVoxel", 3)
    offset = _per_view(cfg, "offOrigin", n, 3, (0.0, 0.0, 0.0))
    if not np.allclose(offset, offset[0]):
        raise InputError("TIGRE config: per-view offOrigin is not supported")
    vol = VolumeGeometry(tuple(n_vox[flip]), tuple(d_vox[flip]), tuple(offset[0][flip]))

    dso = _per_view(cfg, "DSO", n, 1)[:, 0]
    dsd = _per_view(cfg, "DSD", n, 1)[:, 0]
    off_det = _per_view(cfg, "offDetector", n, 2, (0.0, 0.0))
    off_v, off_u = (off_det[:, 1], off_det[:, 0]) if layout == "naf" else (off_det[:, 0], off_det[:, 1])
    if np.any(dso <= 0) or np.any(dsd <= dso):
        raise InputError("TIGRE config: need 0 < DSO < DSD")

    c, s, zero = np.cos(a), np.sin(a), np.zeros(n)
    # (z, y, x) = TIGRE (Z, Y, X); see the module docstring for the derivation.
    src = np.stack([zero, dso * s, dso * c], 1)
    u_hat = np.stack([zero, c, -s], 1)
    v_hat = np.stack([np.ones(n), zero, zero], 1)
    det = -(dsd - dso)[:, None] * np.stack([zero, s, c], 1) + off_u[:, None] * u_hat + off_v[:, None] * v_hat
    return ConeGeometry((nv, nu), src, det, du * u_hat, dv * v_hat), vol


def to_tigre(geom: ConeGeometry, vol_geom: VolumeGeometry, *, layout: str = "naf") -> tuple[dict, np.ndarray]:
    """A TIGRE config dict and angles (radians) reproducing ``geom`` and ``vol_geom``.

    Only geometries TIGRE can express convert (sources on a circle about z at z = 0,
    detector columns horizontal and perpendicular to the central ray, rows along +z);
    anything else raises :class:`InputError`. Scalars are written when DSO/DSD/offsets are
    the same for every view.
    """
    _check_layout(layout)
    angles = np.arctan2(geom.src[:, 1], geom.src[:, 2])
    dso = np.hypot(geom.src[:, 1], geom.src[:, 2])
    radial = np.stack([np.zeros_like(angles), np.sin(angles), np.cos(angles)], 1)
    u_hat = np.stack([np.zeros_like(angles), np.cos(angles), -np.sin(angles)], 1)
    dsd = dso - np.einsum("ij,ij->i", geom.det, radial)
    off_u = np.einsum("ij,ij->i", geom.det, u_hat)
    off_v = geom.det[:, 0]
    (nv, nu), (dv, du) = geom.det_shape, geom.pixel_size

    def one(x):
        return float(x[0]) if np.allclose(x, x[0]) else x.tolist()

    flip = slice(None, None, -1) if layout == "naf" else slice(None)
    off_det = np.stack([off_u, off_v] if layout == "naf" else [off_v, off_u], 1)
    cfg = {
        "mode": "cone",
        "DSO": one(dso),
        "DSD": one(dsd),
        "nDetector": [nv, nu],
        "dDetector": [dv, du],
        "sDetector": [nv * dv, nu * du],
        "nVoxel": list(vol_geom.shape[flip]),
        "dVoxel": list(vol_geom.voxel_size[flip]),
        "sVoxel": [float(s) for s in vol_geom.size[flip]],
        "offOrigin": list(vol_geom.center[flip]),
        "offDetector": off_det[0].tolist() if np.allclose(off_det, off_det[0]) else off_det.tolist(),
    }
    back, _ = from_tigre(cfg, angles, layout=layout)
    if not back.allclose(geom, atol=1e-6 * max(1.0, float(dso.max()))):
        raise InputError("geometry cannot be expressed as a TIGRE circular cone-beam geometry")
    return cfg, angles


def tigre_volume_to_zyx(image: np.ndarray, *, layout: str = "naf") -> np.ndarray:
    """A NAF/R2-Gaussian ``image`` ([x, y, z]) or a TIGRE volume ([z, y, x]) as our [z, y, x].

    The map is its own inverse (it also converts ours back to ``layout``).
    """
    _check_layout(layout)
    image = np.asarray(image)
    if image.ndim != 3:
        raise InputError(f"TIGRE volume: expected a 3-D array, got shape {image.shape}")
    return np.ascontiguousarray(image.transpose(2, 1, 0) if layout == "naf" else image)


def tigre_projections_to_vu(projs: np.ndarray, *, layout: str = "naf") -> np.ndarray:
    """NAF/R2-Gaussian stored projections (rows flipped) or raw ``tigre.Ax`` output as [view, v, u].

    The map is its own inverse (it also converts ours back to ``layout``).
    """
    _check_layout(layout)
    projs = np.asarray(projs)
    if projs.ndim == 2:
        projs = projs[None]
    if projs.ndim != 3:
        raise InputError(f"TIGRE projections: expected [view, v, u], got shape {projs.shape}")
    return np.ascontiguousarray(projs[:, ::-1, :] if layout == "naf" else projs)
