"""``nfrecon info``: a readable summary of a scan file or a volume (NIfTI, npz, MetaImage, NRRD, DICOM)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import tyro

from nfrecon.cli.common import parse
from nfrecon.data.itk_image import NO_DICOM_SERIES
from nfrecon.data.scan import load_scan
from nfrecon.data.volumes import is_volume_path, read_volume_tagged
from nfrecon.errors import InputError

DESCRIPTION = """Summarise a scan file (geometry, projections, noise, grids) or a volume: NIfTI
(.nii, .nii.gz), .npz, MetaImage (.mha, .mhd), NRRD (.nrrd, .nhdr) or a folder holding one
DICOM series (the ITK formats need SimpleITK). A volume's grid is given in scanner mm
(nfrecon's world frame: x Right, y Anterior, z Superior)."""


@dataclass
class InfoArgs:
    path: tyro.conf.Positional[Path]
    """Scan file (.h5) or volume (.nii, .nii.gz, .npz, .mha, .mhd, .nrrd, .nhdr, a DICOM folder)."""


def _volume(path: Path) -> None:
    try:
        vol, geom, tag = read_volume_tagged(path)
    except InputError as exc:
        if path.is_dir() and str(exc).endswith(NO_DICOM_SERIES):
            raise InputError(f"{path}: is a folder, expected a scan file, a volume file or a folder holding "
                             "one DICOM series (it holds none)") from None
        raise
    units = "HU" if tag["units"] == "HU" else "mu (1/mm)"
    kind = "DICOM series" if tag["format"] == "DICOM" else f"{tag['format']} volume"
    print(f"{path}: {kind}, {geom.describe()}")
    print(f"values ({units}{', guessed' if tag.get('guessed') else ''}): "
          f"min {vol.min():.4g}, mean {vol.mean():.4g}, max {vol.max():.4g}")


def main(argv: list[str], prog: str) -> int:
    args = parse(InfoArgs, argv, prog, DESCRIPTION)
    if is_volume_path(args.path):
        _volume(args.path)
        return 0
    scan = load_scan(args.path)
    print(f"{args.path}: nfrecon scan")
    print(scan.describe())
    return 0
