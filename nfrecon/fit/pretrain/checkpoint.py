"""The files a pretraining run resumes from, and the backbone it publishes.

Written every ``checkpoint_every`` steps, at the end and on Ctrl-C/SIGTERM, all through
:func:`nfrecon.fit.checkpoint.save_checkpoint` (atomic, checksummed):

- ``modulations-<step:08d>/<index:05d>.pt`` (kind ``modulation``): one file per scan (its
  ``name``, the absolute path; ``step``; the modulation field's ``state`` and its Adam
  ``optimizer`` state), written by the rank that owns the scan: no gathering to rank 0
  (published sizes are ~100 MB per scan with Adam), and any number of processes can
  resume them;
- ``checkpoint.pt`` (kind ``pretrain``): step, resolved config, scan list, skipped scans,
  world size, mu_max (1/mm), backbone config + weights + Adam state, the name of the
  modulations folder and the training seconds so far. Rank 0 writes it only after every
  rank has written its modulation files, then removes older modulation folders, so the
  pair on disk is always complete;
- ``backbone.pt`` (:mod:`nfrecon.fit.backbone`): the backbone alone, what
  ``nfrecon fit --method condcbnt --backbone`` takes.

Resuming needs the same model, data, seed and sampling (or points per step) config and the
same scans in the same order. ``NFRECON_PRETRAIN_DUMP=<folder>`` makes every rank write its
own backbone and modulations there (kind ``dump``, ``rank<r>-<tag>.pt``), for tests of the
synchronisation across ranks.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

from nfrecon.configio import to_dict
from nfrecon.errors import InputError
from nfrecon.fit.checkpoint import (
    CHECKPOINT_FORMAT,
    load_checkpoint,
    require_kind,
    require_same_config,
    save_checkpoint,
    state_must_fit,
)
from nfrecon.fit.config import PretrainConfig
from nfrecon.fit.pretrain.history import HISTORY, SUMMARY

PRETRAIN_KIND = "pretrain"
MODULATION_KIND = "modulation"
DUMP_KIND = "dump"
DUMP_ENV = "NFRECON_PRETRAIN_DUMP"
CHECKPOINT = "checkpoint.pt"
BACKBONE = "backbone.pt"
MODULATIONS_GLOB = "modulations-*"


def modulations_folder(step: int) -> str:
    """Name of the folder of the modulation files of ``step``."""
    return f"modulations-{step:08d}"


def modulation_path(folder: Path, index: int) -> Path:
    """The file of the scan with ``index`` (in the --scans list) in a modulations folder."""
    return folder / f"{index:05d}.pt"


def save_modulation(folder: Path, index: int, name: str, step: int, modulation: torch.nn.Module,
                    opt: torch.optim.Optimizer) -> None:
    save_checkpoint(modulation_path(folder, index), {
        "format": CHECKPOINT_FORMAT, "kind": MODULATION_KIND, "name": name, "step": step,
        "state": modulation.state_dict(), "optimizer": opt.state_dict(),
    })


def restore_modulation(folder: Path, index: int, name: str, modulation: torch.nn.Module,
                       opt: torch.optim.Optimizer) -> None:
    """Load the modulation and Adam state of scan ``index`` (which must be ``name``)."""
    path = modulation_path(folder, index)
    part = load_checkpoint(path)
    if part.get("name") != name:
        raise InputError(f"{path}: holds the modulation of {part.get('name')!r}, expected {name!r}")
    modulation.load_state_dict(part["state"])
    opt.load_state_dict(part["optimizer"])


def save_pretrain_state(out: Path, state: dict, keep: str) -> None:
    """Write ``checkpoint.pt`` (``state`` with format and kind), then remove every modulations
    folder but ``keep`` (rank 0, once every rank has written its modulation files)."""
    save_checkpoint(out / CHECKPOINT, {"format": CHECKPOINT_FORMAT, "kind": PRETRAIN_KIND, **state})
    for old in out.glob(MODULATIONS_GLOB):
        if old.name != keep and old.is_dir():
            shutil.rmtree(old, ignore_errors=True)


def read_resume_state(out: Path, cfg: PretrainConfig) -> dict:
    """The checkpoint.pt of ``out``, refused unless made with the same model, data, seed and
    sampling (projections) or points per step (voxels) as ``cfg``."""
    path = out / CHECKPOINT
    state = load_checkpoint(path)
    require_kind(path, state, PRETRAIN_KIND, "a pretraining checkpoint")
    keys = ("model", "data", "seed", "sampling" if cfg.data == "projections" else "points_per_step")
    now = to_dict(cfg)
    require_same_config(path, {k: state["config"].get(k) for k in keys}, {k: now[k] for k in keys})
    return state


def check_resume_scans(out: Path, state: dict, names: list[str]) -> None:
    """The scans in use must be those (and in the order) of the checkpoint."""
    if state["scans"] != names:
        missing = sorted(set(state["scans"]) ^ set(names))
        raise InputError(f"{out / CHECKPOINT}: checkpoint was made with other scans "
                         f"({len(state['scans'])} then, {len(names)} now; "
                         f"e.g. {missing[0] if missing else 'another order'})")


def restore_backbone(out: Path, state: dict, backbone: torch.nn.Module, opt: torch.optim.Optimizer) -> None:
    with state_must_fit(out / CHECKPOINT, "checkpoint does not fit this backbone"):
        backbone.load_state_dict(state["backbone"])
        opt.load_state_dict(state["backbone_optimizer"])


def clear_earlier_run(out: Path) -> None:
    """Remove what an earlier run left in ``out`` besides checkpoint.pt (which a new run
    overwrites), so that none of it is mistaken for this run's (--overwrite)."""
    for old in out.glob(MODULATIONS_GLOB):
        shutil.rmtree(old, ignore_errors=True)
    for name in (BACKBONE, HISTORY, SUMMARY):
        (out / name).unlink(missing_ok=True)


def dump(rank: int, tag: str, step: int, backbone: torch.nn.Module, modulations: dict[str, torch.nn.Module]) -> None:
    """Test hook: this rank's backbone and modulations into $NFRECON_PRETRAIN_DUMP (if set)."""
    folder = os.environ.get(DUMP_ENV)
    if folder:
        save_checkpoint(Path(folder) / f"rank{rank}-{tag}.pt", {
            "format": CHECKPOINT_FORMAT, "kind": DUMP_KIND, "step": step, "rank": rank,
            "backbone": backbone.state_dict(),
            "modulations": {name: m.state_dict() for name, m in modulations.items()},
        })
