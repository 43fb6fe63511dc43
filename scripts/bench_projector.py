"""Voxel projector and backprojector: torch vs cpp vs RTK's Joseph, and TV, in one run.

Case 1 (issue "Fused kernels II"): the torso CT of ../shared/data resampled onto the CondCBNT
protocol scaled to 128^3 (4 mm voxels), 50 views (every 8th of 400 over 205 deg) of 128x128
(4 mm pixels), one sample per voxel (projector step = voxel size), float32. For each of
torch (grid_sample reference), cpp (fused CPU kernels) and RTK's Joseph forward and back
projectors (itk-rtk), the median wall time of ``--repeats`` calls after one warm-up, with the
same thread count for all (torch.set_num_threads and ITK's global default thread count).
Agreement with RTK: mean relative difference over the rays (voxels) where RTK's result
exceeds 5% of its maximum; the backprojections all backproject RTK's forward projection.

Case 2: TV (Chambolle-Pock, ``--tv-iters`` iterations, the bench's relative lam) on the
64^3 table scan (the same protocol scaled to 64^3, 50 noisy views of the torso CT), torch
vs cpp projector: seconds, PSNR against the ground truth, and the largest difference of the
two reconstructions relative to their maximum. With ``--tv-torch-iters N`` torch runs N
iterations only and cpp runs both N and ``--tv-iters``: the speed-up is at N iterations
(operator norm and scale included on both sides).

    python scripts/bench_projector.py --threads 2     # benchmarks/projector_cpu.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from nfrecon.bench.iterative import IterativeSettings, reconstruct
from nfrecon.data.resample import resample
from nfrecon.data.volumes import read_ct
from nfrecon.fsutil import atomic_write_text
from nfrecon.geometry.protocols import get_protocol
from nfrecon.metrics import psnr
from nfrecon.ops.projector import VoxelProjector
from nfrecon.outputs.provenance import provenance
from nfrecon.simulate import simulate_scan

REPO = Path(__file__).resolve().parents[1]
CT = REPO.parent / "shared" / "data" / "torso_ct_totalsegmentator_3mm.npz"


def median_seconds(fn, repeats: int) -> tuple[float, object]:
    out = fn()  # warm-up (kernel load, RTK wrappers, caches)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def mean_rel(a: np.ndarray, ref: np.ndarray) -> float:
    """Mean |a - ref| / ref where ref > 5% of its maximum."""
    mask = ref > 0.05 * ref.max()
    return float(np.mean(np.abs(a[mask] - ref[mask]) / ref[mask]))


class RTKJoseph:
    """RTK's Joseph forward and back projectors, filters built once (Update() is what is timed)."""

    def __init__(self, vol_geom, geom):
        import itk
        from itk import RTK

        from nfrecon.geometry.interop import rtk as rtk_io

        self.itk, self.io, self.vg, self.geom = itk, rtk_io, vol_geom, geom
        origin, spacing = rtk_io.projection_image_frame(geom)
        self.stack0 = rtk_io.constant_image(geom.proj_shape, origin, spacing)
        self.vol0 = rtk_io.volume_to_rtk_image(np.zeros(vol_geom.shape, np.float32), vol_geom)
        image = type(self.stack0)
        self.fwd = RTK.JosephForwardProjectionImageFilter[image, image].New()
        self.back = RTK.JosephBackProjectionImageFilter[image, image].New()
        for f in (self.fwd, self.back):
            f.SetGeometry(rtk_io.to_rtk_geometry(geom))
            f.InPlaceOff()  # in place, a second Update() would find its input's buffer taken
        self.fwd.SetInput(0, self.stack0)
        self.back.SetInput(0, self.vol0)

    def set_volume(self, volume: np.ndarray):
        self.fwd.SetInput(1, self.io.volume_to_rtk_image(volume, self.vg))

    def set_projections(self, proj: np.ndarray):
        self.back.SetInput(1, self.io.projections_to_rtk_image(proj, self.geom))

    def forward(self) -> np.ndarray:
        self.fwd.Modified()
        self.fwd.Update()
        return np.asarray(self.itk.array_from_image(self.fwd.GetOutput()), dtype=np.float32)

    def backward(self) -> np.ndarray:
        self.back.Modified()
        self.back.Update()
        return self.io.volume_from_rtk_image(self.back.GetOutput())[0]


