"""``nfrecon eval``: image-quality metrics of a reconstruction, as JSON on stdout."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from nfrecon.cli.common import parse
from nfrecon.data.hu import hu_to_mu
from nfrecon.data.nifti import read_nifti_tagged
from nfrecon.errors import InputError
from nfrecon.metrics import evaluate

DESCRIPTION = """PSNR and SSIM (3D, and the slice-wise mean over three axes) of a reconstruction
against a ground truth, both NIfTI on the same grid. HU volumes (as tagged by nfrecon, or
guessed from their range) are converted to mu first. Prints JSON; every number is labelled
with its definition."""


@dataclass
class EvalArgs:
    recon: Path
    """Reconstruction (NIfTI)."""
    gt: Path
    """Ground truth (NIfTI) on the same grid."""
    data_range: Optional[float] = None
    """Data range R of PSNR/SSIM in 1/mm (default: the ground truth's maximum)."""


def _mu(path: Path) -> tuple[np.ndarray, object]:
    vol, geom, tag = read_nifti_tagged(path)
    if tag["units"] == "HU":
        vol = hu_to_mu(vol, tag.get("mu_water", 0.0206), tag.get("mu_slope"), hu_min=None)
    return vol, geom


def main(argv: list[str], prog: str) -> int:
    args = parse(EvalArgs, argv, prog, DESCRIPTION)
    recon, recon_geom = _mu(args.recon)
    gt, gt_geom = _mu(args.gt)
    if recon_geom.shape != gt_geom.shape or not np.allclose(recon_geom.voxel_size, gt_geom.voxel_size, rtol=1e-5):
        raise InputError(f"{args.recon}: grid {recon_geom.describe()} differs from {args.gt}: {gt_geom.describe()}")
    result = {"recon": str(args.recon), "gt": str(args.gt), **evaluate(recon, gt, data_range=args.data_range)}
    print(json.dumps(result, indent=2, default=float))
    return 0
