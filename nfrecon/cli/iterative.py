"""``nfrecon iterative``: CGLS, SIRT, OS-SART or TV reconstruction of a scan into a run folder."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from nfrecon.bench.iterative import DEFAULT_ITERS, DEFAULT_LAM, DEFAULT_SUBSETS, IterativeSettings, Method, reconstruct
from nfrecon.cli.common import parse, resolve_device
from nfrecon.configio import dump_yaml
from nfrecon.data.scan import load_scan
from nfrecon.fsutil import check_output_dir
from nfrecon.outputs.progress import progress
from nfrecon.outputs.results import VOLUME_FILES, VolumeFormat, write_results

DESCRIPTION = f"""Iterative reconstruction onto the scan's reconstruction grid with the voxel
projector: cgls (least squares), sirt, os-sart (ordered subsets of views) or tv (least
squares + total variation, Chambolle-Pock, mu >= 0). Writes <out>/volume.nii.gz (mu in
1/mm, or HU with --hu; volume.mha with --format mha), preview.png, config.yaml and
metrics.json (iterations run, the relative residual ||Ax - p|| / ||p|| per iteration,
seconds; PSNR/SSIM when the scan holds a ground truth).
Default iterations: {', '.join(f'{k} {v}' for k, v in DEFAULT_ITERS.items())}.
--lam is relative: the absolute TV weight is lam * (M/N) * x_ref * l^3 (M rays through the
volume, N voxels, l their mean chord in mm, x_ref = sum(p)/sum(chords)), which makes one
lam fit any number of views, pixels and voxels (default {DEFAULT_LAM:g}; larger = smoother)."""


@dataclass
class IterativeArgs:
    scan: Path
    """Scan file (HDF5, see docs/scan-format.md)."""
    out: Path = Path("runs/iterative")
    """Run folder."""
    method: Method = "tv"
    """Solver."""
    iters: int | None = None
    """Iterations (default depends on the method, see above)."""
    subsets: int = DEFAULT_SUBSETS
    """os-sart: number of ordered subsets (subset j holds views j, j+K, ...)."""
    lam: float = DEFAULT_LAM
    """tv: relative weight of the total variation (see above)."""
    tol: float | None = None
    """Stop early: tv when the relative change of x per iteration, the others when the
    relative residual falls below this."""
    nonneg: bool = True
    """Clip mu at 0 after each update (sirt, os-sart, tv; cgls is unconstrained)."""
    hu: bool = False
    """Write int16 HU instead of float32 mu."""
    mu_water: float = 0.0206
    """mu of water in 1/mm, for --hu."""
    format: VolumeFormat = "nifti"
    """Volume file: nifti (volume.nii.gz) or mha (volume.mha, MetaImage in ITK's LPS frame, for
    ITK, RTK and 3D Slicer); the same voxels at the same world positions."""
    device: str = "auto"
    """'auto', 'cpu' or 'cuda'."""
    backend: Literal["auto", "torch", "cpp", "cuda"] = "auto"
    """Implementation of the voxel projector: 'torch' (pure
    PyTorch, the reference), 'cpp' (fused kernels built for the CPU), 'cuda' (fused kernels on
    a GPU), 'auto' (cuda on a GPU, cpp on a CPU when the kernels build, else torch with a
    warning). 'nfrecon doctor' lists what runs here."""


def main(argv: list[str], prog: str) -> int:
    args = parse(IterativeArgs, argv, prog, DESCRIPTION)
    settings = IterativeSettings(args.method, args.iters, args.subsets, args.lam, args.tol, args.nonneg, args.backend)
    check_output_dir(args.out)
    scan = load_scan(args.scan)
    scan.require_recon_grid(args.scan)
    settings.check(scan.geom.n_views)
    device = resolve_device(args.device)
    bar = progress(settings.n_iter, desc=args.method, unit="it")

    def tick(k: int, x: torch.Tensor) -> None:
        bar.update(1)

    start = time.perf_counter()
    proj = torch.as_tensor(scan.projections, device=device)
    try:
        result, info = reconstruct(proj, scan.geom, scan.recon_geom, settings, callback=tick)
    finally:
        bar.close()
    volume = result.volume.cpu().numpy()
    seconds = time.perf_counter() - start
    info.update(iterations_run=result.n_iter, stopped_early=result.stopped_early, residual_history=result.residuals,
                seconds=seconds, device=str(device))
    gt = scan.gt if scan.gt_geom == scan.recon_geom else None
    metrics = write_results(args.out, volume, scan.recon_geom, gt=gt, info=info, title=f"{args.method}",
                            hu=args.hu, mu_water=args.mu_water, format=args.format)
    dump_yaml(args, args.out / "config.yaml")
    print(f"{args.method}: {result.n_iter} iterations in {seconds:.2f} s on {device}, relative residual "
          f"{result.residuals[-1]:.4g}; outputs in {args.out}/ ({VOLUME_FILES[args.format]}, preview.png, "
          "metrics.json, config.yaml)")
    if "vs_ground_truth" in metrics:
        m = metrics["vs_ground_truth"]
        print(f"PSNR {m['psnr_db']:.2f} dB, SSIM(3D) {m['ssim_3d']:.3f} vs ground truth "
              f"(data range {m['data_range']:.4g}/mm)")
    return 0
