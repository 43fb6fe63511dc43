"""The bench's methods: each reconstructs one scan file into a run folder and reports time and quality.

A job is a JSON-able dict: ``method`` (fdk, iterative, naf, condcbnt, lpd, unet), ``scan`` (HDF5
path), ``out`` (run folder), ``device``, ``threads`` (torch threads or None) and the
method's options (iterative: ``iters``, ``lam``; naf/condcbnt: ``fit`` (a FitConfig as
a dict, preset applied), ``steps`` (cap or None), ``curve_points``, ``seed``; lpd/unet:
``model``, the model.pt).
:func:`run_job` returns the record the tables are made of:

- ``seconds``: wall time of the reconstruction on the loaded scan, from the projections
  to the volume in memory (fdk: the FDK; iterative: projector set-up, TV weight and
  solver; naf/condcbnt: ``run_fit``'s work, i.e. field set-up (mu_max estimate),
  fitting, final checkpoint and export, minus the curve evaluations). Writing the run
  folder of fdk/iterative is not counted.
- ``metrics``: :func:`nfrecon.metrics.evaluate` of the volume against the scan's ground
  truth (definitions in results.json).
- ``curve``: (seconds, PSNR dB, step) during the method, on the same clock as
  ``seconds``: evaluations of the field on the grid every K steps (their time,
  ``curve_eval_seconds``, is taken out), the PSNR after each iteration of the
  iterative method, the single end point of FDK.
- ``memory``: :class:`nfrecon.bench.memory.MemoryProbe` around the method.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from pathlib import Path

import torch

from nfrecon.bench.iterative import IterativeSettings, reconstruct
from nfrecon.bench.memory import MemoryProbe
from nfrecon.configio import from_dict
from nfrecon.data.scan import Scan, load_scan
from nfrecon.devices import resolve_device
from nfrecon.errors import InputError
from nfrecon.fields import evaluate_grid
from nfrecon.fit.config import FitConfig
from nfrecon.fit.loop import FitRun
from nfrecon.fit.run import run_fit
from nfrecon.learned.modelfile import load_model
from nfrecon.learned.recon import reconstruct_learned
from nfrecon.metrics import psnr
from nfrecon.outputs.results import write_results
from nfrecon.recon.fdk import fdk


class Clock:
    """Seconds since start on ``device`` (CUDA work is waited for), minus time set aside."""

    def __init__(self, device: torch.device):
        self.device = device
        self.excluded = 0.0
        self.start = self.now()

    def now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def elapsed(self) -> float:
        return self.now() - self.start - self.excluded

    def point(self, evaluate, step: int) -> list:
        """[seconds so far, evaluate(), step] for a curve; evaluate's own time is set aside."""
        t = self.now()
        seconds = t - self.start - self.excluded
        value = evaluate()
        self.excluded += self.now() - t
        return [seconds, value, step]


def _quality(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k != "definitions"}


def _run_fdk(scan: Scan, job: dict, device: torch.device) -> dict:
    clock = Clock(device)
    volume = fdk(torch.as_tensor(scan.projections, device=device), scan.geom, scan.recon_geom,
                 backend=job.get("backend", "auto")).cpu().numpy()
    seconds = clock.elapsed()
    metrics = write_results(job["out"], volume, scan.recon_geom, gt=scan.gt, title="FDK",
                            info={"method": "fdk", "seconds": seconds})
    quality = _quality(metrics["vs_ground_truth"])
    return {"seconds": seconds, "metrics": quality, "curve": [[seconds, quality["psnr_db"], 1]], "info": {}}


def _run_iterative(scan: Scan, job: dict, device: torch.device) -> dict:
    settings = IterativeSettings("tv", job.get("iters"), lam=job["lam"], backend=job.get("backend", "auto"))
    gt = torch.as_tensor(scan.gt, device=device)
    clock = Clock(device)
    curve = []

    def on_iteration(k: int, x: torch.Tensor) -> None:
        curve.append(clock.point(lambda: psnr(x, gt), k))

    result, info = reconstruct(torch.as_tensor(scan.projections, device=device), scan.geom, scan.recon_geom,
                               settings, callback=on_iteration)
    volume = result.volume.cpu().numpy()
    seconds = clock.elapsed()
    info.update(iterations_run=result.n_iter, residual_history=result.residuals)
    metrics = write_results(job["out"], volume, scan.recon_geom, gt=scan.gt, title="iterative (TV)",
                            info={**info, "seconds": seconds})
    return {"seconds": seconds, "metrics": _quality(metrics["vs_ground_truth"]), "curve": curve,
            "curve_eval_seconds": clock.excluded, "info": info}


