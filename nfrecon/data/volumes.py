"""CT volumes: reading (NIfTI, npz), HU <-> mu conversion, resampling between grids.

Volumes are arrays indexed ``[z, y, x]`` in the world frame of DESIGN.md §2, which is the
patient's RAS+ frame read backwards: world x = towards the patient's Right, y = Anterior,
z = Superior (the rotation axis of a circular scan). Files in any orientation are brought
to that frame (closest canonical orientation; oblique affines are refused).
"""

from __future__ import annotations

import zipfile
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from nfrecon.errors import InputError
from nfrecon.geometry.volume import VolumeGeometry

MU_WATER = 0.0206  # 1/mm, about 60 keV


# ---------------------------------------------------------------------- HU <-> mu
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


# ---------------------------------------------------------------------- reading
AXIS_TOLERANCE = 1e-4  # largest off-diagonal affine term accepted, relative to the voxel size


def image_to_volume(img: nib.spatialimages.SpatialImage, name) -> tuple[np.ndarray, VolumeGeometry]:
    """(float32 [z, y, x], VolumeGeometry in scanner mm) of a 3D image with an (x, y, z) affine.

    The image is reoriented to the closest RAS+ canonical orientation; the result must then
    be axis-aligned (no rotation or shear), else InputError. ``name`` labels errors.
    """
    shape = img.shape
    if len(shape) == 4 and shape[3] == 1:
        img = img.slicer[..., 0]
    elif len(shape) != 3:
        raise InputError(f"{name}: expected a 3D volume, got shape {tuple(shape)}")
    affine = np.asarray(img.affine, dtype=np.float64)
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise InputError(f"{name}: the affine is singular or not finite, cannot place the voxels")
    canon = nib.as_closest_canonical(img)
    lin = canon.affine[:3, :3]
    spacing = np.diag(lin).copy()
    if np.max(np.abs(lin - np.diag(spacing))) > AXIS_TOLERANCE * np.min(np.abs(spacing)) or np.any(spacing <= 0):
        raise InputError(f"{name}: the affine is rotated or oblique; only axis-aligned volumes are supported "
                         "(resample it to an axis-aligned grid first)")
    try:
        data = np.asarray(canon.get_fdata(dtype=np.float32))
    except (OSError, EOFError, ValueError, zlib.error) as exc:
        raise InputError(f"{name}: cannot read the voxel data, the file is truncated or corrupt ({exc})") from exc
    if not np.all(np.isfinite(data)):
        raise InputError(f"{name}: the volume contains NaN or Inf")
    shape_xyz = np.asarray(data.shape)
    center_xyz = canon.affine[:3, 3] + (shape_xyz - 1) / 2 * spacing
    geom = VolumeGeometry(tuple(shape_xyz[::-1]), tuple(spacing[::-1]), tuple(center_xyz[::-1]))
    return np.ascontiguousarray(data.transpose(2, 1, 0)), geom


