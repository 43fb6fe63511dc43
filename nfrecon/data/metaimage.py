"""MetaImage (``.mha``) export of volumes, written here without ITK (DESIGN.md §2 conventions).

The file is a text header of ``Key = value`` lines followed by the raw voxels (one file,
``ElementDataFile = LOCAL``, uncompressed, little-endian). ITK, 3D Slicer and RTK read it
in ITK's physical frame LPS (x towards the patient's Left, y Posterior, z Superior), mm;
nfrecon's world (z, y, x) is RAS (x, y, z) read backwards (x Right, y Anterior, z Superior).

Layout, for a volume [z, y, x] on a :class:`VolumeGeometry`:

- the voxels are stored in the array's own C order, so ITK's index (i, j, k) is our
  (x, y, z) index: i fastest, ``DimSize = nx ny nz``, ``ElementSpacing = dx dy dz`` (mm);
- ``TransformMatrix`` lists the LPS direction of index axes i, j, k in turn (ITK's direction
  matrix column by column): (-1, 0, 0), (0, -1, 0), (0, 0, 1), since our +x (Right) and +y
  (Anterior) are LPS -x and -y;
- ``Offset`` is the LPS position (mm) of the centre of voxel (0, 0, 0): the NIfTI export's
  RAS translation with x and y negated. So ITK places every voxel where the NIfTI puts it;
- values are float32 mu (1/mm, ``MET_FLOAT``) or int16 HU (``MET_SHORT``, no scaling), as
  :func:`nfrecon.data.nifti.write_nifti`; the extra header field ``nfrecon`` records the
  units (``nfrecon = units=mu`` or ``nfrecon = units=HU mu_water=... mu_slope=...``), which
  ITK keeps in its metadata and :mod:`nfrecon.data.volumes` reads back.

Reading MetaImage (and NRRD, DICOM) goes through SimpleITK: :mod:`nfrecon.data.itk_image`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from nfrecon.data.hu import MU_WATER
from nfrecon.data.nifti import export_array, units_tag
from nfrecon.errors import InputError
from nfrecon.fsutil import atomic_path
from nfrecon.geometry.volume import VolumeGeometry

SUFFIX = ".mha"
"""The MetaImage file name suffix written (header and data in one file)."""

TAG_KEY = "nfrecon"
"""The header field holding the units tag (its value: the NIfTI tag without its first word)."""

# ITK direction of our index axes x, y, z in LPS: Right = -L, Anterior = -P, Superior = +S
_RAS_TO_LPS = np.array([-1.0, -1.0, 1.0])
_ELEMENT_TYPES = {np.dtype(np.float32): "MET_FLOAT", np.dtype(np.int16): "MET_SHORT"}


def _numbers(values) -> str:
    """Space-separated shortest round-trip decimals (no '-0')."""
    return " ".join(repr(float(v) + 0.0) for v in values)


def metaimage_header(vol_geom: VolumeGeometry, dtype, tag: str) -> str:
    """The text header (ending in ``ElementDataFile = LOCAL`` and a newline) of a volume on ``vol_geom``.

    ``dtype``: float32 or int16; ``tag``: a :func:`nfrecon.data.nifti.units_tag` text.
    """
    element = _ELEMENT_TYPES.get(np.dtype(dtype))
    if element is None:
        raise ValueError(f"MetaImage export writes float32 or int16, not {np.dtype(dtype)}")
    origin_lps = _RAS_TO_LPS * vol_geom.index_to_world((0, 0, 0))[::-1]
    direction = np.diag(_RAS_TO_LPS)  # column c: LPS direction of index axis c (i = x, j = y, k = z)
    prefix = f"{TAG_KEY} "
    if not tag.startswith(prefix):
        raise ValueError(f"not a units tag: {tag!r}")
    lines = [
        "ObjectType = Image",
        "NDims = 3",
        "BinaryData = True",
        "BinaryDataByteOrderMSB = False",
        "CompressedData = False",
        f"TransformMatrix = {_numbers(direction.T.ravel())}",
        f"Offset = {_numbers(origin_lps)}",
        f"ElementSpacing = {_numbers(vol_geom.voxel_size[::-1])}",
        f"DimSize = {' '.join(str(int(n)) for n in vol_geom.shape[::-1])}",
        f"{TAG_KEY} = {tag[len(prefix):]}",
        f"ElementType = {element}",
        "ElementDataFile = LOCAL",
    ]
    return "\n".join(lines) + "\n"


def write_metaimage(path, volume, vol_geom: VolumeGeometry, *, hu: bool = False, mu_water: float = MU_WATER,
                    mu_slope: float | None = None) -> Path:
    """Write a mu volume [z, y, x] (1/mm; numpy or torch) on ``vol_geom`` as a ``.mha`` file, atomically.

    ``hu=True`` stores int16 HU = round(mu_to_hu(mu, mu_water, mu_slope)), clipped to
    [-32768, 32767], exactly as :func:`nfrecon.data.nifti.write_nifti`. Returns the path.
    """
    path = Path(path)
    if not path.name.lower().endswith(SUFFIX):
        raise InputError(f"{path}: a MetaImage file name must end with {SUFFIX}")
    data = export_array(path, volume, vol_geom, hu=hu, mu_water=mu_water, mu_slope=mu_slope)
    header = metaimage_header(vol_geom, data.dtype, units_tag(hu, mu_water, mu_slope))
    raw = np.ascontiguousarray(data, dtype=data.dtype.newbyteorder("<"))
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(header.encode("ascii"))
        f.write(raw.tobytes())
    return path
