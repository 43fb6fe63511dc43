"""CT volumes: reading (NIfTI, npz) into mu or HU on a :class:`VolumeGeometry`.

Volumes are arrays indexed ``[z, y, x]`` in the world frame of DESIGN.md §2, which is the
patient's RAS+ frame read backwards: world x = towards the patient's Right, y = Anterior,
z = Superior (the rotation axis of a circular scan). Files in any orientation are brought
to that frame (closest canonical orientation; oblique affines are refused).
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np

from nfrecon.data.hu import MU_WATER, hu_to_mu, mu_to_hu
from nfrecon.data.nifti import image_to_volume, read_nifti_tagged
from nfrecon.errors import InputError
from nfrecon.geometry.volume import VolumeGeometry


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
