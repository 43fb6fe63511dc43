"""``nfrecon fit``: per-scan fitting of a neural field (NAF, or CondCBNT over a pretrained backbone)."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from pathlib import Path

from nfrecon.cli import presets
from nfrecon.cli.common import parse
from nfrecon.cli.presets import RunOptions
from nfrecon.configio import load_yaml, merge, to_dict
from nfrecon.fit.backbone import read_backbone
from nfrecon.fit.config import FitConfig
from nfrecon.fit.run import run_fit

DESCRIPTION = """Fit a neural attenuation field to a scan by differentiable ray marching, then export
<out>/volume.nii.gz, preview.png, metrics.json (held-out projection error; PSNR/SSIM when the
scan has a ground truth), config.yaml (re-usable with --config), checkpoint.pt and TensorBoard
logs in <out>/tb. Without --scan, the built-in Shepp-Logan phantom is simulated (64^3, 50 noisy
views over 205 deg) and fitted.
--method naf (default): a fresh hash grid + MLP (NAF). --method condcbnt --backbone backbone.pt:
a fresh modulation field over a backbone pretrained by 'nfrecon pretrain' (frozen; with
--condcbnt.unfreeze-after K also fitted from step K at --condcbnt.backbone-lr).
Options are applied in order: defaults < --preset < (condcbnt: the backbone and modulation
sizes stored in backbone.pt) < --config < command-line flags.
Presets (configs/*.yaml): naf (published NAF), naf-fast (CPU-sized), condcbnt (published
CondCBNT), condcbnt-fast (CPU-sized), auto (naf or condcbnt on CUDA, the -fast one on CPU)."""


@dataclass
class FitArgs(RunOptions, FitConfig):
    """Per-scan fitting of a neural field (NAF, or CondCBNT with a pretrained backbone)."""


def base_config(preset: str, config: Path | None, device: str = "auto", method: str | None = None,
                backbone: Path | None = None) -> FitConfig:
    """Defaults, then the preset, then (condcbnt) the sizes stored in the backbone file, then a
    YAML config. ``method``/``backbone``: the command-line values, if given."""
    cfg = FitConfig()
    extra = load_yaml(config) if config is not None else {}
    name = presets.resolve(preset, device, method or extra.get("method") or "naf")
    if name is not None:
        data = presets.load(name)
        data.pop("pretrain", None)  # read by 'nfrecon pretrain' only
        cfg = merge(cfg, data, str(presets.CONFIG_DIR / f"{name}.yaml"))
    backbone = backbone or extra.get("backbone") or cfg.backbone
    if (method or extra.get("method") or cfg.method) == "condcbnt" and backbone is not None:
        file = read_backbone(backbone)
        sizes = {"condcbnt": {"backbone": to_dict(file.backbone), "modulation": to_dict(file.modulation)}}
        cfg = merge(cfg, sizes, str(backbone))
    if config is not None:
        cfg = merge(cfg, extra, str(config))
    return cfg


def _fields(cfg: FitConfig) -> dict:
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(FitConfig)}


def main(argv: list[str], prog: str) -> int:
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--preset", default="auto")
    pre.add_argument("--config", type=Path, default=None)
    pre.add_argument("--device", default="auto")
    pre.add_argument("--method", default=None)
    pre.add_argument("--backbone", type=Path, default=None)
    known, _ = pre.parse_known_args(argv)
    base = base_config(known.preset, known.config, known.device, known.method, known.backbone)
    default = FitArgs(**_fields(base), preset=known.preset, config=known.config)
    args = parse(FitArgs, argv, prog, DESCRIPTION, default=default)
    cfg = FitConfig(**_fields(args))
    name = presets.resolve(args.preset, cfg.device, cfg.method)
    model = f"backbone {cfg.backbone}, " if cfg.method == "condcbnt" else ""
    print(f"fit: {cfg.method}, preset {name or 'none'}, {model}{cfg.steps} steps, {cfg.sampling.rays_per_step} rays x "
          f"{cfg.sampling.n_samples} samples per step, scan {cfg.scan or 'built-in phantom'}, out {cfg.out}")
    result = run_fit(cfg, resume=args.resume, overwrite=args.overwrite)
    m = result.metrics
    stop = f"stopped automatically at step {result.steps_run}" if result.stopped_early else f"ran {result.steps_run} steps"
    print(f"{stop}; exported the state of step {m['exported_step']}")
    if "holdout_rmse" in m:
        print(f"held-out projection error: RMSE {m['holdout_rmse']:.4g} (line integrals), relative {m['holdout_rel_l2']:.3%}")
    if "vs_ground_truth" in m:
        g = m["vs_ground_truth"]
        print(f"vs ground truth: PSNR {g['psnr_db']:.2f} dB, SSIM(3D) {g['ssim_3d']:.3f} (data range {g['data_range']:.4g}/mm)")
    print(f"outputs in {cfg.out}/: volume.nii.gz, preview.png, metrics.json, config.yaml, checkpoint.pt, tb/")
    return 0


