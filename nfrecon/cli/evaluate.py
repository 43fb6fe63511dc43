"""``nfrecon eval``: image-quality metrics of a reconstruction, as JSON on stdout."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nfrecon.cli.common import parse
from nfrecon.data.volumes import read_mu_volume
from nfrecon.errors import InputError
from nfrecon.geometry.volume import VolumeGeometry
from nfrecon.metrics import evaluate

DESCRIPTION = """PSNR and SSIM (3D, and the slice-wise mean over three axes) of a reconstruction
against a ground truth on the same grid. Either may be NIfTI (.nii, .nii.gz), MetaImage
(.mha, .mhd), NRRD (.nrrd, .nhdr), .npz or a DICOM series folder (ITK formats need
SimpleITK). HU volumes (as tagged by nfrecon; untagged NIfTI guessed from their range;
untagged MetaImage, NRRD, DICOM and npz taken as HU) are converted to mu first. Prints JSON;
every number is labelled with its definition."""


@dataclass
class EvalArgs:
    recon: Path
    """Reconstruction (e.g. a run folder's volume.nii.gz or volume.mha)."""
    gt: Path
    """Ground truth on the same grid (e.g. the scan's <stem>_gt.nii.gz)."""
    data_range: float | None = None
    """Data range R of PSNR/SSIM in 1/mm (default: the ground truth's maximum)."""


def _mu(path: Path) -> tuple[np.ndarray, VolumeGeometry]:
    """mu (1/mm) [z, y, x] and its grid in scanner mm; HU with the recorded (or default) mu_water, not clipped."""
    return read_mu_volume(path, hu_min=None, keep_position=True)


def main(argv: list[str], prog: str) -> int:
    args = parse(EvalArgs, argv, prog, DESCRIPTION)
    recon, recon_geom = _mu(args.recon)
    gt, gt_geom = _mu(args.gt)
    if recon_geom.shape != gt_geom.shape or not np.allclose(recon_geom.voxel_size, gt_geom.voxel_size, rtol=1e-5):
        raise InputError(f"{args.recon}: grid {recon_geom.describe()} differs from {args.gt}: {gt_geom.describe()}")
    result = {"recon": str(args.recon), "gt": str(args.gt), **evaluate(recon, gt, data_range=args.data_range)}
    print(json.dumps(result, indent=2, default=float))
    return 0
