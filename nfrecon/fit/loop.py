"""The fitting loop: data term, Adam, held-out stopping, divergence roll-back, checkpoints, outputs.

The loop is model-agnostic: it fits any ``torch.nn.Module`` field (points (..., 3) world
mm (z, y, x) -> mu 1/mm) to a scan's line integrals. Resuming from a checkpoint continues
bit for bit: model, optimiser, schedule, stopping state and every random generator are
restored, and nothing but ray sampling (:mod:`~nfrecon.fit.sampling`) and jitter draws
random numbers. Step-dependent events follow :mod:`~nfrecon.fit.schedule`.
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from nfrecon.configio import to_dict
from nfrecon.data.scan import Scan
from nfrecon.errors import InputError
from nfrecon.fields.base import evaluate_grid
from nfrecon.fit.checkpoint import (
    CHECKPOINT_FORMAT,
    load_checkpoint,
    require_same_config,
    save_checkpoint,
    state_must_fit,
)
from nfrecon.fit.config import FitConfig
from nfrecon.fit.inputs import recon_ground_truth
from nfrecon.fit.sampling import RaySource, holdout_rays
from nfrecon.fit.schedule import due, lr_factor
from nfrecon.fit.signals import Interrupted, StopRequest
from nfrecon.fit.stopping import EarlyStopper, split_views
from nfrecon.metrics import evaluate
from nfrecon.outputs.preview import save_preview
from nfrecon.outputs.progress import progress
from nfrecon.outputs.results import write_results
from nfrecon.outputs.tensorboard import TBLogger
from nfrecon.render.raymarch import RayMarcher

MAX_DIVERGENCE_RETRIES = 4


@dataclass
class FitResult:
    volume: np.ndarray
    """Reconstruction on the scan's recon grid, [z, y, x] mu in 1/mm."""
    metrics: dict
    """What metrics.json holds."""
    steps_run: int
    stopped_early: bool


