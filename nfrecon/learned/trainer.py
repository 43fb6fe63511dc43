"""Training a learned reconstructor on (scan, ground truth) pairs of one protocol.

- Data: the ``--scans`` population less the ``--exclude-ct`` CTs (as in pretraining,
  :mod:`nfrecon.fit.pretrain.scans`); ``val_count`` scans, evenly spaced through the list,
  are held out for validation. Every scan needs a ground truth and the protocol and grid of
  the first (:func:`~nfrecon.learned.modelfile.protocol_signature`). Each scan's normalised
  operator and FDK are prepared once (:mod:`nfrecon.learned.operator`).
- Step: one training scan per process, drawn by ``(seed, step, rank)`` (no generator state
  to save); loss = mean squared error of the normalised volume (units of ``MU_SCALE``)
  against the ground truth; gradients averaged over processes (DDP through torchrun, as
  ``nfrecon pretrain``); Adam with a cosine decay of the rate to 1/10 over ``steps``.
- Validation every ``val_every`` steps and at the end: mean loss and PSNR (dB, data range the
  ground truth's maximum) over the validation scans; model.pt is rewritten whenever the
  validation loss is the lowest so far (without validation scans: the last weights).
- Files in ``out``: checkpoint.pt (kind ``learned``; step, config, weights, Adam state, best
  validation, history, seconds; every ``checkpoint_every`` steps, at the end and on Ctrl-C or
  SIGTERM; resuming continues bit for bit on the CPU), model.pt, config.yaml, history.csv
  (step, loss, val_loss, val_psnr_db, lr, seconds), summary.json, preview.png (the first
  validation scan) and tb/ (train/loss, train/lr, val/loss, val/psnr_db, val slices).
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from nfrecon.configio import dump_yaml, to_dict
from nfrecon.errors import InputError
from nfrecon.fit.checkpoint import (
    CHECKPOINT_FORMAT,
    load_checkpoint,
    require_kind,
    require_same_config,
    save_checkpoint,
    state_must_fit,
)
from nfrecon.fit.distributed import Dist, init_distributed
from nfrecon.fit.pretrain.scans import read_training_scan, training_population
from nfrecon.fit.signals import Interrupted, StopRequest
from nfrecon.fsutil import atomic_write_text, check_output_dir
from nfrecon.learned.config import LearnedConfig
from nfrecon.learned.modelfile import build_network, protocol_signature, save_model, signature_difference
from nfrecon.learned.operator import MU_SCALE, ScanOperator, operator_of_scan
from nfrecon.metrics import psnr
from nfrecon.outputs.preview import save_preview
from nfrecon.outputs.progress import progress
from nfrecon.outputs.tensorboard import TBLogger

CHECKPOINT, MODEL, HISTORY, SUMMARY = "checkpoint.pt", "model.pt", "history.csv", "summary.json"
TRAIN_KIND = "learned"
COLUMNS = ("step", "loss", "val_loss", "val_psnr_db", "lr", "seconds")
# what a resumed run must share with its checkpoint
RESUME_KEYS = ("method", "lpd", "unet", "seed", "lr", "steps", "val_count")


@dataclass
class Pair:
    """One scan ready for training: its file, operator, normalised ground truth, grid."""

    path: Path
    op: ScanOperator
    target: torch.Tensor
    gt: np.ndarray
    vol_geom: object


@dataclass
class TrainResult:
    summary: dict
    steps_run: int
    seconds: float


def validation_indices(n: int, count: int) -> list[int]:
    """``count`` indices evenly spaced through ``range(n)`` (the validation scans)."""
    if count == 0:
        return []
    if count >= n:
        raise InputError(f"--val-count {count}: leaves no training scan of the {n} given")
    return sorted({int((k + 0.5) * n / count) for k in range(count)})


def learning_rate(cfg: LearnedConfig, step: int) -> float:
    """Cosine decay from ``lr`` to ``lr / 10`` over the steps."""
    return cfg.lr * (0.1 + 0.45 * (1.0 + math.cos(math.pi * step / cfg.steps)))


def _pairs(paths: list[Path], device: torch.device, backend: str) -> tuple[list[Pair], dict]:
    pairs, signature = [], None
    for path in paths:
        scan = read_training_scan(path, "voxels")
        sig = protocol_signature(scan.geom, scan.recon_geom)
        if signature is None:
            signature = sig
        elif (diff := signature_difference(signature, sig)) is not None:
            raise InputError(f"{path}: another protocol or grid than {paths[0]} "
                             f"({diff.replace('the model', 'the first scan')}); train one model per protocol")
        if scan.gt_geom != scan.recon_geom:
            raise InputError(f"{path}: the ground truth is not on the reconstruction grid")
        op = operator_of_scan(scan, device, backend)
        target = torch.as_tensor(scan.gt, device=device) / MU_SCALE
        pairs.append(Pair(Path(path), op, target, scan.gt, scan.recon_geom))
    return pairs, signature


def _write_history(out: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out / HISTORY, buf.getvalue())


class Trainer:
    """One training run (module docstring); :meth:`run` does it."""

    def __init__(self, cfg: LearnedConfig, d: Dist):
        self.cfg, self.d = cfg, d
        population = training_population(cfg.scans, cfg.exclude_ct)
        val = validation_indices(len(population.paths), cfg.val_count)
        self.population = population
        self.names = [str(Path(p).resolve()) for p in population.paths]
        if d.is_main:
            print(f"train-learned: preparing {len(population.paths)} scans (operators, FDK)", flush=True)
        pairs, self.signature = _pairs(population.paths, d.device, cfg.backend)
        self.val = [pairs[i] for i in val]
        self.train = [p for i, p in enumerate(pairs) if i not in set(val)]
        torch.manual_seed(cfg.seed)
        self.net_cfg = cfg.lpd if cfg.method == "lpd" else cfg.unet
        self.net = build_network(cfg.method, self.net_cfg).to(d.device)
        self.opt = torch.optim.Adam(self.net.parameters(), lr=cfg.lr)
        self.step, self.seconds, self.history = 0, 0.0, []
        self.best = {"val_loss": None, "step": None, "val_psnr_db": None}

    # ------------------------------------------------------------------ state
    def state(self) -> dict:
        return {"format": CHECKPOINT_FORMAT, "kind": TRAIN_KIND, "step": self.step, "config": to_dict(self.cfg),
                "scans": self.names, "model": self.net.state_dict(), "optimizer": self.opt.state_dict(),
                "best": dict(self.best), "history": list(self.history), "seconds": self.seconds,
                "world_size": self.d.world_size}

    def restore(self, out: Path) -> None:
        path = out / CHECKPOINT
        state = load_checkpoint(path)
        require_kind(path, state, TRAIN_KIND, "a train-learned checkpoint")
        now = to_dict(self.cfg)
        require_same_config(path, {k: state["config"].get(k) for k in RESUME_KEYS}, {k: now[k] for k in RESUME_KEYS})
        if state["scans"] != self.names:
            raise InputError(f"{path}: checkpoint was made with other scans ({len(state['scans'])} then, "
                             f"{len(self.names)} now)")
        if state["world_size"] != self.d.world_size:
            raise InputError(f"{path}: checkpoint was made with {state['world_size']} processes, "
                             f"{self.d.world_size} now; resume with as many")
        with state_must_fit(path, "checkpoint does not fit this network"):
            self.net.load_state_dict(state["model"])
            self.opt.load_state_dict(state["optimizer"])
        self.step, self.seconds = int(state["step"]), float(state["seconds"])
        self.best, self.history = dict(state["best"]), list(state["history"])

    def save(self, out: Path) -> None:
        if self.d.is_main:
            save_checkpoint(out / CHECKPOINT, self.state())
            _write_history(out, self.history)

    def publish(self, out: Path) -> None:
        """model.pt with the current weights (rank 0)."""
        if self.d.is_main:
            save_model(out / MODEL, self.cfg.method, self.net_cfg, self.net, self.signature, step=self.step,
                       val_loss=self.best["val_loss"], val_psnr_db=self.best["val_psnr_db"],
                       n_scans=len(self.train), training_cts=self.population.training_cts,
                       held_out_cts=self.population.held_out)

    # ------------------------------------------------------------------ steps
    def train_step(self) -> float:
        rng = np.random.default_rng([self.cfg.seed, self.step, self.d.rank])
        pair = self.train[int(rng.integers(len(self.train)))]
        lr = learning_rate(self.cfg, self.step)
        for group in self.opt.param_groups:
            group["lr"] = lr
        self.net.train()
        self.opt.zero_grad(set_to_none=False)
        loss = torch.mean((self.net(pair.op) - pair.target) ** 2)
        loss.backward()
        scale = torch.tensor([float(loss.detach())], dtype=torch.float64, device=self.d.comm_device)
        self.d.all_reduce(scale)
        if self.d.world_size > 1:
            for p in self.net.parameters():
                grad = p.grad.to(self.d.comm_device)
                self.d.all_reduce(grad)
                p.grad.copy_(grad / self.d.world_size)
        self.opt.step()
        self.step += 1
        return float(scale[0]) / self.d.world_size

    @torch.no_grad()
    def validate(self) -> tuple[float, float, np.ndarray | None]:
        """(mean loss, mean PSNR dB) over the validation scans (all ranks), rank's first volume."""
        self.net.eval()
        sums = torch.zeros(3, dtype=torch.float64, device=self.d.comm_device)
        first = None
        for k in range(self.d.rank, len(self.val), self.d.world_size):
            pair = self.val[k]
            pred = self.net(pair.op)
            sums[0] += float(torch.mean((pred - pair.target) ** 2))
            volume = (pred * MU_SCALE).cpu().numpy()
            sums[1] += psnr(volume, pair.gt)
            sums[2] += 1
            first = volume if first is None else first
        self.d.all_reduce(sums)
        return float(sums[0] / sums[2]), float(sums[1] / sums[2]), first

    # ------------------------------------------------------------------ run
    def run(self, out: Path, resume: bool) -> TrainResult:
        cfg, d = self.cfg, self.d
        if resume:
            self.restore(out)
        if d.is_main:
            out.mkdir(parents=True, exist_ok=True)
            dump_yaml(cfg, out / "config.yaml")
        start_step, t0 = self.step, time.perf_counter()
        base_seconds = self.seconds
        tb = TBLogger(out / "tb") if cfg.tensorboard and d.is_main else None
        bar = progress(cfg.steps, desc=f"train {cfg.method}", unit="step", initial=self.step,
                       disable=not (cfg.progress and d.is_main))
        losses: list[float] = []
        try:
            with StopRequest() as stop:
                while self.step < cfg.steps:
                    losses.append(self.train_step())
                    self.seconds = base_seconds + time.perf_counter() - t0
                    bar.update(1)
                    bar.set_postfix(loss=f"{losses[-1]:.4g}")
                    last = self.step == cfg.steps
                    if self.step % cfg.val_every == 0 or last:
                        self._log(out, tb, losses)
                        losses = []
                    if self.step % cfg.checkpoint_every == 0 or last:
                        self.save(out)
                    if any(d.all_gather_object(stop.requested)) and self.step < cfg.steps:
                        self.save(out)
                        raise Interrupted(out / CHECKPOINT, self.step, stop.signum)
        finally:
            bar.close()
            if tb is not None:
                tb.close()
        if self.best["val_loss"] is None:
            self.publish(out)
        summary = {"method": cfg.method, "steps": self.step, "train_scans": len(self.train),
                   "val_scans": len(self.val), "best": self.best, "seconds": self.seconds,
                   "seconds_per_step": self.seconds / max(1, self.step), "processes": d.world_size,
                   "parameters": sum(p.numel() for p in self.net.parameters()), "protocol": self.signature,
                   "training_cts": [c["name"] for c in self.population.training_cts],
                   "held_out_cts": [c["name"] for c in self.population.held_out]}
        if d.is_main:
            atomic_write_text(out / SUMMARY, json.dumps(summary, indent=1) + "\n")
        return TrainResult(summary, self.step - start_step, time.perf_counter() - t0)

    def _log(self, out: Path, tb: TBLogger | None, losses: list[float]) -> None:
        row = {"step": self.step, "loss": float(np.mean(losses)) if losses else None, "val_loss": None,
               "val_psnr_db": None, "lr": learning_rate(self.cfg, self.step - 1), "seconds": self.seconds}
        if self.val:
            row["val_loss"], row["val_psnr_db"], volume = self.validate()
            if self.best["val_loss"] is None or row["val_loss"] < self.best["val_loss"]:
                self.best = {"val_loss": row["val_loss"], "step": self.step, "val_psnr_db": row["val_psnr_db"]}
                self.publish(out)
            if self.d.is_main and volume is not None:
                save_preview(out / "preview.png", volume, self.val[0].vol_geom,
                             title=f"{self.cfg.method} step {self.step}: {row['val_psnr_db']:.2f} dB")
                if tb is not None:
                    tb.slices("val", volume, self.step, self.val[0].vol_geom)
        self.history.append(row)
        if tb is not None:
            for key in ("loss", "lr"):
                if row[key] is not None:
                    tb.scalar(f"train/{key}", row[key], self.step)
            if row["val_loss"] is not None:
                tb.scalar("val/loss", row["val_loss"], self.step)
                tb.scalar("val/psnr_db", row["val_psnr_db"], self.step)


def run_training(cfg: LearnedConfig, resume: bool = False, overwrite: bool = False) -> TrainResult:
    """Train (or resume) the learned reconstructor of ``cfg`` into ``cfg.out``."""
    out = Path(cfg.out)
    check_output_dir(out)
    if (out / CHECKPOINT).exists() and not (resume or overwrite):
        raise InputError(f"--out {out}: holds an earlier run (checkpoint.pt); pass --resume to continue it "
                         f"or --overwrite to start over")
    if resume and not (out / CHECKPOINT).is_file():
        raise InputError(f"--resume: {out / CHECKPOINT} not found")
    d = init_distributed(cfg.device)
    try:
        if overwrite and not resume and d.is_main:
            for name in (MODEL, HISTORY, SUMMARY, CHECKPOINT):
                (out / name).unlink(missing_ok=True)
        return Trainer(cfg, d).run(out, resume)
    finally:
        d.close()
