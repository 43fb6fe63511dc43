"""What a pretraining run records besides its checkpoints (rank 0 writes, atomically).

- ``history.csv``: columns ``step, loss, backbone_lr, modulation_lr, seconds``; a row every
  ``log_every`` steps and at the last step. ``loss`` is the mean over ranks of each step's
  loss, averaged over the steps since the previous row (of this session); the learning
  rates are those of the row's last step; ``seconds`` is the training time so far, earlier
  sessions included. A resumed run keeps the rows up to its checkpoint's step.
- ``summary.json``: the run's totals (steps, scans, mu_max, final loss, seconds, rays or
  points per second over all ranks, parameter counts); see the trainer's ``run``.
- ``tb/`` (TensorBoard): ``train/loss``, ``train/backbone_lr``, ``train/items_per_s`` at
  every row; every ``preview_every`` steps, slices of rank 0's first scan evaluated on at
  most 64^3 voxels of its recon grid, and ``gt/psnr_db`` against its ground truth.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import torch

from nfrecon.data.resample import resample
from nfrecon.data.scan import Scan
from nfrecon.fields.base import evaluate_grid
from nfrecon.fields.conditioned import ConditionedField
from nfrecon.fsutil import atomic_write_text
from nfrecon.metrics import psnr
from nfrecon.outputs.tensorboard import TBLogger

HISTORY = "history.csv"
SUMMARY = "summary.json"
COLUMNS = ("step", "loss", "backbone_lr", "modulation_lr", "seconds")
PREVIEW_CELLS = 64  # TensorBoard previews are evaluated on at most 64^3 voxels


class History:
    """The rows of ``<out>/history.csv``, rewritten whole at every :meth:`add`."""

    def __init__(self, out: Path, step: int):
        """Start from the rows of an earlier session up to ``step`` (later rows belong to a
        session that was interrupted after its last checkpoint)."""
        self.path = out / HISTORY
        self.rows: list[list[str]] = []
        if step > 0 and self.path.is_file():
            rows = list(csv.reader(io.StringIO(self.path.read_text())))[1:]
            self.rows = [r for r in rows if r and int(r[0]) <= step]

    def add(self, step: int, loss: float, lrs: tuple[float, float], seconds: float) -> None:
        self.rows.append([str(step), f"{loss:.9g}", *(f"{lr:.6g}" for lr in lrs), f"{seconds:.3f}"])
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(COLUMNS)
        writer.writerows(self.rows)
        atomic_write_text(self.path, buf.getvalue())


def write_summary(out: Path, summary: dict) -> None:
    atomic_write_text(out / SUMMARY, json.dumps(summary, indent=2) + "\n")


def log_preview(log: TBLogger, backbone: torch.nn.Module, modulation: torch.nn.Module, scan: Scan, step: int) -> None:
    """Slices of the field of ``scan`` on a coarse copy of its grid, and its PSNR against the
    ground truth (when the scan has one)."""
    grid = scan.recon_geom
    coarse = grid.with_shape(tuple(min(n, PREVIEW_CELLS) for n in grid.shape))
    fld = ConditionedField(backbone, modulation, coarse)
    vol = evaluate_grid(fld, coarse).float().cpu().numpy()
    log.slices("volume", vol, step, coarse)
    if scan.gt is not None:
        log.scalar("gt/psnr_db", psnr(vol, np.asarray(resample(scan.gt, scan.gt_geom, coarse))), step)
