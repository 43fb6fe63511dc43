"""Entry point of per-scan fitting: check the run folder, read (or simulate) the scan, build
the model, run the loop.

The pieces live next door: :mod:`~nfrecon.fit.inputs` (scan files, the built-in phantom),
:mod:`~nfrecon.fit.scan_stats` (attenuation range), :mod:`~nfrecon.fit.models` (fresh
fields), :mod:`~nfrecon.fit.loop` (the fitting loop and its outputs).
"""

from __future__ import annotations

from pathlib import Path

import torch

from nfrecon.configio import dump_yaml
from nfrecon.data.scan import Scan
from nfrecon.devices import resolve_device
from nfrecon.errors import InputError
from nfrecon.fields.base import use_backend
from nfrecon.fit.config import FitConfig
from nfrecon.fit.inputs import read_scan
from nfrecon.fit.loop import FitResult, FitRun
from nfrecon.fit.models import build_model
from nfrecon.fsutil import check_output_dir
from nfrecon.ops.backend import resolve_backend


def prepare_run_folder(out: Path, resume: bool, overwrite: bool) -> None:
    """Refuse an output folder that cannot be written, or that holds an earlier run unless
    asked to resume it or start over (before any work)."""
    check_output_dir(out)
    ckpt = out / "checkpoint.pt"
    if resume and not ckpt.is_file():
        raise InputError(f"{ckpt}: nothing to resume (no checkpoint in {out})")
    if not resume and ckpt.is_file() and not overwrite:
        raise InputError(f"{out}: holds a run already (checkpoint.pt); "
                         "use --resume to continue it or --overwrite to start over")


def run_fit(cfg: FitConfig, scan: Scan | None = None, *, resume: bool = False, overwrite: bool = False,
            on_step=None) -> FitResult:
    """Fit the field of ``cfg`` to ``scan`` (default: read ``cfg.scan``, or simulate the
    built-in phantom); outputs land in ``cfg.out``.

    ``on_step(run)`` is called after every step with the :class:`FitRun` (e.g. to record
    quality over time in benchmarks).
    """
    if cfg.method == "condcbnt":
        cfg.require_backbone()  # before any work
    out = Path(cfg.out)
    prepare_run_folder(out, resume, overwrite)
    device = resolve_device(cfg.device)
    backend = resolve_backend(cfg.backend, device)
    if scan is None:
        scan = read_scan(cfg.scan, cfg.seed)
    scan.require_recon_grid(cfg.scan or "built-in phantom")
    torch.manual_seed(cfg.seed)
    model, groups = build_model(cfg, scan)
    use_backend(model, backend)
    run = FitRun(model, scan, cfg, device, param_groups=groups)
    out.mkdir(parents=True, exist_ok=True)
    dump_yaml(cfg, out / "config.yaml")
    return run.run(resume=resume, on_step=on_step)