def projector_case(size: int, n_views: int, repeats: int) -> dict:
    protocol = get_protocol("condcbnt").scaled(size).with_views(n_views)
    geom, vg = protocol.cone_geometry(), protocol.volume_geometry()
    hu, ct_geom = read_ct(CT)
    mu = resample(torch.from_numpy(protocol.hu_to_mu(hu).astype(np.float32)), ct_geom, vg).contiguous()
    step = float(min(vg.voxel_size))  # one sample per voxel
    rtk = RTKJoseph(vg, geom)
    rtk.set_volume(mu.numpy())
    t_rtk_fwd, ref = median_seconds(rtk.forward, repeats)
    rtk.set_projections(ref)
    t_rtk_back, ref_back = median_seconds(rtk.backward, repeats)
    rows = {"rtk-joseph": {"forward_ms": 1e3 * t_rtk_fwd, "back_ms": 1e3 * t_rtk_back}}
    y = torch.from_numpy(ref)
    for backend in ("torch", "cpp"):
        A = VoxelProjector(vg, geom, step_mm=step, backend=backend)
        with torch.no_grad():
            t_fwd, proj = median_seconds(lambda A=A: A(mu), repeats)
            t_back, back = median_seconds(lambda A=A: A.T(y), repeats)
        rows[backend] = {
            "forward_ms": 1e3 * t_fwd, "back_ms": 1e3 * t_back,
            "forward_ratio_to_rtk": t_fwd / t_rtk_fwd, "back_ratio_to_rtk": t_back / t_rtk_back,
            "forward_mean_rel_diff_to_rtk": mean_rel(proj.numpy(), ref),
            "back_mean_rel_diff_to_rtk": mean_rel(back.numpy(), ref_back),
        }
        print(f"  {backend}: forward {1e3 * t_fwd:.0f} ms, back {1e3 * t_back:.0f} ms", flush=True)
    rows["cpp"]["forward_speedup_vs_torch"] = rows["torch"]["forward_ms"] / rows["cpp"]["forward_ms"]
    rows["cpp"]["back_speedup_vs_torch"] = rows["torch"]["back_ms"] / rows["cpp"]["back_ms"]
    return {"volume": CT.name, "protocol": protocol.describe() if hasattr(protocol, "describe") else str(protocol),
            "grid": list(vg.shape), "voxel_mm": list(vg.voxel_size), "proj_shape": list(geom.proj_shape),
            "step_mm": step, "dtype": "float32", "repeats": repeats, "results": rows}


