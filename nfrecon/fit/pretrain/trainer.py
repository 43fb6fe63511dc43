"""The pretraining run on one rank: the models, one optimisation step, the loop.

Each step, every process draws one of *its* scans at random and fits the shared backbone
and that scan's modulation field to it (:mod:`~nfrecon.fit.pretrain.targets`). Adam for the
backbone (``backbone_lr``) and for each modulation (``modulation_lr``), one schedule
(:func:`~nfrecon.fit.schedule.lr_factor`) for both.

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
- One scalar all-reduce per step carries the loss (logged as the mean over ranks), a
  non-finite-loss flag (every rank stops with the same error) and a stop request
  (Ctrl-C / SIGTERM on any rank: every rank writes the checkpoint at the same step and
  exits).
- Randomness: each step's sampling generators are re-seeded from (seed, rank, step), so a
  resumed run draws exactly what the uninterrupted run would have drawn (no RNG state to
  save) and each modulation field is initialised from (seed, scan index) whatever rank
  owns it; the backbone from (seed).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from nfrecon.configio import dump_yaml, to_dict
from nfrecon.data.scan import Scan
from nfrecon.fields.base import use_backend
from nfrecon.fields.conditioned import Backbone, ConditionedField, ModulationField
from nfrecon.fit.backbone import save_backbone
from nfrecon.fit.config import PretrainConfig
from nfrecon.fit.distributed import Dist, init_distributed
from nfrecon.fit.pretrain import checkpoint as ckpt
from nfrecon.fit.pretrain.history import History, log_preview, write_summary
from nfrecon.fit.pretrain.scans import Population, attenuation_range, load_shard, training_population
from nfrecon.fit.pretrain.targets import ProjectionTarget, VoxelTarget, make_target, per_step
from nfrecon.fit.run import prepare_run_folder
from nfrecon.fit.schedule import due, lr_factor
from nfrecon.fit.signals import Interrupted, StopRequest
from nfrecon.ops.backend import resolve_backend
from nfrecon.outputs.progress import progress
from nfrecon.outputs.tensorboard import TBLogger

# first key of the seeds drawn from --seed, one per use (see mixed_seed)
SEED_BACKBONE, SEED_MODULATION, SEED_SAMPLING, SEED_JITTER = 1, 2, 3, 4


def mixed_seed(*keys: int) -> int:
    """A well-mixed 63-bit seed from integers (numpy SeedSequence)."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1, np.uint64)[0]) >> 1


@dataclass
class _Item:
    """One training scan on this rank: its modulation field, optimiser and target."""

    index: int  # in the full --scans list
    name: str  # absolute path
    modulation: ModulationField
    field: ConditionedField
    opt: torch.optim.Adam
    target: ProjectionTarget | VoxelTarget
    scan: Scan  # for previews


@dataclass
class PretrainResult:
    steps_run: int
    history: list[tuple[int, float]]
    """(step, mean loss over ranks) at every log step of this session."""
    seconds: float
    """Wall time of this session's steps."""
    summary: dict


