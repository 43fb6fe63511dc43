"""NAF fitting against FDK on sparse, noisy views of a real CT, at a CPU-sized scale.

The torso CT of ../shared/data is simulated with the CondCBNT-like protocol scaled to a
64^3 grid and a 64^2 detector (same field of view), 50 views over 205 deg, 1e5 photons.
FDK (ram-lak and Hann) and NAF fits with the plain and the noise-aware (Poisson-weighted)
data term run at equal step budgets with automatic stopping disabled; the step at which
automatic stopping (default patience) would have fired is replayed from the held-out
error history, and the quality there is reported too. Each fit runs in its own process so
that its peak memory (max RSS) is its own; quality-over-time evaluations are excluded
from the fit's time.

    python scripts/bench_naf.py                        # defaults above, preset naf-fast
    python scripts/bench_naf.py --steps 3000 --threads 2

Writes benchmarks/naf_<ct>_<size>.json (machine, commit, command included).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing as mp
import resource
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

from nfrecon.data.scan import load_scan, save_scan
from nfrecon.data.volumes import read_ct
from nfrecon.fields.base import evaluate_grid
from nfrecon.fit.config import LossConfig
from nfrecon.fit.presets import fit_config
from nfrecon.fit.run import run_fit
from nfrecon.fit.stopping import EarlyStopper
from nfrecon.fsutil import atomic_write_text
from nfrecon.geometry.protocols import get_protocol
from nfrecon.metrics import DEFINITIONS, evaluate, psnr
from nfrecon.outputs.provenance import provenance
from nfrecon.recon.fdk import fdk
from nfrecon.simulate import simulate_scan

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _fit_worker(scan_path: str, out: str, preset: str, loss: str, steps: int, every: int, threads: int, queue) -> None:
    torch.set_num_threads(threads)
    warnings.simplefilter("ignore")
    base = fit_config(preset, None, "cpu").config
    cfg = dataclasses.replace(
        base, scan=Path(scan_path), out=Path(out), steps=steps, device="cpu", loss=LossConfig(kind=loss),
        stop=dataclasses.replace(base.stop, patience=0, restore_best=False),
        output=dataclasses.replace(base.output, tensorboard=False, progress=False, checkpoint_every=0, preview_every=0),
    )
    scan = load_scan(scan_path)
    gt = scan.gt
    curve, clock = [], {"eval": 0.0, "start": time.perf_counter()}

    def on_step(run) -> None:
        if run.step % every == 0:
            t0 = time.perf_counter()
            vol = evaluate_grid(run.model, run.grid_geom).numpy()
            elapsed = t0 - clock["start"] - clock["eval"]
            curve.append([run.step, elapsed, psnr(vol, gt)])
            clock["eval"] += time.perf_counter() - t0

    result = run_fit(cfg, scan, overwrite=True, on_step=on_step)
    seconds = time.perf_counter() - clock["start"] - clock["eval"]
    queue.put({
        "loss": loss, "steps": result.steps_run, "seconds": seconds,
        "rays_per_s": result.steps_run * cfg.sampling.rays_per_step / seconds,
        "samples_per_ray": cfg.sampling.n_samples, "rays_per_step": cfg.sampling.rays_per_step,
        "final": result.metrics["vs_ground_truth"], "holdout_rmse": result.metrics["holdout_rmse"],
        "holdout_history": result.metrics.get("holdout_history", []), "psnr_curve": curve,
        "peak_rss_mb": _peak_rss_mb(),
    })


def _auto_stop(history: list, patience: int, min_improvement: float) -> int | None:
    """Replay EarlyStopper on a held-out error history: the step at which it would stop."""
    stopper = EarlyStopper(patience, min_improvement)
    for step, error in history:
        stopper.update(step, error)
        if stopper.should_stop:
            return int(step)
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ct", type=Path, default=DATA / "torso_ct_totalsegmentator_3mm.npz")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--views", type=int, default=50)
    parser.add_argument("--photons", type=float, default=1e5)
    parser.add_argument("--preset", default="naf-fast")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--every", type=int, default=100, help="steps between quality evaluations")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per fit")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    protocol = get_protocol("condcbnt").scaled(args.size)
    protocol = dataclasses.replace(protocol, n_views=args.views, photons=args.photons)
    hu, ct_geom = read_ct(args.ct)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scan = simulate_scan(protocol.hu_to_mu(hu), ct_geom, protocol.cone_geometry(), protocol.volume_geometry(),
                             photons=args.photons, seed=0, metadata={"protocol": protocol.to_dict()})
    rows = {}
    for name, filt in (("fdk_ramlak", "ram-lak"), ("fdk_hann", "hann")):
        start = time.perf_counter()
        vol = fdk(scan.projections, scan.geom, scan.recon_geom, filter=filt).numpy()
        rows[name] = {"seconds": time.perf_counter() - start, "final": evaluate(vol, scan.gt)}
        print(f"{name:12s} PSNR {rows[name]['final']['psnr_db']:6.2f} dB  SSIM {rows[name]['final']['ssim_3d']:.3f}  "
              f"{rows[name]['seconds']:.2f} s", flush=True)

    defaults = fit_config(args.preset, None, "cpu").config.stop
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory() as tmp:
        scan_path = str(Path(tmp) / "scan.h5")
        save_scan(scan, scan_path)
        for loss in ("mse", "poisson"):
            queue = ctx.Queue()
            proc = ctx.Process(target=_fit_worker, args=(scan_path, str(Path(tmp) / loss), args.preset, loss,
                                                         args.steps, args.every, args.threads, queue))
            proc.start()
            row = queue.get()
            proc.join()
            stop = _auto_stop(row["holdout_history"], defaults.patience, defaults.min_improvement)
            at_stop = [c for c in row["psnr_curve"] if stop is not None and c[0] <= stop]
            row["auto_stop"] = {"patience": defaults.patience, "min_improvement": defaults.min_improvement,
                                "step": stop, "psnr_db_at_step": at_stop[-1][2] if at_stop else None}
            rows[f"naf_{loss}"] = row
            print(f"naf_{loss:8s} PSNR {row['final']['psnr_db']:6.2f} dB  SSIM {row['final']['ssim_3d']:.3f}  "
                  f"{row['seconds']:.0f} s  {row['rays_per_s']:.0f} rays/s  peak RSS {row['peak_rss_mb']:.0f} MB  "
                  f"auto-stop at step {stop} ({row['auto_stop']['psnr_db_at_step']} dB)", flush=True)

    out = args.out or REPO / "benchmarks" / f"naf_{args.ct.stem.split('_')[0]}_{args.size}.json"
    result = {
        "benchmark": "NAF fit vs FDK, sparse noisy views, CPU",
        "ct": args.ct.name, "protocol": protocol.to_dict(), "preset": args.preset,
        "fit_config": json.loads(json.dumps(dataclasses.asdict(fit_config(args.preset, None, "cpu").config),
                                            default=str)),
        "steps": args.steps, "threads_per_fit": args.threads,
        "metrics": {k: DEFINITIONS[k] for k in ("psnr_db", "ssim_3d")},
        "rows": rows, **provenance(),
    }
    atomic_write_text(out, json.dumps(result, indent=2, default=float) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
