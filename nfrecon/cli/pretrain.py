"""``nfrecon pretrain``: pretrain a CondCBNT backbone across scans, alone or data-parallel (DDP)."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass, field
from typing import Annotated

import tyro

from nfrecon.cli.common import RunOptions, parse, preset_help
from nfrecon.errors import InputError
from nfrecon.fit import presets
from nfrecon.fit.config import PretrainConfig
from nfrecon.fit.distributed import launched_by_torchrun, torchrun_command
from nfrecon.fit.pretrain import run_pretrain, training_population

DESCRIPTION = """Pretrain the shared backbone of CondCBNT together with one modulation field per
training scan (auto-decoding), on the scans' projections (rays, MSE on line integrals; the
paper's setting) or, with --data voxels, on their ground truths (faster). Scans may differ in
geometry and grid. Outputs in --out: backbone.pt (pass it to 'nfrecon fit --method condcbnt
--backbone'), checkpoint.pt with modulations-<step>/ (for --resume), config.yaml, history.csv,
summary.json and TensorBoard logs in tb/.
Several processes (PyTorch DDP; NCCL on GPUs, gloo on CPUs): '--nproc N' starts N processes on
this machine through torchrun; or start them yourself, also across machines, e.g.
'torchrun --nnodes 2 --node-rank R --master-addr HOST --master-port 29500 --nproc-per-node 8
-m nfrecon pretrain ...' (the output folder must then be shared). Rank r fits scans r, r+N, ...;
the backbone is synchronised, each scan's modulation lives on its rank; rank 0 writes.
Ctrl-C or SIGTERM: every process writes the checkpoint at the same step and stops.
Options are applied in order: defaults < --preset < --config < command-line flags. A preset
gives the model sizes (its condcbnt.backbone/modulation), the sampling and its pretrain section.

{presets}"""

AUTO = "condcbnt on CUDA, condcbnt-fast on a CPU"

# the options that choose the layers of a pretraining config (it has no --method or --backbone)
LAYER_OPTIONS = ("preset", "config", "device")


@dataclass
class PretrainCommand:
    """The options of 'nfrecon pretrain': the pretraining config, how the run starts and how many
    processes, all without a prefix (``--steps``, ``--optim.backbone-lr``, ``--preset``)."""

    pretrain: Annotated[PretrainConfig, tyro.conf.arg(name="")] = field(default_factory=PretrainConfig)
    run: Annotated[RunOptions, tyro.conf.arg(name="")] = field(default_factory=RunOptions)
    nproc: int = 0
    """Start this many processes on this machine through torchrun (0: run in this process, or
    as one rank of the torchrun job that started it)."""


def description() -> str:
    return DESCRIPTION.format(presets=preset_help(presets.pretraining_names(), AUTO))


def _without_nproc(argv: list[str]) -> list[str]:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            out.append(a)
    return out


def main(argv: list[str], prog: str) -> int:
    choices = presets.layer_choices(argv, LAYER_OPTIONS)
    layered = presets.pretrain_config(**choices)
    default = PretrainCommand(pretrain=layered.config, run=RunOptions.given(choices))
    args = parse(PretrainCommand, argv, prog, description(), default=default)
    cfg = args.pretrain
    if args.nproc < 0:
        raise InputError(f"--nproc: must be >= 0, got {args.nproc}")
    if args.nproc > 0:
        if launched_by_torchrun():
            raise InputError("--nproc: this process was started by torchrun already; leave --nproc out")
        training_population(cfg.scans, cfg.exclude_ct)  # fail here, before starting processes
        cmd = torchrun_command(args.nproc, ["pretrain", *_without_nproc(argv)])
        print(f"pretrain: starting {args.nproc} processes: {' '.join(cmd)}", flush=True)
        return subprocess.run(cmd, env=os.environ.copy(), check=False).returncode
    main_rank = int(os.environ.get("RANK", "0")) == 0
    if main_rank:
        where = f"{os.environ['WORLD_SIZE']} processes" if launched_by_torchrun() else "1 process"
        print(f"pretrain: preset {layered.preset_name}, {cfg.steps} steps on {cfg.data}, "
              f"{where}, out {cfg.out}", flush=True)
    result = run_pretrain(cfg, resume=args.run.resume, overwrite=args.run.overwrite)
    if main_rank:
        s = result.summary
        rate = s.get("rays_per_s", s.get("points_per_s"))
        unit = "rays" if "rays_per_s" in s else "points"
        final = "n/a" if s["final_loss"] is None else f"{s['final_loss']:.4g}"
        print(f"ran {result.steps_run} steps (to step {s['steps']}) on {s['scans']} scans in {result.seconds:.1f} s "
              f"({s['seconds_per_step'] * 1000:.1f} ms/step, {rate:.3g} {unit}/s); final loss {final}")
        if s["skipped"]:
            print(f"skipped {len(s['skipped'])} unusable scans (see summary.json)")
        print(f"outputs in {cfg.out}/: backbone.pt, checkpoint.pt, config.yaml, history.csv, summary.json, tb/")
    return 0
