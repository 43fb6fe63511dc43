"""``nfrecon fdk``: FDK reconstruction of a scan into a run folder."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from nfrecon.cli.common import parse, resolve_device
from nfrecon.configio import dump_yaml
from nfrecon.data.scan import load_scan
from nfrecon.fsutil import check_output_dir
from nfrecon.outputs.results import VOLUME_FILES, VolumeFormat, write_results
from nfrecon.recon.fdk import fdk
from nfrecon.recon.filters import FILTERS

DESCRIPTION = """FDK reconstruction (cosine weights, ramp filter, Parker weights for short scans)
onto the scan's reconstruction grid. Writes <out>/volume.nii.gz (mu in 1/mm, or HU with
--hu; volume.mha with --format mha), preview.png, config.yaml, and metrics.json (PSNR/SSIM
when the scan holds a ground truth)."""

FilterName = Literal["ram-lak", "shepp-logan", "cosine", "hamming", "hann"]
assert set(FilterName.__args__) == set(FILTERS)


@dataclass
class FdkArgs:
    scan: Path
    """Scan file (HDF5, see docs/scan-format.md)."""
    out: Path = Path("runs/fdk")
    """Run folder."""
    filter: FilterName = "ram-lak"
    """Apodisation of the ramp filter."""
    cutoff: float = 1.0
    """Filter cutoff as a fraction of the Nyquist frequency."""
    short_scan: Literal["auto", "on", "off"] = "auto"
    """Parker short-scan weights: auto (when the views do not close the circle), on, off."""
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
    """Implementation of the voxel projector (and FDK's backprojection): 'torch' (pure
    PyTorch, the reference), 'cpp' (fused kernels built for the CPU), 'cuda' (fused kernels on
    a GPU), 'auto' (cuda on a GPU, cpp on a CPU when the kernels build, else torch with a
    warning). 'nfrecon doctor' lists what runs here."""


def main(argv: list[str], prog: str) -> int:
    args = parse(FdkArgs, argv, prog, DESCRIPTION)
    check_output_dir(args.out)
    scan = load_scan(args.scan)
    scan.require_recon_grid(args.scan)
    device = resolve_device(args.device)
    short = {"auto": "auto", "on": True, "off": False}[args.short_scan]
    start = time.perf_counter()
    proj = torch.as_tensor(scan.projections, device=device)
    volume = fdk(proj, scan.geom, scan.recon_geom, filter=args.filter, cutoff=args.cutoff, short_scan=short,
                 backend=args.backend)
    volume = volume.cpu().numpy()
    seconds = time.perf_counter() - start
    info = {"method": "fdk", "filter": args.filter, "cutoff": args.cutoff, "seconds": seconds, "device": str(device)}
    metrics = write_results(args.out, volume, scan.recon_geom, gt=scan.gt if scan.gt_geom == scan.recon_geom else None,
                            info=info, title="FDK", hu=args.hu, mu_water=args.mu_water, format=args.format)
    dump_yaml(args, args.out / "config.yaml")
    print(f"FDK in {seconds:.2f} s on {device}; outputs in {args.out}/ "
          f"({VOLUME_FILES[args.format]}, preview.png, metrics.json)")
    if "vs_ground_truth" in metrics:
        m = metrics["vs_ground_truth"]
        print(f"PSNR {m['psnr_db']:.2f} dB, SSIM(3D) {m['ssim_3d']:.3f} vs ground truth "
              f"(data range {m['data_range']:.4g}/mm)")
    return 0
