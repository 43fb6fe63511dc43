"""Pretraining of a CondCBNT backbone jointly with one modulation field per training scan.

Each step, every process draws one of *its* scans at random and fits the shared backbone
and that scan's modulation field to it: on projections (rays through the scan's views,
rendered by :class:`~nfrecon.render.raymarch.RayMarcher`, MSE on line integrals, as in
the paper) or on the ground truth (``data="voxels"``: mu at random voxel centres, MSE;
faster, needs ``gt`` in the scans). Scans keep their own geometry and grid: each scan's
box maps to the backbone's unit cube. Learning rates: Adam for the backbone and for each
modulation, one schedule; gradients are clipped per part (see below).

Scale-out (PyTorch DDP). Start N processes per machine with torchrun::

    torchrun --nproc-per-node 8 -m nfrecon pretrain --scans data/ --out runs/pre
    nfrecon pretrain --nproc 8 --scans data/ --out runs/pre      # the same, on one machine
    # several machines (run on each; the output folder must be on a shared file system):
    torchrun --nnodes 2 --node-rank R --master-addr HOST --master-port 29500 \\
        --nproc-per-node 8 -m nfrecon pretrain --scans data/ --out /shared/runs/pre
    # (or the elastic rendezvous: --rdzv-backend c10d --rdzv-endpoint HOST:29500 --rdzv-id JOB)

- Scans are sharded: rank r of N owns scans r, r+N, r+2N, ... of the (sorted) list, and
  only loads those. Its modulation fields and their optimisers live only on that rank.
- Only the backbone is wrapped in DistributedDataParallel: its gradient is averaged over
  the ranks during backward (bucketed, overlapping the backward pass) and DDP broadcasts
  rank 0's initial weights. Every backbone parameter is used in every forward pass, so
  ``find_unused_parameters`` stays off. The modulation fields are *not* in the DDP module:
  each rank's gradient for its scan's modulation stays local (wrapping them would
  all-reduce gradients that are zero on every other rank and demand that every rank hold
  every modulation).
- Gradient clipping is done separately for the backbone (its gradient is identical on
  every rank after DDP, so is its clipping factor, and the backbone replicas stay
  identical) and for the modulation (local); a joint norm would differ between ranks and
  make the replicas drift apart.
- NCCL on GPUs (one per process, ``cuda:LOCAL_RANK``), gloo on CPUs.
- One scalar all-reduce per step carries the loss (logged as the mean over ranks), a
  non-finite-loss flag (every rank stops with the same error) and a stop request
  (Ctrl-C / SIGTERM on any rank: every rank writes the checkpoint at the same step and
  exits).
- Randomness: each step's sampling generators are re-seeded from (seed, rank, step), so a
  resumed run draws exactly what the uninterrupted run would have drawn (no RNG state to
  save) and each modulation field is initialised from (seed, scan index) whatever rank owns it.

Outputs (rank 0 writes, atomically): ``config.yaml`` (resolved), ``history.csv`` (step,
mean loss, learning rates, seconds), ``tb/`` (TensorBoard), ``summary.json``, and every
``checkpoint_every`` steps, at the end and on Ctrl-C/SIGTERM:

- ``modulations-<step>/<index>.pt``: one file per scan (its modulation field and Adam
  state), written by the rank that owns it: no gathering to rank 0 (published sizes are
  ~100 MB per scan with Adam), any number of processes can resume them;
- ``checkpoint.pt``: step, config, scan list, mu_max, backbone config + weights + Adam
  state, and the name of the modulations folder. Written by rank 0 only after every rank
  has written its modulation files, then older modulation folders are removed, so the
  pair is always complete;
- ``backbone.pt``: the backbone alone (weights, config, mu_max, modulation config): what
  ``nfrecon fit --method condcbnt --backbone`` takes.

``--resume`` restores the step, backbone, every modulation and all Adam states exactly;
with the same number of processes the continuation is bit for bit that of the
uninterrupted run. Setting ``NFRECON_PRETRAIN_DUMP=<folder>`` makes every rank write its
own backbone and modulations there at the start (after resuming) and at the end
(``rank<r>-start.pt``, ``rank<r>-end.pt``), for tests of the synchronisation.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import shutil
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from nfrecon.configio import dump_yaml, to_dict
from nfrecon.data.resample import resample
from nfrecon.data.scan import Scan
from nfrecon.errors import InputError, first_of
from nfrecon.fields.base import evaluate_grid, use_backend
from nfrecon.fields.conditioned import Backbone, ConditionedField, ModulationField
from nfrecon.fit.backbone import save_backbone
from nfrecon.fit.checkpoint import CHECKPOINT_FORMAT, config_mismatches, load_checkpoint, save_checkpoint
from nfrecon.fit.config import PretrainConfig
from nfrecon.fit.distributed import Dist, init_distributed
from nfrecon.fit.loop import RaySource, lr_factor
from nfrecon.fit.run import estimate_mu_max, mean_attenuation, prepare_run_folder, read_scan
from nfrecon.fit.signals import Interrupted, StopRequest
from nfrecon.fsutil import atomic_write_text
from nfrecon.metrics import psnr
from nfrecon.ops.backend import resolve_backend
from nfrecon.outputs.progress import progress
from nfrecon.outputs.tensorboard import TBLogger
from nfrecon.render.raymarch import RayMarcher

SCAN_SUFFIXES = (".h5", ".hdf5", ".pickle", ".pkl")
DUMP_ENV = "NFRECON_PRETRAIN_DUMP"
PREVIEW_CELLS = 64  # TensorBoard previews are evaluated on at most 64^3 voxels


# ---------------------------------------------------------------------- inputs
def resolve_scan_paths(items: Sequence[str | os.PathLike]) -> list[Path]:
    """The training scan files: each item a scan file, a folder (its scan files, sorted)
    or a .txt list (one path a line, relative to the list's folder; # comments)."""
    out: list[Path] = []
    for item in map(Path, items):
        if item.is_dir():
            found = sorted(p for p in item.iterdir() if p.suffix.lower() in SCAN_SUFFIXES and p.is_file())
            if not found:
                raise InputError(f"{item}: no scan files ({', '.join(SCAN_SUFFIXES)}) in this folder")
            out += found
        elif item.suffix.lower() == ".txt" and item.is_file():
            lines = [ln.split("#")[0].strip() for ln in item.read_text().splitlines()]
            out += [p if p.is_absolute() else item.parent / p for p in map(Path, filter(None, lines))]
        elif item.is_file():
            out.append(item)
        else:
            raise InputError(f"{item}: no such file or folder")
    if not out:
        raise InputError("--scans: no training scans given")
    seen, unique = set(), []
    for p in out:
        key = os.path.normpath(p)
        if key in seen:
            raise InputError(f"{p}: listed twice in --scans")
        seen.add(key)
        unique.append(p)
    return unique


def _seed(*keys: int) -> int:
    """A well-mixed 63-bit seed from integers (numpy SeedSequence)."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1, np.uint64)[0]) >> 1


def _together(d: Dist, fn):
    """Run ``fn`` on every rank; an InputError on any rank is raised on all of them."""
    try:
        result, err = fn(), None
    except InputError as exc:
        result, err = None, str(exc)
    errors = [e for e in d.all_gather_object(err) if e]
    if errors:
        raise InputError(errors[0])
    return result


@dataclass
class _Item:
    """One training scan on this rank: its data, modulation field and optimiser."""

    index: int  # in the full --scans list
    name: str
    scan: Scan
    modulation: ModulationField
    field: ConditionedField
    opt: torch.optim.Adam
    targets: torch.Tensor  # CPU: flat projections (projections) or flat gt on the recon grid (voxels)
    marcher: RayMarcher | None = None
    rays: RaySource | None = None


@dataclass
class PretrainResult:
    steps_run: int
    history: list[tuple[int, float]]
    """(step, mean loss over ranks) at every log step of this session."""
    seconds: float
    """Wall time of this session's steps."""
    summary: dict


# ---------------------------------------------------------------------- the trainer
class Pretrainer:
    """One pretraining job on this rank; build with :func:`run_pretrain`."""

    def __init__(self, cfg: PretrainConfig, d: Dist, paths: list[Path], resume: bool):
        self.cfg, self.d, self.out = cfg, d, Path(cfg.out)
        self.device = d.device
        self.paths = paths
        self.stop = StopRequest()
        self.step = 0
        self.last_checkpoint = -1
        self.seconds_before = 0.0  # training time of earlier sessions (resumed runs)
        self.t0 = time.perf_counter()
        self.gen = torch.Generator()
        self.jitter_gen = torch.Generator(device=self.device)
        state = _together(d, lambda: self._read_resume_state()) if resume else None
        local, skipped = self._load_shard()
        self.skipped = skipped
        bad = {j for j, _ in skipped}
        self.names = [os.path.abspath(p) for i, p in enumerate(paths) if i not in bad]
        if state is not None:
            _together(d, lambda: self._check_resume_state(state))
        mu_max, mu0 = (float(state["mu_max"]), None) if state is not None else self._attenuation_range(local)
        torch.manual_seed(_seed(cfg.seed, 1))
        self.backbone = Backbone(cfg.model.backbone, mu_max)
        if mu0 is not None and cfg.model.backbone.mlp.out_activation == "sigmoid":
            self.backbone.start_near(mu0)
        self.backbone.to(self.device)
        self.kernels = resolve_backend(cfg.backend, self.device)
        use_backend(self.backbone, self.kernels)
        self.train_backbone = self.backbone
        if d.backend is not None:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.train_backbone = DistributedDataParallel(self.backbone, device_ids=ids)
        self.backbone_opt = torch.optim.Adam(self.backbone.parameters(), lr=cfg.optim.backbone_lr)
        self.items = [self._item(i, p, scan) for i, p, scan in local]
        self.lr_factor = lr_factor(cfg.steps, cfg.optim.schedule, cfg.optim.final_lr_ratio)
        if state is not None:
            self._restore(state)

    # ------------------------------------------------------------------ setup
    def _read_resume_state(self) -> dict:
        path = self.out / "checkpoint.pt"
        state = load_checkpoint(path)
        if state.get("kind") != "pretrain":
            raise InputError(f"{path}: not a pretraining checkpoint (kind {state.get('kind', 'fit')!r})")
        keys = ("model", "data", "seed", "sampling" if self.cfg.data == "projections" else "points_per_step")
        saved = {k: state["config"].get(k) for k in keys}
        now = {k: to_dict(self.cfg)[k] for k in keys}
        diff = config_mismatches(saved, now)
        if diff:
            raise InputError(f"{path}: checkpoint was made with another config: {first_of(diff)}")
        return state

    def _check_resume_state(self, state: dict) -> None:
        if state["scans"] != self.names:
            missing = sorted(set(state["scans"]) ^ set(self.names))
            raise InputError(f"{self.out / 'checkpoint.pt'}: checkpoint was made with other scans "
                             f"({len(state['scans'])} then, {len(self.names)} now; e.g. {missing[0] if missing else 'another order'})")

    def _load_shard(self) -> tuple[list[tuple[int, Path, Scan]], list[tuple[int, str]]]:
        """Read this rank's scans; every rank learns about every unreadable one."""
        local, bad = [], []
        for i in range(self.d.rank, len(self.paths), self.d.world_size):
            try:
                local.append((i, Path(os.path.abspath(self.paths[i])), self._read(self.paths[i])))
            except InputError as exc:
                bad.append((i, str(exc)))
        bad = sorted(b for part in self.d.all_gather_object(bad) for b in part)
        if bad and not self.cfg.skip_bad:
            more = f" ({len(bad)} unusable scans in all)" if len(bad) > 1 else ""
            raise InputError(f"{bad[0][1]}{more}; --skip-bad leaves out the scans that cannot be used")
        if bad and self.d.is_main:
            for _, message in bad:
                warnings.warn(f"skipping {message}", stacklevel=2)
        counts = self.d.all_gather_object(len(local))
        if min(counts) == 0:
            raise InputError(f"--scans: {sum(counts)} readable scans cannot feed {self.d.world_size} processes "
                             f"(rank {counts.index(0)} has none); start fewer processes")
        return local, bad

    def _read(self, path: Path) -> Scan:
        scan = read_scan(path)
        scan.require_recon_grid(path)
        if self.cfg.data == "voxels" and scan.gt is None:
            raise InputError(f"{path}: --data voxels needs a ground truth in every scan, this one has none "
                             f"(use --data projections)")
        scan.clean = None  # not used: keep only what training reads
        return scan

    def _attenuation_range(self, local) -> tuple[float, float]:
        """(mu_max, mean mu) over all scans: max of the per-scan ranges, mean of their means."""
        if self.cfg.mu_max > 0:
            top = self.cfg.mu_max
        elif self.cfg.data == "voxels":
            top = max(1.25 * float(np.percentile(scan.gt, 99.9)) for _, _, scan in local)
        else:
            top = max(estimate_mu_max(scan) for _, _, scan in local)
        stats = torch.tensor([sum(mean_attenuation(scan) for _, _, scan in local), len(local)],
                             dtype=torch.float64, device=self.d.comm_device)
        peak = torch.tensor([top], dtype=torch.float64, device=self.d.comm_device)
        self.d.all_reduce(stats)
        self.d.all_reduce(peak, op="max")
        if not math.isfinite(float(peak)) or float(peak) <= 0:
            raise InputError("cannot estimate the attenuation range of the scans; pass --mu-max")
        return float(peak), float(stats[0] / stats[1])

    def _item(self, index: int, path: Path, scan: Scan) -> _Item:
        cfg = self.cfg
        torch.manual_seed(_seed(cfg.seed, 2, index))
        modulation = ModulationField(cfg.model.modulation, self.backbone.film_widths).to(self.device)
        use_backend(modulation, self.kernels)
        field = ConditionedField(self.train_backbone, modulation, scan.recon_geom).to(self.device)
        opt = torch.optim.Adam(modulation.parameters(), lr=cfg.optim.modulation_lr)
        if cfg.data == "projections":
            marcher = RayMarcher(scan.geom, scan.recon_geom, cfg.sampling.n_samples, self.device)
            rays = RaySource(scan, np.arange(scan.geom.n_views), cfg.sampling, self.gen)
            targets = torch.as_tensor(scan.projections, dtype=torch.float32).reshape(-1)
            return _Item(index, str(path), scan, modulation, field, opt, targets, marcher, rays)
        gt = scan.gt if scan.gt_geom == scan.recon_geom else resample(scan.gt, scan.gt_geom, scan.recon_geom)
        targets = torch.as_tensor(np.asarray(gt), dtype=torch.float32).reshape(-1)
        return _Item(index, str(path), scan, modulation, field, opt, targets)

    def _restore(self, state: dict) -> None:
        try:
            self.backbone.load_state_dict(state["backbone"])
            self.backbone_opt.load_state_dict(state["backbone_optimizer"])
        except (RuntimeError, ValueError, KeyError) as exc:
            raise InputError(f"{self.out / 'checkpoint.pt'}: checkpoint does not fit this backbone "
                             f"({str(exc).splitlines()[0][:200]})") from exc
        folder = self.out / state["modulations"]
        for item in self.items:
            path = folder / f"{item.index:05d}.pt"
            part = load_checkpoint(path)
            if part.get("name") != item.name:
                raise InputError(f"{path}: holds the modulation of {part.get('name')!r}, expected {item.name!r}")
            item.modulation.load_state_dict(part["state"])
            item.opt.load_state_dict(part["optimizer"])
        self.step = self.last_checkpoint = int(state["step"])
        self.seconds_before = float(state.get("seconds", 0.0))

    # ------------------------------------------------------------------ checkpoints
    def checkpoint(self) -> None:
        """Collective: every rank writes its modulations, then rank 0 the checkpoint and backbone.pt."""
        if self.last_checkpoint == self.step:
            return
        folder = f"modulations-{self.step:08d}"
        for item in self.items:
            save_checkpoint(self.out / folder / f"{item.index:05d}.pt", {
                "format": CHECKPOINT_FORMAT, "kind": "modulation", "name": item.name, "step": self.step,
                "state": item.modulation.state_dict(), "optimizer": item.opt.state_dict(),
            })
        self.d.barrier()
        if self.d.is_main:
            save_checkpoint(self.out / "checkpoint.pt", {
                "format": CHECKPOINT_FORMAT, "kind": "pretrain", "step": self.step, "config": to_dict(self.cfg),
                "scans": self.names, "skipped": [m for _, m in self.skipped], "world_size": self.d.world_size,
                "mu_max": float(self.backbone.mu_max), "backbone_config": to_dict(self.cfg.model.backbone),
                "backbone": self.backbone.state_dict(), "backbone_optimizer": self.backbone_opt.state_dict(),
                "modulations": folder, "seconds": self.seconds(),
            })
            save_backbone(self.out / "backbone.pt", self.backbone, self.cfg.model.modulation, self.step, len(self.names))
            for old in self.out.glob("modulations-*"):
                if old.name != folder and old.is_dir():
                    shutil.rmtree(old, ignore_errors=True)
        self.d.barrier()
        self.last_checkpoint = self.step

    def seconds(self) -> float:
        """Training time so far, earlier sessions included (s)."""
        return self.seconds_before + time.perf_counter() - self.t0

    def dump(self, tag: str) -> None:
        """Test hook: this rank's backbone and modulations into $NFRECON_PRETRAIN_DUMP."""
        folder = os.environ.get(DUMP_ENV)
        if folder:
            save_checkpoint(Path(folder) / f"rank{self.d.rank}-{tag}.pt", {
                "format": CHECKPOINT_FORMAT, "kind": "dump", "step": self.step, "rank": self.d.rank,
                "backbone": self.backbone.state_dict(),
                "modulations": {item.name: item.modulation.state_dict() for item in self.items},
            })

    # ------------------------------------------------------------------ one step
    def _loss(self, item: _Item) -> torch.Tensor:
        if item.marcher is not None:
            idx = item.rays.draw()
            pred = item.marcher(item.field, idx.to(self.device), jitter=True, generator=self.jitter_gen)
        else:
            geom = item.scan.recon_geom
            idx = torch.randint(geom.n_voxels, (self.cfg.points_per_step,), generator=self.gen)
            ny, nx = geom.shape[1:]
            index = torch.stack((idx // (ny * nx), (idx // nx) % ny, idx % nx), dim=-1).to(torch.float64)
            half = (torch.tensor(geom.shape, dtype=torch.float64) - 1) / 2
            points = torch.tensor(geom.center) + (index - half) * torch.tensor(geom.voxel_size)
            pred = item.field(points.to(device=self.device, dtype=torch.float32))
        return ((pred - item.targets[idx].to(self.device)) ** 2).mean()

    def train_step(self) -> float | None:
        """One step on every rank; the mean loss over ranks, or None when a stop was requested
        (nothing is updated then)."""
        cfg, d = self.cfg, self.d
        self.gen.manual_seed(_seed(cfg.seed, 3, d.rank, self.step))
        self.jitter_gen.manual_seed(_seed(cfg.seed, 4, d.rank, self.step))
        item = self.items[int(torch.randint(len(self.items), (1,), generator=self.gen))]
        self.lrs = (cfg.optim.backbone_lr * self.lr_factor(self.step), cfg.optim.modulation_lr * self.lr_factor(self.step))
        for group in self.backbone_opt.param_groups:
            group["lr"] = self.lrs[0]
        for group in item.opt.param_groups:
            group["lr"] = self.lrs[1]
        loss = self._loss(item)
        value = loss.detach().to(device=d.comm_device, dtype=torch.float64)
        stats = torch.stack([value, (~torch.isfinite(value)).to(value.dtype),
                             torch.tensor(float(self.stop.requested), dtype=torch.float64, device=d.comm_device)])
        d.all_reduce(stats)
        if stats[1] > 0:
            raise RuntimeError(f"loss is not finite at step {self.step} (on {int(stats[1])} of {d.world_size} processes); "
                               f"lower --optim.backbone-lr / --optim.modulation-lr and --resume from the last checkpoint")
        if stats[2] > 0:
            return None
        self.backbone_opt.zero_grad(set_to_none=True)
        item.opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.optim.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.backbone.parameters(), cfg.optim.grad_clip)
            torch.nn.utils.clip_grad_norm_(item.modulation.parameters(), cfg.optim.grad_clip)
        self.backbone_opt.step()
        item.opt.step()
        self.step += 1
        return float(stats[0]) / d.world_size

    # ------------------------------------------------------------------ outputs
    def _preview(self, log: TBLogger) -> None:
        item = self.items[0]
        grid = item.scan.recon_geom
        coarse = grid.with_shape(tuple(min(n, PREVIEW_CELLS) for n in grid.shape))
        fld = ConditionedField(self.backbone, item.modulation, coarse)
        vol = evaluate_grid(fld, coarse).float().cpu().numpy()
        log.slices("volume", vol, self.step, coarse)
        if item.scan.gt is not None:
            log.scalar("gt/psnr_db", psnr(vol, np.asarray(resample(item.scan.gt, item.scan.gt_geom, coarse))), self.step)

    def _history_start(self) -> list[list[str]]:
        """Rows of history.csv up to the current step (later rows belong to an interrupted session)."""
        path = self.out / "history.csv"
        if self.step == 0 or not path.is_file():
            return []
        rows = list(csv.reader(io.StringIO(path.read_text())))[1:]
        return [r for r in rows if r and int(r[0]) <= self.step]

    def _write_history(self, rows: list[list[str]]) -> None:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["step", "loss", "backbone_lr", "modulation_lr", "seconds"])
        writer.writerows(rows)
        atomic_write_text(self.out / "history.csv", buf.getvalue())

    def run(self, on_step=None) -> PretrainResult:
        cfg, d, main = self.cfg, self.d, self.d.is_main
        if main:
            dump_yaml(cfg, self.out / "config.yaml")
        self.dump("start")
        log = TBLogger(self.out / "tb") if (cfg.output.tensorboard and main) else None
        rows = self._history_start() if main else []
        history, window = [], []
        bar = progress(cfg.steps, desc="pretrain", unit="step", disable=not (main and cfg.output.progress), initial=self.step)
        unit = cfg.sampling.rays_per_step if cfg.data == "projections" else cfg.points_per_step
        start_step = self.step
        self.t0 = t0 = time.perf_counter()
        try:
            with self.stop:
                while self.step < cfg.steps:
                    loss = self.train_step()
                    if loss is None:
                        self.checkpoint()
                        raise Interrupted(self.out / "checkpoint.pt", self.step, self.stop.signum)
                    window.append(loss)
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss:.3g}", refresh=False)
                    if self.step % cfg.output.log_every == 0 or self.step == cfg.steps:
                        mean = float(np.mean(window))
                        window = []
                        history.append((self.step, mean))
                        if main:
                            rows.append([str(self.step), f"{mean:.9g}", *(f"{lr:.6g}" for lr in self.lrs), f"{self.seconds():.3f}"])
                            self._write_history(rows)
                        if log:
                            log.scalar("train/loss", mean, self.step)
                            log.scalar("train/backbone_lr", self.lrs[0], self.step)
                            rate = unit * d.world_size * (self.step - start_step) / max(time.perf_counter() - t0, 1e-9)
                            log.scalar("train/items_per_s", rate, self.step)
                    if log and cfg.output.preview_every and self.step % cfg.output.preview_every == 0:
                        self._preview(log)
                    if self.step % cfg.output.checkpoint_every == 0:
                        self.checkpoint()
                    if on_step is not None:
                        on_step(self)
        finally:
            bar.close()
            if log:
                log.close()
        seconds = time.perf_counter() - t0
        self.checkpoint()
        self.dump("end")
        steps = self.step - start_step
        summary = {
            "steps": self.step, "steps_this_session": steps, "data": cfg.data, "world_size": d.world_size,
            "device": str(self.device), "scans": len(self.names), "skipped": [m for _, m in self.skipped],
            "mu_max": float(self.backbone.mu_max), "final_loss": history[-1][1] if history else None,
            "seconds": seconds, "seconds_per_step": seconds / max(steps, 1),
            ("rays_per_s" if cfg.data == "projections" else "points_per_s"): unit * d.world_size * steps / max(seconds, 1e-9),
            "backbone_params": sum(p.numel() for p in self.backbone.parameters()),
            "modulation_params_per_scan": sum(p.numel() for p in self.items[0].modulation.parameters()),
        }
        if main:
            atomic_write_text(self.out / "summary.json", json.dumps(summary, indent=2) + "\n")
        return PretrainResult(steps, history, seconds, summary)


def run_pretrain(cfg: PretrainConfig, resume: bool = False, overwrite: bool = False, on_step=None) -> PretrainResult:
    """Pretrain on ``cfg.scans`` (as this rank of a torchrun job, or alone); outputs in ``cfg.out``.

    ``on_step(trainer)`` is called after every step (tests use it to request a stop).
    """
    paths = resolve_scan_paths(cfg.scans)
    d = init_distributed(cfg.device)
    try:
        out = Path(cfg.out)
        _together(d, lambda: prepare_run_folder(out, resume, overwrite))
        if d.is_main and not resume:  # --overwrite: nothing of the earlier run may be mistaken for this one's
            for old in out.glob("modulations-*"):
                shutil.rmtree(old, ignore_errors=True)
            for name in ("backbone.pt", "history.csv", "summary.json"):
                (out / name).unlink(missing_ok=True)
        trainer = Pretrainer(cfg, d, paths, resume)
        out.mkdir(parents=True, exist_ok=True)
        return trainer.run(on_step)
    finally:
        d.close()
