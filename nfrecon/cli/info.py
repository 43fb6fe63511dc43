"""``nfrecon info``: a readable summary of a scan file or a NIfTI volume."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import tyro

from nfrecon.cli.common import parse
from nfrecon.data.nifti import read_nifti_tagged
from nfrecon.data.scan import load_scan

DESCRIPTION = "Summarise a scan file (geometry, projections, noise, grids) or a NIfTI volume."


@dataclass
class InfoArgs:
    path: tyro.conf.Positional[Path]
    """Scan file (.h5) or NIfTI volume (.nii, .nii.gz)."""


def main(argv: list[str], prog: str) -> int:
    args = parse(InfoArgs, argv, prog, DESCRIPTION)
    if args.path.name.lower().endswith((".nii", ".nii.gz")):
        vol, geom, tag = read_nifti_tagged(args.path)
        units = "HU" if tag["units"] == "HU" else "mu (1/mm)"
        print(f"{args.path}: NIfTI volume, {geom.describe()}")
        print(f"values ({units}{', guessed' if tag.get('guessed') else ''}): "
              f"min {vol.min():.4g}, mean {vol.mean():.4g}, max {vol.max():.4g}")
        return 0
    scan = load_scan(args.path)
    print(f"{args.path}: nfrecon scan")
    print(scan.describe())
    return 0
