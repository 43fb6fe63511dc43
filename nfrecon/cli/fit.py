"""``nfrecon fit``: per-scan fitting of a neural field (NAF, or CondCBNT over a pretrained backbone)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

import tyro

from nfrecon.cli.common import RunOptions, parse, preset_help
from nfrecon.fit import presets
from nfrecon.fit.config import FitConfig
from nfrecon.fit.run import run_fit
from nfrecon.outputs.results import VOLUME_FILES

DESCRIPTION = """Fit a neural attenuation field to a scan by differentiable ray marching, then export
<out>/volume.nii.gz (or volume.mha with --output.format mha), preview.png, metrics.json (held-out
projection error; PSNR/SSIM when the scan has a ground truth), config.yaml (re-usable with --config),
checkpoint.pt and TensorBoard logs in <out>/tb. Without --scan, the built-in Shepp-Logan phantom is
simulated (64^3, 50 noisy views over 205 deg) and fitted.
--method naf (default): a fresh hash grid + MLP (NAF). --method condcbnt --backbone backbone.pt:
a fresh modulation field over a backbone pretrained by 'nfrecon pretrain' (frozen; with
--condcbnt.unfreeze-after K also fitted from step K at --condcbnt.backbone-lr).
Options are applied in order: defaults < --preset < (condcbnt: the backbone and modulation
sizes stored in backbone.pt) < --config < command-line flags.

{presets}"""

AUTO = "naf (condcbnt with --method condcbnt) on CUDA, its -fast variant on a CPU"


@dataclass
class FitCommand:
    """The options of 'nfrecon fit': the fit's config and how the run starts, both without a
    prefix (``--steps``, ``--sampling.rays-per-step``, ``--preset``, ``--resume``)."""

    fit: Annotated[FitConfig, tyro.conf.arg(name="")] = field(default_factory=FitConfig)
    run: Annotated[RunOptions, tyro.conf.arg(name="")] = field(default_factory=RunOptions)


def description() -> str:
    return DESCRIPTION.format(presets=preset_help(presets.names(), AUTO))


def main(argv: list[str], prog: str) -> int:
    choices = presets.layer_choices(argv)
    layered = presets.fit_config(**choices)
    default = FitCommand(fit=layered.config, run=RunOptions.given(choices))
    args = parse(FitCommand, argv, prog, description(), default=default)
    cfg = args.fit
    model = f"backbone {cfg.backbone}, " if cfg.method == "condcbnt" else ""
    print(f"fit: {cfg.method}, preset {layered.preset_name}, {model}{cfg.steps} steps, "
          f"{cfg.sampling.rays_per_step} rays x {cfg.sampling.n_samples} samples per step, "
          f"scan {cfg.scan or 'built-in phantom'}, out {cfg.out}")
    result = run_fit(cfg, resume=args.run.resume, overwrite=args.run.overwrite)
    m = result.metrics
    stop = (f"stopped automatically at step {result.steps_run}" if result.stopped_early
            else f"ran {result.steps_run} steps")
    print(f"{stop}; exported the state of step {m['exported_step']}")
    if "holdout_rmse" in m:
        print(f"held-out projection error: RMSE {m['holdout_rmse']:.4g} (line integrals), "
              f"relative {m['holdout_rel_l2']:.3%}")
    if "vs_ground_truth" in m:
        g = m["vs_ground_truth"]
        print(f"vs ground truth: PSNR {g['psnr_db']:.2f} dB, SSIM(3D) {g['ssim_3d']:.3f} "
              f"(data range {g['data_range']:.4g}/mm)")
    print(f"outputs in {cfg.out}/: {VOLUME_FILES[cfg.output.format]}, preview.png, metrics.json, config.yaml, "
          "checkpoint.pt, tb/")
    return 0


