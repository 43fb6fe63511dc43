"""CT volumes: reading (NIfTI, npz, MetaImage, NRRD, DICOM series) into mu or HU on a :class:`VolumeGeometry`.

Volumes are arrays indexed ``[z, y, x]`` in the world frame of DESIGN.md §2, which is the
patient's RAS+ frame read backwards: world x = towards the patient's Right, y = Anterior,
z = Superior (the rotation axis of a circular scan). Files in any orientation are brought
to that frame (closest canonical orientation; oblique affines are refused).

Formats, chosen by the name: ``.nii``/``.nii.gz`` (nibabel), ``.npz`` (``volume_hu`` [z, y, x]
+ ``spacing_zyx_mm``), and through SimpleITK (the optional ``formats`` extra,
:mod:`nfrecon.data.itk_image`) ``.mha``/``.mhd`` (MetaImage), ``.nrrd``/``.nhdr`` (NRRD) and a
folder holding one DICOM series. ITK images are placed in LPS mm (x Left, y Posterior,
z Superior): voxel index (i, j, k) sits at ``origin + direction @ diag(spacing) @ (i, j, k)``.
They are turned into the RAS affine ``diag(-1, -1, 1) @ [direction @ diag(spacing) | origin]``
over the (i, j, k) array and then handled exactly as a NIfTI file with that affine
(:func:`nfrecon.data.nifti.image_to_volume`). Units: npz, DICOM, MetaImage and NRRD CTs are
HU (DICOM stored values pass through RescaleSlope/RescaleIntercept, applied by the ITK reader);
NIfTI and MetaImage files written by nfrecon carry a units tag (mu or HU) that wins.
"""

from __future__ import annotations

import hashlib
import re
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np

from nfrecon.data.hu import MU_WATER, hu_to_mu, mu_to_hu
from nfrecon.data.itk_image import ITK_SUFFIXES, read_itk_image
from nfrecon.data.metaimage import TAG_KEY
from nfrecon.data.nifti import image_to_volume, parse_units_tag, read_nifti_tagged
from nfrecon.errors import InputError
from nfrecon.geometry.volume import VolumeGeometry

VOLUME_FORMATS = ".nii, .nii.gz, .npz, .mha, .mhd, .nrrd, .nhdr or a DICOM series folder"
"""The volume inputs, as error messages and help texts name them."""

_NIFTI_SUFFIXES = (".nii", ".nii.gz")
_LPS_TO_RAS = np.array([-1.0, -1.0, 1.0])  # ITK's LPS and RAS differ by the signs of x and y
# the one data file named by a detached header (.mhd: a file name, not LOCAL, LIST or a pattern; .nhdr)
_DATA_FILE = {".mhd": re.compile(r"^\s*ElementDataFile\s*=\s*(\S+)\s*$", re.MULTILINE),
              ".nhdr": re.compile(r"^\s*data ?file\s*:\s*(\S+)\s*$", re.MULTILINE)}


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


def is_volume_path(path) -> bool:
    """Whether ``path`` names a volume input by its form: a NIfTI, npz, MetaImage or NRRD file name,
    or a folder (a DICOM series)."""
    path = Path(path)
    return path.is_dir() or path.name.lower().endswith((*_NIFTI_SUFFIXES, ".npz", *ITK_SUFFIXES))


def _itk_volume(path: Path) -> tuple[np.ndarray, VolumeGeometry, dict]:
    """(float32 [z, y, x], geometry in scanner mm, tag) of an ITK image (see the module docstring)."""
    image = read_itk_image(path)
    affine = np.eye(4)
    affine[:3, :3] = _LPS_TO_RAS[:, None] * image.direction * np.asarray(image.spacing)[None, :]
    affine[:3, 3] = _LPS_TO_RAS * np.asarray(image.origin)
    vol, geom = image_to_volume(nib.Nifti1Image(image.array.transpose(2, 1, 0), affine), path)
    fmt = "DICOM" if path.is_dir() else "NRRD" if path.name.lower().endswith((".nrrd", ".nhdr")) else "MetaImage"
    tag = None
    if TAG_KEY in image.metadata:  # written by nfrecon.data.metaimage
        tag = parse_units_tag(f"{TAG_KEY} {image.metadata[TAG_KEY]}")
    return vol, geom, {**(tag or {"units": "HU"}), "format": fmt}


