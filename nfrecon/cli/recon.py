"""``nfrecon recon``: reconstruct a scan with a trained learned model (lpd or unet)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from nfrecon.cli.common import parse, resolve_device
from nfrecon.configio import dump_yaml
from nfrecon.data.scan import load_scan
from nfrecon.fsutil import check_output_dir
from nfrecon.learned.modelfile import load_model
from nfrecon.learned.recon import reconstruct_learned
from nfrecon.outputs.results import VOLUME_FILES, VolumeFormat, write_results

DESCRIPTION = """Reconstruct a scan with a model trained by 'nfrecon train-learned' (learned primal-dual
or FDK + U-Net; the method is stored in model.pt). The scan must be of the model's protocol and
grid (views, detector, distances, arc, grid shape and voxel size), else it is refused. Writes
<out>/volume.nii.gz (or volume.mha), preview.png, config.yaml and metrics.json (seconds; PSNR/SSIM
when the scan holds a ground truth)."""


@dataclass
class ReconArgs:
    model: Path
    """model.pt from 'nfrecon train-learned'."""
    scan: Path
    """Scan file (HDF5, see docs/scan-format.md)."""
    out: Path = Path("runs/recon")
    """Run folder."""
    hu: bool = False
    """Write int16 HU instead of float32 mu."""
    mu_water: float = 0.0206
    """mu of water in 1/mm, for --hu."""
    format: VolumeFormat = "nifti"
    """Volume file: nifti (volume.nii.gz) or mha (volume.mha)."""
    device: str = "auto"
    """'auto', 'cpu' or 'cuda'."""
    backend: Literal["auto", "torch", "cpp", "cuda"] = "auto"
    """Implementation of the projector and FDK (see 'nfrecon fdk --help')."""


def main(argv: list[str], prog: str) -> int:
    args = parse(ReconArgs, argv, prog, DESCRIPTION)
    check_output_dir(args.out)
    model = load_model(args.model)
    scan = load_scan(args.scan)
    device = resolve_device(args.device)
    result = reconstruct_learned(model, scan, device, args.backend, source=args.scan)
    seconds = result.setup_seconds + result.network_seconds
    info = {"method": model.method, "model": str(args.model), "seconds": seconds,
            "setup_seconds": result.setup_seconds, "network_seconds": result.network_seconds, "device": str(device),
            "model_step": model.record.get("step"), "held_out_cts": model.record.get("held_out_cts")}
    gt = scan.gt if scan.gt_geom == scan.recon_geom else None
    metrics = write_results(args.out, result.volume, scan.recon_geom, gt=gt, info=info, title=model.method,
                            hu=args.hu, mu_water=args.mu_water, format=args.format)
    dump_yaml(args, args.out / "config.yaml")
    print(f"{model.method} in {seconds:.2f} s on {device}; outputs in {args.out}/ "
          f"({VOLUME_FILES[args.format]}, preview.png, metrics.json)")
    if "vs_ground_truth" in metrics:
        m = metrics["vs_ground_truth"]
        print(f"PSNR {m['psnr_db']:.2f} dB, SSIM(3D) {m['ssim_3d']:.3f} vs ground truth "
              f"(data range {m['data_range']:.4g}/mm)")
    return 0
