"""``nfrecon train-learned``: train a learned primal-dual or an FDK + 3D U-Net across scans."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass, field
from typing import Annotated

import tyro

from nfrecon.cli.common import parse
from nfrecon.cli.pretrain import _without_nproc
from nfrecon.errors import InputError
from nfrecon.fit.distributed import launched_by_torchrun, torchrun_command
from nfrecon.fit.pretrain import training_population
from nfrecon.learned.config import LearnedConfig
from nfrecon.learned.trainer import run_training

DESCRIPTION = """Train a learned reconstructor on simulated scans with ground truths (e.g. a population
from 'nfrecon make-dataset'), all of one protocol and grid: --method lpd, a learned primal-dual with
K unrolled iterations of our projector and its adjoint (reversible: training memory does not grow
with K), or --method unet, a 3D U-Net that cleans up the FDK volume. --exclude-ct holds CTs out
(leave-one-out); --val-count scans are held out for validation and model.pt keeps the best
validated weights. Outputs in --out: model.pt (pass it to 'nfrecon recon --model'), checkpoint.pt
(--resume continues bit for bit), config.yaml, history.csv, summary.json, preview.png, tb/.
'--nproc N' trains data-parallel in N processes through torchrun (as 'nfrecon pretrain')."""


@dataclass
class TrainLearnedCommand:
    """The options of 'nfrecon train-learned' (the training config without a prefix)."""

    train: Annotated[LearnedConfig, tyro.conf.arg(name="")] = field(default_factory=LearnedConfig)
    resume: bool = False
    """Continue the run in --out from its checkpoint (bit for bit)."""
    overwrite: bool = False
    """Start over in an --out that holds an earlier run."""
    nproc: int = 0
    """Start this many processes on this machine through torchrun (0: this process)."""


def main(argv: list[str], prog: str) -> int:
    args = parse(TrainLearnedCommand, argv, prog, DESCRIPTION)
    cfg = args.train
    if not cfg.scans:
        raise InputError("--scans: give the training scans (files, folders or .txt lists)")
    if args.nproc < 0:
        raise InputError(f"--nproc: must be >= 0, got {args.nproc}")
    if args.nproc > 0:
        if launched_by_torchrun():
            raise InputError("--nproc: this process was started by torchrun already; leave --nproc out")
        training_population(cfg.scans, cfg.exclude_ct)  # fail here, before starting processes
        cmd = torchrun_command(args.nproc, ["train-learned", *_without_nproc(argv)])
        print(f"train-learned: starting {args.nproc} processes: {' '.join(cmd)}", flush=True)
        return subprocess.run(cmd, env=os.environ.copy(), check=False).returncode
    result = run_training(cfg, resume=args.resume, overwrite=args.overwrite)
    if int(os.environ.get("RANK", "0")) == 0:
        s = result.summary
        best = s["best"]
        val = "" if best["val_loss"] is None else (
            f"; best validation at step {best['step']}: loss {best['val_loss']:.4g}, PSNR {best['val_psnr_db']:.2f} dB")
        print(f"trained {cfg.method}: {result.steps_run} steps (to step {s['steps']}) on {s['train_scans']} scans in "
              f"{result.seconds:.1f} s ({s['seconds_per_step']:.2f} s/step){val}")
        print(f"outputs in {cfg.out}/: model.pt, checkpoint.pt, config.yaml, history.csv, summary.json, tb/")
    return 0
