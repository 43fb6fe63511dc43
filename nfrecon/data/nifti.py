"""NIfTI volumes in nfrecon's conventions (DESIGN.md §2).

Writing: the [z, y, x] array is stored transposed to (x, y, z); the affine is the voxel
spacing on the diagonal and the world position of voxel (0, 0, 0) as translation, so that
world (z, y, x) mm = RAS (x, y, z) mm read backwards; qform and sform codes are 1
(scanner), units mm. Values are float32 mu (1/mm) by default, or int16 HU on request
(rounded, clipped to the int16 range, stored without scl_slope/scl_inter scaling).

The header's ``descrip`` field records the units, e.g. ``nfrecon units=mu`` or
``nfrecon units=HU mu_water=0.0206 mu_slope=0.0206``, so that reading back knows how to
get mu. Files from elsewhere carry no such tag; their units are guessed from the value
range (anything below -10 or above 50 is taken as HU).
"""

from __future__ import annotations

import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from nfrecon.data.hu import MU_WATER, mu_to_hu
from nfrecon.errors import InputError
from nfrecon.fsutil import atomic_path
from nfrecon.geometry.volume import VolumeGeometry

_TAG = "nfrecon"
_NIFTI_SUFFIXES = (".nii", ".nii.gz")


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


def volume_affine(geom: VolumeGeometry) -> np.ndarray:
    """4x4 affine mapping a (x, y, z) voxel index to RAS (x, y, z) mm for ``geom``."""
    affine = np.diag([*geom.voxel_size[::-1], 1.0])
    affine[:3, 3] = geom.index_to_world((0, 0, 0))[::-1]
    return affine


def units_tag(hu: bool, mu_water: float, mu_slope: float | None) -> str:
    """The units tag of an exported volume, e.g. ``nfrecon units=mu`` or
    ``nfrecon units=HU mu_water=0.0206 mu_slope=0.0206`` (mu_water, mu_slope in 1/mm).

    NIfTI files keep it in ``descrip``, MetaImage files (:mod:`nfrecon.data.metaimage`) in
    their ``nfrecon`` header field.
    """
    if not hu:
        return f"{_TAG} units=mu"
    slope = mu_water if mu_slope is None else mu_slope
    return f"{_TAG} units=HU mu_water={mu_water:.9g} mu_slope={slope:.9g}"


def parse_units_tag(text: bytes | str) -> dict | None:
    """``{"units": "mu" | "HU", "mu_water": ..., "mu_slope": ...}`` of a :func:`units_tag`
    text (the numbers only when present), or None when the text is no such tag."""
    text = text.decode("latin-1") if isinstance(text, bytes) else str(text)
    words = text.strip("\x00 ").split()
    if not words or words[0] != _TAG:
        return None
    fields = dict(w.split("=", 1) for w in words[1:] if "=" in w)
    if fields.get("units") not in ("mu", "HU"):
        return None
    tag: dict = {"units": fields["units"]}
    for key in ("mu_water", "mu_slope"):
        try:
            tag[key] = float(fields[key])
        except (KeyError, ValueError):
            pass
    return tag


def export_array(path, volume, vol_geom: VolumeGeometry, *, hu: bool, mu_water: float,
                 mu_slope: float | None) -> np.ndarray:
    """The values a volume file stores: float32 mu (1/mm), or int16 HU = round(mu_to_hu(mu)) clipped
    to [-32768, 32767], as a numpy [z, y, x] array. ``volume``: mu [z, y, x] (numpy or torch) on
    ``vol_geom``; InputError naming ``path`` when the shapes differ or values are not finite."""
    if isinstance(volume, torch.Tensor):
        volume = volume.detach().cpu().numpy()
    volume = np.asarray(volume)
    if volume.shape != vol_geom.shape:
        raise InputError(f"{path}: volume has shape {volume.shape}, its geometry says {vol_geom.shape}")
    if not np.all(np.isfinite(volume)):
        raise InputError(f"{path}: the volume to write contains NaN or Inf")
    if hu:
        hu_values = mu_to_hu(volume.astype(np.float64), mu_water, mu_slope)
        return np.clip(np.rint(hu_values), -32768, 32767).astype(np.int16)
    return volume.astype(np.float32)


def write_nifti(path, volume, vol_geom: VolumeGeometry, *, hu: bool = False, mu_water: float = MU_WATER,
                mu_slope: float | None = None) -> Path:
    """Write a mu volume [z, y, x] (1/mm; numpy or torch) as ``.nii``/``.nii.gz``, atomically.

    ``hu=True`` stores int16 HU = round(mu_to_hu(mu, mu_water, mu_slope)), clipped to
    [-32768, 32767]. Returns the path.
    """
    path = Path(path)
    if not path.name.lower().endswith(_NIFTI_SUFFIXES):
        raise InputError(f"{path}: a NIfTI file name must end with .nii or .nii.gz")
    data = export_array(path, volume, vol_geom, hu=hu, mu_water=mu_water, mu_slope=mu_slope)
    affine = volume_affine(vol_geom)
    img = nib.Nifti1Image(np.ascontiguousarray(data.transpose(2, 1, 0)), affine)
    header = img.header
    header.set_data_dtype(data.dtype)
    header.set_xyzt_units(xyz="mm")
    header["descrip"] = units_tag(hu, mu_water, mu_slope).encode("ascii")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    with atomic_path(path) as tmp:
        nib.save(img, tmp)
    return path


def read_nifti_tagged(path) -> tuple[np.ndarray, VolumeGeometry, dict]:
    """(float32 [z, y, x], VolumeGeometry in scanner mm, units tag) of a NIfTI file.

    The tag is ``{"units": "mu" | "HU", "mu_water": ..., "mu_slope": ...}`` as written by
    :func:`write_nifti`; for untagged files ``{"units": guess, "guessed": True}``.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    try:
        img = nib.load(path)
    except (nib.filebasedimages.ImageFileError, OSError, EOFError, ValueError, zlib.error) as exc:
        raise InputError(f"{path}: not a readable NIfTI file ({exc})") from exc
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise InputError(f"{path}: not a NIfTI file (nibabel read it as {type(img).__name__})")
    volume, geom = image_to_volume(img, path)
    tag = parse_units_tag(img.header["descrip"].item())
    if tag is None:
        hu_like = volume.size and (volume.min() < -10 or volume.max() > 50)
        tag = {"units": "HU" if hu_like else "mu", "guessed": True}
    return volume, geom, tag


def read_nifti(path) -> tuple[np.ndarray, VolumeGeometry, bool]:
    """(float32 [z, y, x], VolumeGeometry in scanner mm, is_hu) of a NIfTI file.

    The volume is brought to RAS+ canonical orientation; rotated/oblique affines are refused.
    ``is_hu`` comes from the header tag written by :func:`write_nifti` (else a range guess).
    """
    volume, geom, tag = read_nifti_tagged(path)
    return volume, geom, tag["units"] == "HU"