def _npz_image(path: Path) -> nib.Nifti1Image:
    """An npz CT (``volume_hu`` [z, y, x], ``spacing_zyx_mm``, optional ``affine_xyz``/``axcodes``) as an image."""
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise InputError(f"{path}: not a readable npz archive ({exc})") from exc
    for key in ("volume_hu", "spacing_zyx_mm"):
        if key not in arrays:
            raise InputError(f"{path}: npz has no '{key}' array (found: {', '.join(sorted(arrays)) or 'none'})")
    vol = arrays["volume_hu"]
    if vol.ndim != 3:
        raise InputError(f"{path}: volume_hu must be 3D [z, y, x], got shape {vol.shape}")
    spacing = np.asarray(arrays["spacing_zyx_mm"], dtype=np.float64).ravel()
    if spacing.shape != (3,) or not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
        raise InputError(f"{path}: spacing_zyx_mm must be 3 positive numbers, got {spacing}")
    if "affine_xyz" in arrays:
        affine = np.asarray(arrays["affine_xyz"], dtype=np.float64)
        if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
            raise InputError(f"{path}: affine_xyz must be a finite 4x4 matrix")
        if abs(np.linalg.det(affine[:3, :3])) < 1e-12:
            raise InputError(f"{path}: affine_xyz is singular, cannot place the voxels")
        if "axcodes" in arrays:
            codes = "".join(nib.aff2axcodes(affine))
            if codes != str(arrays["axcodes"]):
                raise InputError(f"{path}: affine_xyz has axcodes {codes} but the file says {arrays['axcodes']}")
    else:
        codes = str(arrays["axcodes"]) if "axcodes" in arrays else "RAS"
        try:
            ornt = nib.orientations.axcodes2ornt(tuple(codes))
        except ValueError as exc:
            raise InputError(f"{path}: axcodes '{codes}' are not valid ({exc})") from exc
        affine = np.eye(4)  # axis i of (x, y, z) index order points along world axis ornt[i, 0]
        affine[:3, :3] = 0
        for i, (axis, flip) in enumerate(ornt.astype(int)):
            affine[axis, i] = flip * spacing[::-1][i]
    return nib.Nifti1Image(np.ascontiguousarray(vol.transpose(2, 1, 0)), affine)


def _read_any(path) -> tuple[np.ndarray, VolumeGeometry, dict]:
    """(volume [z, y, x] float32, geometry in scanner position, units tag) of a .nii/.nii.gz/.npz file."""
    from nfrecon.data.nifti import read_nifti_tagged  # nifti builds on this module

    path = Path(path)
    name = path.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        return read_nifti_tagged(path)
    if not name.endswith(".npz"):
        raise InputError(f"{path}: unknown volume format (expected .nii, .nii.gz or .npz)")
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    vol, geom = image_to_volume(_npz_image(path), path)
    return vol, geom, {"units": "HU"}


def _placed(geom: VolumeGeometry, keep_position: bool) -> VolumeGeometry:
    return geom if keep_position else VolumeGeometry(geom.shape, geom.voxel_size, (0.0, 0.0, 0.0))


def read_ct(path, keep_position: bool = False) -> tuple[np.ndarray, VolumeGeometry]:
    """A CT in HU as (float32 [z, y, x], VolumeGeometry) from .nii/.nii.gz/.npz.

    The array is in RAS+ canonical orientation, transposed to [z, y, x]. The geometry is
    centred on the world origin (the rotation axis) unless ``keep_position``, which keeps
    the scanner coordinates of the file's affine. A mu volume written by
    :func:`nfrecon.data.nifti.write_nifti` is converted back to HU with its recorded mu_water.
    """
    vol, geom, tag = _read_any(path)
    if tag["units"] != "HU":
        vol = mu_to_hu(vol, tag.get("mu_water", MU_WATER), tag.get("mu_slope"))
    return vol, _placed(geom, keep_position)


def read_mu_volume(path, *, mu_water: float | None = None, mu_slope: float | None = None,
                   hu_min: float | None = -1000.0, hu_max: float | None = None,
                   keep_position: bool = False) -> tuple[np.ndarray, VolumeGeometry]:
    """A volume of mu (1/mm) as (float32 [z, y, x], VolumeGeometry), from mu or HU files.

    HU files (npz CTs, HU NIfTIs) are converted with :func:`hu_to_mu`; mu_water/mu_slope
    default to those recorded in the file by ``write_nifti``, else ``MU_WATER``.
    Orientation and placement as in :func:`read_ct`.
    """
    vol, geom, tag = _read_any(path)
    if tag["units"] == "HU":
        mu_water = tag.get("mu_water", MU_WATER) if mu_water is None else mu_water
        mu_slope = tag.get("mu_slope") if mu_slope is None else mu_slope
        vol = hu_to_mu(vol, mu_water, mu_slope, hu_min, hu_max)
    return vol, _placed(geom, keep_position)


# ---------------------------------------------------------------------- resampling
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