def fit_config(job: dict) -> FitConfig:
    """The job's FitConfig: its preset-resolved ``fit`` dict, with the bench's scan, folder,
    seed, step budget (when given, the same for every neural method), and no TensorBoard,
    progress bar, intermediate previews or checkpoints."""
    cfg = from_dict(FitConfig, job["fit"], f"{job['method']} config")
    steps = cfg.steps if job.get("steps") is None else int(job["steps"])
    output = dataclasses.replace(cfg.output, tensorboard=False, progress=False, preview_every=0, checkpoint_every=0)
    return dataclasses.replace(cfg, scan=Path(job["scan"]), out=Path(job["out"]), method=job["method"],
                               device=job["device"], seed=int(job["seed"]), steps=steps, output=output)


def _run_neural(scan: Scan, job: dict, device: torch.device) -> dict:
    cfg = fit_config(job)
    every = max(1, cfg.steps // max(1, int(job["curve_points"])))
    gt = torch.as_tensor(scan.gt, device=device)
    clock = Clock(device)
    curve = []

    def on_step(run: FitRun) -> None:
        if run.step % every == 0:
            curve.append(clock.point(lambda: psnr(evaluate_grid(run.model, run.grid_geom), gt), run.step))

    result = run_fit(cfg, scan, overwrite=True, on_step=on_step)
    seconds = clock.elapsed()
    quality = _quality(result.metrics["vs_ground_truth"])
    curve.append([seconds, quality["psnr_db"], result.metrics["exported_step"]])
    info = {k: result.metrics[k] for k in ("steps_run", "stopped_early", "exported_step") if k in result.metrics}
    info.update(steps_budget=cfg.steps, rays_per_step=cfg.sampling.rays_per_step, n_samples=cfg.sampling.n_samples)
    return {"seconds": seconds, "metrics": quality, "curve": curve, "curve_eval_seconds": clock.excluded, "info": info}


def _run_learned(scan: Scan, job: dict, device: torch.device) -> dict:
    model = load_model(job["model"])
    if model.method != job["method"]:
        raise InputError(f"--{job['method']}-model {job['model']}: holds a {model.method} model")
    clock = Clock(device)
    result = reconstruct_learned(model, scan, device, job.get("backend", "auto"), source=job["scan"])
    seconds = clock.elapsed()
    info = {"model": job["model"], "setup_seconds": result.setup_seconds, "network_seconds": result.network_seconds}
    metrics = write_results(job["out"], result.volume, scan.recon_geom, gt=scan.gt, title=job["method"],
                            info={"method": job["method"], "seconds": seconds, **info})
    quality = _quality(metrics["vs_ground_truth"])
    return {"seconds": seconds, "metrics": quality, "curve": [[seconds, quality["psnr_db"], 1]], "info": info}


RUNNERS = {"fdk": _run_fdk, "iterative": _run_iterative, "naf": _run_neural, "condcbnt": _run_neural,
           "lpd": _run_learned, "unet": _run_learned}


def _warm_up_optimizer() -> None:
    """Adam's first step in a process imports torch._dynamo (seconds): done before the clock."""
    p = torch.zeros(1, requires_grad=True)
    opt = torch.optim.Adam([p])
    p.sum().backward()
    opt.step()


def run_job(job: dict) -> dict:
    """Run one job (module doc) in this process and return its record; the warnings the
    method gave are in ``record["warnings"]``."""
    if job.get("threads"):
        torch.set_num_threads(int(job["threads"]))
    device = resolve_device(job["device"])
    scan = load_scan(job["scan"])
    if job["method"] in ("naf", "condcbnt"):
        _warm_up_optimizer()
    probe = MemoryProbe(device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        record = RUNNERS[job["method"]](scan, job, device)
    record["memory"] = probe.result()
    record["warnings"] = sorted({str(w.message) for w in caught})
    record["device"] = str(device)
    record["torch_threads"] = torch.get_num_threads()
    return record