class Pretrainer:
    """One pretraining job on this rank; build with :func:`run_pretrain`."""

    def __init__(self, cfg: PretrainConfig, d: Dist, population: Population, resume: bool):
        self.cfg, self.d, self.out = cfg, d, Path(cfg.out)
        self.population = population
        self.device = d.device
        self.stop = StopRequest()
        self.step = 0
        self.last_checkpoint = -1
        self.seconds_before = 0.0  # training time of earlier sessions (resumed runs)
        self.t0 = time.perf_counter()
        self.gen = torch.Generator()
        self.jitter_gen = torch.Generator(device=self.device)
        state = d.together(lambda: ckpt.read_resume_state(self.out, cfg)) if resume else None
        shard = load_shard(d, population.paths, cfg.data, cfg.skip_bad)
        self.skipped, self.names = shard.skipped, shard.names
        if state is not None:
            d.together(lambda: ckpt.check_resume_scans(self.out, state, self.names))
            mu_max, mu0 = float(state["mu_max"]), None
        else:
            mu_max, mu0 = attenuation_range(d, shard.local, cfg.data, cfg.mu_max)
        torch.manual_seed(mixed_seed(cfg.seed, SEED_BACKBONE))
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
        self.items = [self._item(i, p, scan) for i, p, scan in shard.local]
        self.lr_factor = lr_factor(cfg.steps, cfg.optim.schedule, cfg.optim.final_lr_ratio)
        if state is not None:
            self._restore(state)

    def _item(self, index: int, path: Path, scan: Scan) -> _Item:
        cfg = self.cfg
        torch.manual_seed(mixed_seed(cfg.seed, SEED_MODULATION, index))
        modulation = ModulationField(cfg.model.modulation, self.backbone.film_widths).to(self.device)
        use_backend(modulation, self.kernels)
        field = ConditionedField(self.train_backbone, modulation, scan.recon_geom).to(self.device)
        opt = torch.optim.Adam(modulation.parameters(), lr=cfg.optim.modulation_lr)
        target = make_target(cfg, scan, self.device, self.gen, self.jitter_gen)
        return _Item(index, str(path), modulation, field, opt, target, scan)

    def _restore(self, state: dict) -> None:
        ckpt.restore_backbone(self.out, state, self.backbone, self.backbone_opt)
        folder = self.out / state["modulations"]
        for item in self.items:
            ckpt.restore_modulation(folder, item.index, item.name, item.modulation, item.opt)
        self.step = self.last_checkpoint = int(state["step"])
        self.seconds_before = float(state.get("seconds", 0.0))

    # ------------------------------------------------------------------ checkpoints
    def checkpoint(self) -> None:
        """Collective: every rank writes its modulations, then rank 0 the checkpoint and backbone.pt."""
        if self.last_checkpoint == self.step:
            return
        folder = ckpt.modulations_folder(self.step)
        for item in self.items:
            ckpt.save_modulation(self.out / folder, item.index, item.name, self.step, item.modulation, item.opt)
        self.d.barrier()
        if self.d.is_main:
            ckpt.save_pretrain_state(self.out, {
                "step": self.step, "config": to_dict(self.cfg),
                "scans": self.names, "skipped": [m for _, m in self.skipped], "world_size": self.d.world_size,
                "mu_max": float(self.backbone.mu_max), "backbone_config": to_dict(self.cfg.model.backbone),
                "backbone": self.backbone.state_dict(), "backbone_optimizer": self.backbone_opt.state_dict(),
                "modulations": folder, "seconds": self.seconds(),
            }, keep=folder)
            save_backbone(self.out / ckpt.BACKBONE, self.backbone, self.cfg.model.modulation, self.step,
                          len(self.names), self.population.training_cts, self.population.held_out)
        self.d.barrier()
        self.last_checkpoint = self.step

    def seconds(self) -> float:
        """Training time so far, earlier sessions included (s)."""
        return self.seconds_before + time.perf_counter() - self.t0

    def dump(self, tag: str) -> None:
        ckpt.dump(self.d.rank, tag, self.step, self.backbone, {item.name: item.modulation for item in self.items})

    # ------------------------------------------------------------------ one step
    def train_step(self) -> float | None:
        """One step on every rank; the mean loss over ranks, or None when a stop was requested
        (nothing is updated then)."""
        cfg, d = self.cfg, self.d
        self.gen.manual_seed(mixed_seed(cfg.seed, SEED_SAMPLING, d.rank, self.step))
        self.jitter_gen.manual_seed(mixed_seed(cfg.seed, SEED_JITTER, d.rank, self.step))
        item = self.items[int(torch.randint(len(self.items), (1,), generator=self.gen))]
        self.lrs = (cfg.optim.backbone_lr * self.lr_factor(self.step),
                    cfg.optim.modulation_lr * self.lr_factor(self.step))
        for group in self.backbone_opt.param_groups:
            group["lr"] = self.lrs[0]
        for group in item.opt.param_groups:
            group["lr"] = self.lrs[1]
        loss = item.target.loss(item.field)
        value = loss.detach().to(device=d.comm_device, dtype=torch.float64)
        stats = torch.stack([value, (~torch.isfinite(value)).to(value.dtype),
                             torch.tensor(float(self.stop.requested), dtype=torch.float64, device=d.comm_device)])
        d.all_reduce(stats)
        if stats[1] > 0:
            raise RuntimeError(f"loss is not finite at step {self.step} (on {int(stats[1])} of {d.world_size} "
                               "processes); lower --optim.backbone-lr / --optim.modulation-lr and --resume "
                               "from the last checkpoint")
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

    # ------------------------------------------------------------------ the loop
    def run(self, on_step=None) -> PretrainResult:
        cfg, d, main = self.cfg, self.d, self.d.is_main
        if main:
            dump_yaml(cfg, self.out / "config.yaml")
        self.dump("start")
        log = TBLogger(self.out / "tb") if (cfg.output.tensorboard and main) else None
        records = History(self.out, self.step) if main else None
        history, window = [], []
        bar = progress(cfg.steps, desc="pretrain", unit="step", disable=not (main and cfg.output.progress),
                       initial=self.step)
        what, unit = per_step(cfg)
        start_step = self.step
        self.t0 = t0 = time.perf_counter()
        try:
            with self.stop:
                while self.step < cfg.steps:
                    loss = self.train_step()
                    if loss is None:
                        self.checkpoint()
                        raise Interrupted(self.out / ckpt.CHECKPOINT, self.step, self.stop.signum)
                    window.append(loss)
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss:.3g}", refresh=False)
                    if due(self.step, cfg.output.log_every) or self.step == cfg.steps:
                        mean = float(np.mean(window))
                        window = []
                        history.append((self.step, mean))
                        if records is not None:
                            records.add(self.step, mean, self.lrs, self.seconds())
                        if log:
                            log.scalar("train/loss", mean, self.step)
                            log.scalar("train/backbone_lr", self.lrs[0], self.step)
                            rate = unit * d.world_size * (self.step - start_step) / max(time.perf_counter() - t0, 1e-9)
                            log.scalar("train/items_per_s", rate, self.step)
                    if log and due(self.step, cfg.output.preview_every):
                        first = self.items[0]
                        log_preview(log, self.backbone, first.modulation, first.scan, self.step)
                    if due(self.step, cfg.output.checkpoint_every):
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
            f"{what}_per_s": unit * d.world_size * steps / max(seconds, 1e-9),
            "backbone_params": sum(p.numel() for p in self.backbone.parameters()),
            "modulation_params_per_scan": sum(p.numel() for p in self.items[0].modulation.parameters()),
        }
        if main:
            write_summary(self.out, summary)
        return PretrainResult(steps, history, seconds, summary)


def run_pretrain(cfg: PretrainConfig, resume: bool = False, overwrite: bool = False, on_step=None) -> PretrainResult:
    """Pretrain on ``cfg.scans`` (as this rank of a torchrun job, or alone); outputs in ``cfg.out``.

    ``on_step(trainer)`` is called after every step (tests use it to request a stop).
    """
    population = training_population(cfg.scans, cfg.exclude_ct)
    d = init_distributed(cfg.device)
    try:
        out = Path(cfg.out)
        d.together(lambda: prepare_run_folder(out, resume, overwrite))
        if d.is_main and not resume:  # --overwrite: nothing of the earlier run may be mistaken for this one's
            ckpt.clear_earlier_run(out)
        trainer = Pretrainer(cfg, d, population, resume)
        out.mkdir(parents=True, exist_ok=True)
        return trainer.run(on_step)
    finally:
        d.close()