class FitRun:
    """One fit of ``model`` to ``scan`` writing into ``cfg.out``; call :meth:`run`.

    ``param_groups`` (default: all model parameters at ``cfg.optim.lr``) are Adam's groups;
    a group may carry ``start_step``: its parameters are frozen (no gradient, no update)
    before that step.
    """

    def __init__(self, model: torch.nn.Module, scan: Scan, cfg: FitConfig, device: torch.device, param_groups=None):
        if cfg.loss.kind == "poisson" and not scan.photons:
            raise InputError("loss.kind=poisson needs the scan's photon count (the scan has none); use --loss.kind mse")
        self.model, self.scan, self.cfg, self.device = model.to(device), scan, cfg, device
        self.out = Path(cfg.out)
        self.grid_geom = scan.recon_geom
        self.marcher = RayMarcher(scan.geom, self.grid_geom, cfg.sampling.n_samples, device)
        self.train_views, self.hold_views = split_views(scan.geom.n_views, cfg.stop.holdout_fraction)
        self.proj = torch.as_tensor(scan.projections, dtype=torch.float32).reshape(-1).to(device)
        if cfg.loss.kind == "poisson":
            weight = torch.exp(-self.proj)
            nv, nu = scan.geom.det_shape
            train_mask = torch.zeros(scan.geom.n_views, dtype=torch.bool)
            train_mask[torch.as_tensor(self.train_views)] = True
            train_rays = train_mask.repeat_interleave(nv * nu).to(device)
            self.weight = weight / weight[train_rays].mean()
        else:
            self.weight = None
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.jitter_gen = torch.Generator(device=device).manual_seed(cfg.seed + 1)
        self.rays = RaySource(scan, self.train_views, cfg.sampling, self.gen)
        self.hold_rays = holdout_rays(scan, self.hold_views, cfg.stop.eval_rays, cfg.seed)
        # rays whose predictions must stay finite for a state to be kept (see _train_step)
        self.probe_rays = torch.linspace(0, scan.geom.n_rays - 1, min(256, scan.geom.n_rays)).long()
        self.opt = torch.optim.Adam(param_groups if param_groups is not None else model.parameters(), lr=cfg.optim.lr)
        self.base_lrs = [g["lr"] for g in self.opt.param_groups]
        self.lr_factor = lr_factor(cfg.steps, cfg.optim.schedule, cfg.optim.final_lr_ratio)
        self.lr_scale = 1.0
        self.stopper = EarlyStopper(cfg.stop.patience, cfg.stop.min_improvement)
        self.best_state = None
        self.step = 0
        self.checkpoint_step: int | None = None  # step of the last checkpoint this run wrote or resumed
        self._in_step = False  # a step has begun and not finished (the state is between two steps)
        self._good: tuple[dict, dict] | None = None  # model and optimiser state to roll back to
        self.gt = recon_ground_truth(scan)

    # ------------------------------------------------------------------ state
    def _config_dict(self) -> dict:
        return to_dict(self.cfg)

    def state_dict(self) -> dict:
        return {
            "format": CHECKPOINT_FORMAT,
            "step": self.step,
            "config": self._config_dict(),
            "model": self.model.state_dict(),
            "optimizer": self.opt.state_dict(),
            "lr_scale": self.lr_scale,
            "stopper": self.stopper.state_dict(),
            "best_state": self.best_state,
            "rng": self.gen.get_state(),
            "jitter_rng": self.jitter_gen.get_state().cpu(),
        }

    def load_state_dict(self, state: dict, path: Path) -> None:
        model_keys = self.cfg.model_keys()
        saved = {k: state["config"].get(k) for k in model_keys}
        now = {k: self._config_dict()[k] for k in model_keys}
        require_same_config(path, saved, now)
        with state_must_fit(path, "checkpoint does not fit this model"):
            self.model.load_state_dict(state["model"])
            self.opt.load_state_dict(state["optimizer"])
        self._check_shapes(state, path)
        self.step = self.checkpoint_step = int(state["step"])
        self.lr_scale = float(state["lr_scale"])
        self.stopper.load_state_dict(state["stopper"])
        self.best_state = state["best_state"]
        self.gen.set_state(state["rng"])
        self.jitter_gen.set_state(state["jitter_rng"])

    def _check_shapes(self, state: dict, path: Path) -> None:
        """The optimiser's moments and the best state must have the shapes of the model's tensors
        (``load_state_dict`` checks only the model's own)."""
        for p in (p for g in self.opt.param_groups for p in g["params"]):
            for key, value in self.opt.state.get(p, {}).items():
                if torch.is_tensor(value) and value.dim() > 0 and value.shape != p.shape:
                    raise InputError(f"{path}: checkpoint does not fit this model (optimizer {key} has shape "
                                     f"{tuple(value.shape)}, the parameter {tuple(p.shape)})")
        best = state["best_state"]
        if best is not None:
            want = {k: tuple(v.shape) for k, v in self.model.state_dict().items()}
            got = {k: tuple(v.shape) for k, v in best.items()} if isinstance(best, dict) else {}
            if got != want:
                diff = min(set(want.items()) ^ set(got.items()))[0]
                raise InputError(f"{path}: checkpoint does not fit this model (best_state entry {diff!r})")

    def checkpoint(self) -> None:
        """Write ``<out>/checkpoint.pt`` (refused, keeping the previous one, if the state is not finite)."""
        save_checkpoint(self.out / "checkpoint.pt", self.state_dict())
        self.checkpoint_step = self.step

    # ------------------------------------------------------------------ pieces
    def _set_lr(self) -> None:
        """Scheduled learning rates; a group with a ``start_step`` stays frozen before that step."""
        f = self.lr_factor(self.step) * self.lr_scale
        for group, base in zip(self.opt.param_groups, self.base_lrs):
            group["lr"] = base * f
            active = self.step >= group.get("start_step", 0)
            for p in group["params"]:
                p.requires_grad_(active)

    def _loss(self, idx: torch.Tensor) -> torch.Tensor:
        idx = idx.to(self.device)
        pred = self.marcher(self.model, idx, jitter=True, generator=self.jitter_gen)
        resid = pred - self.proj[idx]
        if self.weight is None:
            return (resid**2).mean()
        return (self.weight[idx] * resid**2).mean()

    @torch.no_grad()
    def holdout_error(self) -> dict:
        """Projection error on the held-out rays: RMSE of line integrals and relative L2."""
        if len(self.hold_rays) == 0:
            return {}
        sq, ref = 0.0, 0.0
        for chunk in self.hold_rays.split(8192):
            chunk = chunk.to(self.device)
            pred = self.marcher(self.model, chunk, jitter=False)
            meas = self.proj[chunk]
            sq += float(((pred - meas) ** 2).sum())
            ref += float((meas**2).sum())
        n = len(self.hold_rays)
        return {"holdout_rmse": math.sqrt(sq / n), "holdout_rel_l2": math.sqrt(sq / max(ref, 1e-30))}

    @torch.no_grad()
    def volume(self) -> np.ndarray:
        return evaluate_grid(self.model, self.grid_geom).float().cpu().numpy()

    def _snapshot(self) -> dict:
        return {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    # ------------------------------------------------------------------ main loop
    def run(self, resume: bool = False, on_step=None) -> FitResult:
        """Run the remaining steps, then export. On SIGINT/SIGTERM the current step finishes,
        the checkpoint is written and :class:`~nfrecon.fit.signals.Interrupted` is raised."""
        ckpt = self.out / "checkpoint.pt"
        if resume:
            self.load_state_dict(load_checkpoint(ckpt), ckpt)
        self.out.mkdir(parents=True, exist_ok=True)
        log = TBLogger(self.out / "tb") if self.cfg.output.tensorboard else None
        bar = progress(self.cfg.steps, desc="fit", unit="step", disable=not self.cfg.output.progress, initial=self.step)
        try:
            with StopRequest() as stop:
                stopped = self._steps(stop, log, bar, on_step)
        except KeyboardInterrupt as exc:
            bar.close()
            if log:
                log.close()
            if isinstance(exc, Interrupted):
                raise
            if not self._in_step:  # raised between steps (e.g. by on_step): the state is a finished step's
                self.checkpoint()
            # raised inside a step (a second Ctrl-C): the state is between two steps; keep the last checkpoint
            raise Interrupted(ckpt if self.checkpoint_step is not None else None, self.checkpoint_step or 0,
                              None) from exc
        bar.close()
        self.checkpoint()
        result = self._finish(log, stopped)
        if log:
            log.close()
        return result

    def _steps(self, stop: StopRequest, log, bar, on_step) -> bool:
        """The step loop; True when automatic stopping ended it."""
        self._good, self._retries = self._good_state(), 0
        stopped = False
        t0, rays_done = time.perf_counter(), 0
        while self.step < self.cfg.steps and not stopped:
            if stop.requested:
                self.checkpoint()
                raise Interrupted(self.out / "checkpoint.pt", self.step, stop.signum)
            self._in_step = True
            loss_value = self._train_step()
            if loss_value is None:
                self._in_step = False
                continue
            rays_done += self.cfg.sampling.rays_per_step
            rate = rays_done / max(time.perf_counter() - t0, 1e-9)
            bar.update(1)
            bar.set_postfix(loss=f"{loss_value:.3g}", rays_s=f"{rate:.3g}", refresh=False)
            if log:
                log.scalar("train/loss", loss_value, self.step)
                log.scalar("train/lr", self.opt.param_groups[0]["lr"], self.step)
            stopped = self._periodic(log)
            if due(self.step, self.cfg.stop.eval_every):
                self._good = self._good_state()
            self._in_step = False
            if on_step is not None:
                on_step(self)
        return stopped

    def _train_step(self) -> float | None:
        """One optimisation step; its loss, or None when it diverged: a non-finite loss, non-finite
        parameters after the update, or (before a state is kept as the roll-back point or
        checkpointed) non-finite predictions on a fixed set of rays. The model and optimiser are
        then rolled back to the last good state and the learning rate is halved."""
        self._set_lr()
        loss = self._loss(self.rays.draw())
        loss_value = float(loss.detach())
        if not math.isfinite(loss_value):
            return self._roll_back(f"loss became {loss_value}")
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.optim.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.optim.grad_clip)
        self.opt.step()
        if not self._params_finite():
            return self._roll_back("the parameters became non-finite")
        self.step += 1
        if self._keeps_state() and not self._predictions_finite():
            self.step -= 1
            return self._roll_back("the predicted line integrals became non-finite")
        return loss_value

    def _roll_back(self, what: str) -> None:
        self._retries += 1
        if self._retries > MAX_DIVERGENCE_RETRIES:
            raise InputError(f"the fit diverged at step {self.step} ({what} after {MAX_DIVERGENCE_RETRIES} "
                             f"learning-rate reductions); try a lower --optim.lr")
        self.model.load_state_dict(self._good[0])
        self.opt.load_state_dict(self._good[1])
        self.lr_scale *= 0.5
        warnings.warn(f"{what} at step {self.step}: rolled back, learning rate x{self.lr_scale:g}", stacklevel=4)

    def _keeps_state(self) -> bool:
        """Whether the state after this step becomes the roll-back point or a checkpoint."""
        every = (self.cfg.stop.eval_every, self.cfg.output.checkpoint_every)
        return self.step >= self.cfg.steps or any(due(self.step, n) for n in every)

    def _params_finite(self) -> bool:
        """Whether every parameter is finite (one reduction: a sum is NaN/Inf when an entry is)."""
        sums = torch.stack([p.detach().sum(dtype=torch.float64) for p in self.model.parameters()])
        return bool(torch.isfinite(sums).all())

    @torch.no_grad()
    def _predictions_finite(self) -> bool:
        """Whether the predicted line integrals of a fixed set of rays are finite (no jitter)."""
        pred = self.marcher(self.model, self.probe_rays.to(self.device), jitter=False)
        return bool(torch.isfinite(pred).all())

    def _good_state(self) -> tuple[dict, dict]:
        return copy.deepcopy(self.model.state_dict()), copy.deepcopy(self.opt.state_dict())

    def _periodic(self, log) -> bool:
        cfg, step = self.cfg, self.step
        stop = False
        if len(self.hold_rays) and due(step, cfg.stop.eval_every):
            err = self.holdout_error()
            if self.stopper.update(step, err["holdout_rmse"]):
                self.best_state = self._snapshot()
            if log:
                for k, v in err.items():
                    log.scalar(f"holdout/{k}", v, step)
            stop = self.stopper.should_stop
        if due(step, cfg.output.preview_every) and step < cfg.steps and not stop:
            vol = self.volume()
            save_preview(self.out / "preview.png", vol, self.grid_geom, title=f"step {step}")
            if log:
                log.slices("volume", vol, step)
                if self.gt is not None:
                    m = evaluate(vol, self.gt)
                    log.scalar("gt/psnr_db", m["psnr_db"], step)
                    log.scalar("gt/ssim_3d", m["ssim_3d"], step)
        if due(step, cfg.output.checkpoint_every):
            self.checkpoint()
        return stop

    def _finish(self, log, stopped: bool) -> FitResult:
        final_step = self.step
        if self.cfg.stop.restore_best and self.best_state is not None:
            self.model.load_state_dict(self.best_state)
        vol = self.volume()
        metrics = {
            "method": self.cfg.method,
            "steps_run": final_step,
            "stopped_early": bool(stopped),
            "exported_step": (self.stopper.best_step if (self.cfg.stop.restore_best and self.best_state is not None)
                              else final_step),
            "holdout_views": [int(v) for v in self.hold_views],
        }
        metrics.update(self.holdout_error())
        if self.stopper.history:
            metrics["holdout_history"] = [[s, e] for s, e in self.stopper.history]
        metrics = write_results(
            self.out, vol, self.grid_geom, gt=self.gt, info=metrics, hu=self.cfg.output.hu,
            mu_water=self.cfg.output.mu_water, title=f"{self.cfg.method} step {metrics['exported_step']}",
            format=self.cfg.output.format,
        )
        if log:
            log.slices("volume", vol, final_step)
        return FitResult(vol, metrics, final_step, bool(stopped))