def read_volume_tagged(path) -> tuple[np.ndarray, VolumeGeometry, dict]:
    """(float32 [z, y, x], VolumeGeometry in scanner mm, tag) of any volume input (module docstring).

    The tag is ``{"units": "mu" | "HU", "format": "NIfTI" | "npz" | "MetaImage" | "NRRD" | "DICOM"}``
    plus ``mu_water``/``mu_slope`` (1/mm) when the file records them, and ``"guessed": True``
    for untagged NIfTI files (units from the value range, see :mod:`nfrecon.data.nifti`).
    """
    path = Path(path)
    name = path.name.lower()
    if name.endswith(_NIFTI_SUFFIXES):
        vol, geom, tag = read_nifti_tagged(path)
        return vol, geom, {**tag, "format": "NIfTI"}
    if path.is_dir() or name.endswith(ITK_SUFFIXES):
        return _itk_volume(path)
    if not name.endswith(".npz"):
        raise InputError(f"{path}: unknown volume format (expected {VOLUME_FORMATS})")
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    vol, geom = image_to_volume(_npz_image(path), path)
    return vol, geom, {"units": "HU", "format": "npz"}


def volume_sha256(path) -> str:
    """SHA-256 (hex) of the bytes a volume input is read from: a file's bytes; for a folder (DICOM),
    each file's name and bytes in name order; for a detached header (.mhd, .nhdr), the
    header's bytes and those of the one data file it names (when it names one)."""
    path = Path(path)
    digest = hashlib.sha256()
    if path.is_dir():
        for f in sorted(p for p in path.iterdir() if p.is_file()):
            digest.update(f.name.encode() + b"\0")
            digest.update(f.read_bytes())
        return digest.hexdigest()
    header = path.read_bytes()
    digest.update(header)
    pattern = _DATA_FILE.get(path.suffix.lower())
    found = pattern.search(header.decode("latin-1")) if pattern else None
    if found and found.group(1).upper() not in ("LOCAL", "LIST") and (path.parent / found.group(1)).is_file():
        digest.update((path.parent / found.group(1)).read_bytes())
    return digest.hexdigest()


def _placed(geom: VolumeGeometry, keep_position: bool) -> VolumeGeometry:
    return geom if keep_position else VolumeGeometry(geom.shape, geom.voxel_size, (0.0, 0.0, 0.0))


def read_ct(path, keep_position: bool = False) -> tuple[np.ndarray, VolumeGeometry]:
    """A CT in HU as (float32 [z, y, x], VolumeGeometry) from any volume input (module docstring).

    The array is in RAS+ canonical orientation, transposed to [z, y, x]. The geometry is
    centred on the world origin (the rotation axis) unless ``keep_position``, which keeps
    the scanner coordinates of the file's affine (or ITK origin and direction). A mu volume
    written by :func:`nfrecon.data.nifti.write_nifti` or
    :func:`nfrecon.data.metaimage.write_metaimage` is converted back to HU with its recorded mu_water.
    """
    vol, geom, tag = read_volume_tagged(path)
    if tag["units"] != "HU":
        vol = mu_to_hu(vol, tag.get("mu_water", MU_WATER), tag.get("mu_slope"))
    return vol, _placed(geom, keep_position)


def read_mu_volume(path, *, mu_water: float | None = None, mu_slope: float | None = None,
                   hu_min: float | None = -1000.0, hu_max: float | None = None,
                   keep_position: bool = False) -> tuple[np.ndarray, VolumeGeometry]:
    """A volume of mu (1/mm) as (float32 [z, y, x], VolumeGeometry), from mu or HU files.

    HU files (npz, DICOM, MetaImage, NRRD CTs, HU NIfTIs) are converted with :func:`hu_to_mu`;
    mu_water/mu_slope default to those recorded in the file by ``write_nifti`` or
    ``write_metaimage``, else ``MU_WATER``. Orientation and placement as in :func:`read_ct`.
    """
    vol, geom, tag = read_volume_tagged(path)
    if tag["units"] == "HU":
        mu_water = tag.get("mu_water", MU_WATER) if mu_water is None else mu_water
        mu_slope = tag.get("mu_slope") if mu_slope is None else mu_slope
        vol = hu_to_mu(vol, mu_water, mu_slope, hu_min, hu_max)
    return vol, _placed(geom, keep_position)