def tv_case(size: int, n_views: int, iters: int, torch_iters: int, seed: int) -> dict:
    protocol = get_protocol("condcbnt").scaled(size).with_views(n_views)
    geom, vg = protocol.cone_geometry(), protocol.volume_geometry()
    hu, ct_geom = read_ct(CT)
    scan = simulate_scan(protocol.hu_to_mu(hu), ct_geom, geom, vg, photons=protocol.photons, seed=seed, device="cpu")
    proj, gt = torch.from_numpy(scan.projections), torch.from_numpy(scan.gt)
    out, volumes = {}, {}
    runs = [("cpp", iters), ("torch", torch_iters)]
    if torch_iters != iters:
        runs.insert(1, ("cpp", torch_iters))  # the same iterations as torch: same fixed costs
    for backend, n in runs:
        start = time.perf_counter()
        result, _ = reconstruct(proj, geom, vg, IterativeSettings("tv", n, backend=backend))
        seconds = time.perf_counter() - start
        volumes[backend, n] = result.volume
        out[f"{backend}_{n}"] = {"backend": backend, "iterations": n, "seconds": seconds,
                                 "psnr_db": float(psnr(result.volume, gt))}
        print(f"  TV {backend}: {n} iterations in {seconds:.1f} s, PSNR {out[f'{backend}_{n}']['psnr_db']:.2f} dB",
              flush=True)
    # speed-up at equal iterations (operator norm, scale and iterations all included)
    out["speedup"] = out[f"torch_{torch_iters}"]["seconds"] / out[f"cpp_{torch_iters}"]["seconds"]
    out["speedup_iterations"] = torch_iters
    a, b = volumes["cpp", torch_iters], volumes["torch", torch_iters]
    out["max_rel_diff_cpp_vs_torch"] = float((a - b).abs().max() / b.abs().max())
    return {"volume": CT.name, "grid": list(vg.shape), "views": n_views, "photons": protocol.photons,
            "seed": seed, "lam": IterativeSettings("tv").lam, "results": out}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2, help="torch and ITK threads (default 2)")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--views", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--tv-size", type=int, default=64)
    ap.add_argument("--tv-iters", type=int, default=100)
    ap.add_argument("--tv-torch-iters", type=int, default=None,
                    help="iterations of the torch TV run (default --tv-iters; fewer: compare per iteration)")
    ap.add_argument("--seed", type=int, default=1, help="noise seed of the TV scan (the table's torso seed)")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "projector_cpu.json")
    args = ap.parse_args()

    import itk

    torch.set_num_threads(args.threads)
    itk.MultiThreaderBase.SetGlobalDefaultNumberOfThreads(args.threads)
    print(f"projector, {args.size}^3, {args.views} views, {args.threads} threads", flush=True)
    proj = projector_case(args.size, args.views, args.repeats)
    print(f"TV, {args.tv_size}^3, {args.views} views", flush=True)
    tv = tv_case(args.tv_size, args.views, args.tv_iters, args.tv_torch_iters or args.tv_iters, args.seed)

    print(f"\n{'':12s} {'forward ms':>11s} {'ratio RTK':>9s} {'rel diff':>9s} "
          f"{'back ms':>9s} {'ratio RTK':>9s} {'rel diff':>9s}")
    for name, r in proj["results"].items():
        if name == "rtk-joseph":
            print(f"{name:12s} {r['forward_ms']:11.0f} {'1':>9s} {'-':>9s} {r['back_ms']:9.0f} {'1':>9s} {'-':>9s}")
        else:
            print(f"{name:12s} {r['forward_ms']:11.0f} {r['forward_ratio_to_rtk']:9.2f} "
                  f"{100 * r['forward_mean_rel_diff_to_rtk']:8.3f}% {r['back_ms']:9.0f} "
                  f"{r['back_ratio_to_rtk']:9.2f} {100 * r['back_mean_rel_diff_to_rtk']:8.3f}%")
    t = tv["results"]
    n = t["speedup_iterations"]
    print(f"\nTV ({n} iterations): torch {t[f'torch_{n}']['seconds']:.1f} s, cpp {t[f'cpp_{n}']['seconds']:.1f} s: "
          f"{t['speedup']:.1f}x; cpp, {args.tv_iters} iterations: {t[f'cpp_{args.tv_iters}']['seconds']:.1f} s")
    doc = {"format": "nfrecon-bench-projector", "version": 1, **provenance(), "threads": args.threads,
           "definitions": {
               "ms": "median wall time of repeats calls after one warm-up, one process, same thread count",
               "ratio_to_rtk": "our time / RTK's Joseph time (<= 1: faster than RTK)",
               "mean_rel_diff_to_rtk": "mean |ours - RTK| / RTK over rays (voxels) where RTK > 5% of its max",
               "tv_seconds": "wall time of reconstruct() (operator norm, scale and the iterations)"},
           "projector": proj, "tv": tv}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(doc, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
