"""Training-step time of the fused kernels against the PyTorch path, side by side in one run.

For each configuration (``naf-fast``: the CPU preset, 1024 rays x 64 samples; ``naf``:
NAF's published field, 1024 rays x 192 samples; with ``--device cuda`` also 8192 rays x
192; the conditioned field at ``condcbnt-fast`` and CondCBNT's published sizes, at test time
(modulation trained, backbone frozen) and in pretraining (both trained)) and each backend
(torch, and cpp on the CPU or cuda on a GPU), one process runs ``--steps`` training steps
(forward, backward, Adam) of a NAF field on random rays of the
matching protocol and reports the median step time split into forward, backward and
Adam, ray-samples per second and the process's peak memory. The ratio torch / kernel in
the same run is the speed-up. With ``--main-job`` the README's main command (``nfrecon fit
--out DIR``, the built-in phantom) also runs end to end once per backend (wall time, peak
memory, PSNR).

The arithmetic lower bound of a step is the MLP's multiply-adds (forward, the backward's
recomputed forward, and the backward's two products: 4x the forward's) at the CPU's peak
fp32 FMA rate (cores x 2 FMA units x 16 lanes (AVX-512) x clock); the hash-grid lookups
(3 x levels x 8 corners per sample) are latency-bound gathers and are not in that bound.

    python scripts/bench_kernels.py --main-job          # CPU: benchmarks/kernels_cpu.json
    python scripts/bench_kernels.py --device cuda       # GPU: benchmarks/kernels_cuda.json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import queue as queue_module
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

from nfrecon.fields.base import use_backend
from nfrecon.fields.conditioned import Backbone, BackboneConfig, ConditionedField, ModulationConfig, ModulationField
from nfrecon.fields.hashgrid import HashGridConfig
from nfrecon.fields.mlp import MLPConfig
from nfrecon.fields.naf import NAFField, NAFFieldConfig
from nfrecon.fsutil import atomic_write_text
from nfrecon.geometry.protocols import get_protocol
from nfrecon.outputs.provenance import provenance
from nfrecon.render.raymarch import RayMarcher

REPO = Path(__file__).resolve().parents[1]

NAF_FAST = NAFFieldConfig(  # configs/naf-fast.yaml
    encoder=HashGridConfig(n_levels=8, n_features_per_level=2, log2_hashmap_size=16, base_resolution=8,
                           per_level_scale=1.5),
    mlp=MLPConfig(hidden=(32, 32, 32), skips=(2,)),
)
NAF = NAFFieldConfig()  # NAF's published field (configs/naf.yaml)
COND_FAST = (  # configs/condcbnt-fast.yaml: backbone, modulation
    BackboneConfig(encoder=HashGridConfig(n_levels=8, log2_hashmap_size=16, base_resolution=8, per_level_scale=1.5),
                   mlp=MLPConfig(hidden=(32, 32, 32), skips=())),
    ModulationConfig(encoder=HashGridConfig(n_levels=4, log2_hashmap_size=14, base_resolution=4, per_level_scale=1.5),
                     mlp=MLPConfig(hidden=(16,), skips=(), out_activation="none")),
)
COND = (BackboneConfig(), ModulationConfig())  # CondCBNT's published sizes (MLPs 3 x 128, FiLM 768)
# name: (protocol, field config, rays, samples, what is trained: "all" or "modulation")
CASES = {
    "naf-fast 1024x64": ("small", NAF_FAST, 1024, 64, "all"),
    "naf 1024x192": ("naf", NAF, 1024, 192, "all"),
    "naf 8192x192": ("naf", NAF, 8192, 192, "all"),
    "condcbnt-fast 1024x64 test-time": ("small", COND_FAST, 1024, 64, "modulation"),
    "condcbnt-fast 1024x64 pretrain": ("small", COND_FAST, 1024, 64, "all"),
    "condcbnt 1024x192 test-time": ("condcbnt", COND, 1024, 192, "modulation"),
}


def mlp_fmas(cfg) -> int:
    """Multiply-adds of one forward pass of the MLP(s) for one sample."""
    if isinstance(cfg, NAFFieldConfig):
        return sum(fi * fo for fi, fo in cfg.mlp.layer_shapes(cfg.encoder.n_output_dims, 1))
    backbone, modulation = cfg
    film = 2 * sum(backbone.film_widths)
    return (sum(fi * fo for fi, fo in backbone.mlp.layer_shapes(backbone.encoder.n_output_dims, 1))
            + sum(fi * fo for fi, fo in modulation.mlp.layer_shapes(modulation.encoder.n_output_dims, film)))


def make_field(field_cfg, vg, backend: str, trained: str) -> tuple[torch.nn.Module, list]:
    """The field of a case and the parameters its optimiser trains."""
    if isinstance(field_cfg, NAFFieldConfig):
        field = NAFField(field_cfg, vg, mu_max=0.05, backend=backend)
        return field, list(field.parameters())
    backbone = Backbone(field_cfg[0], mu_max=0.05)
    modulation = ModulationField(field_cfg[1], backbone.film_widths)
    field = ConditionedField(backbone, modulation, vg)
    use_backend(field, backend)
    if trained == "modulation":
        backbone.requires_grad_(False)
        return field, list(modulation.parameters())
    return field, list(field.parameters())


def cpu_peak_gflops(cores: int) -> tuple[float, float]:
    """(peak fp32 FMA/s in G, clock GHz) from /proc/cpuinfo's current clock: 2 FMA units x 16 lanes."""
    ghz = 2.0
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("cpu MHz"):
                ghz = float(line.split(":")[1]) / 1000
                break
    except OSError:
        pass
    return cores * 2 * 16 * ghz, ghz


def _step_worker(case: str, backend: str, device: str, steps: int, threads: int, queue) -> None:
    torch.set_num_threads(threads)
    warnings.simplefilter("ignore")
    protocol, field_cfg, n_rays, n_samples, trained = CASES[case]
    p = get_protocol(protocol)
    geom, vg = p.cone_geometry(), p.volume_geometry()
    dev = torch.device(device)
    torch.manual_seed(0)
    field, params = make_field(field_cfg, vg, backend, trained)
    field.to(dev)
    marcher = RayMarcher(geom, vg, n_samples, dev)
    opt = torch.optim.Adam(params, lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    jitter = torch.Generator(device=dev).manual_seed(1)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    times = []
    for i in range(steps + 3):
        rays = torch.randint(geom.n_rays, (n_rays,), generator=gen).to(dev)
        sync()
        t0 = time.perf_counter()
        loss = (marcher(field, rays, True, jitter) - 1.0).square().mean()
        sync()
        t1 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        sync()
        t2 = time.perf_counter()
        opt.step()
        sync()
        t3 = time.perf_counter()
        if i >= 3:  # warm-up: first calls allocate and load
            times.append((t1 - t0, t2 - t1, t3 - t2, t3 - t0))
    med = torch.tensor(times).median(dim=0).values.tolist()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    gpu_peak = torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else None
    queue.put({
        "case": case, "backend": backend, "rays": n_rays, "samples": n_samples, "steps_timed": steps,
        "forward_ms": med[0] * 1e3, "backward_ms": med[1] * 1e3, "adam_ms": med[2] * 1e3, "step_ms": med[3] * 1e3,
        "ray_samples_per_s": n_rays * n_samples / med[3], "peak_rss_mib": peak, "peak_gpu_mib": gpu_peak,
        "params": sum(q.numel() for q in field.parameters()), "trained_params": sum(q.numel() for q in params),
    })


def run_steps(case: str, backend: str, device: str, steps: int, threads: int) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_step_worker, args=(case, backend, device, steps, threads, queue))
    proc.start()
    while proc.is_alive() or not queue.empty():
        try:
            result = queue.get(timeout=5)
        except queue_module.Empty:  # still running, or died (the loop checks)
            pass
        else:
            proc.join()
            return result
    raise RuntimeError(f"{case} / {backend}: the worker died (exit code {proc.exitcode})")


def run_main_job(backend: str, threads: int) -> dict:
    """The README's main command with --backend: wall time, peak memory of the process, PSNR."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "demo"
        cmd = [sys.executable, "-m", "nfrecon", "fit", "--out", str(out), "--backend", backend]
        wrapper = ("import resource, subprocess, sys, time; t = time.perf_counter(); "
                   "r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL); "
                   "print(r.returncode, time.perf_counter() - t, "
                   "resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
        env = dict(os.environ, OMP_NUM_THREADS=str(threads))
        line = subprocess.run([sys.executable, "-c", wrapper, *cmd], check=False, capture_output=True, text=True,
                              env=env).stdout
        rc, wall, rss = line.split()
        metrics = json.loads((out / "metrics.json").read_text()) if int(rc) == 0 else {}
    g = metrics.get("vs_ground_truth", {})
    return {"backend": backend, "command": "nfrecon fit --out runs/demo --backend " + backend, "returncode": int(rc),
            "wall_s": float(wall), "peak_rss_mib": int(rss) / 1024, "psnr_db": g.get("psnr_db"),
            "ssim_3d": g.get("ssim_3d"), "steps_run": metrics.get("steps_run")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--steps", type=int, default=15, help="timed steps per configuration and backend")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads (default: all cores)")
    ap.add_argument("--main-job", action="store_true", help="also run the README's main command per backend")
    ap.add_argument("--out", type=Path, default=None, help="JSON path (default benchmarks/kernels_<device>.json)")
    args = ap.parse_args()
    kernel = "cpp" if args.device == "cpu" else "cuda"
    cases = [c for c in CASES if args.device == "cuda" or not c.startswith("naf 8192")]
    rows = []
    for case in cases:
        for backend in ("torch", kernel):
            r = run_steps(case, backend, args.device, args.steps, args.threads)
            rows.append(r)
            print(f"{case:<18} {backend:<6} step {r['step_ms']:8.1f} ms (fwd {r['forward_ms']:.1f}, bwd "
                  f"{r['backward_ms']:.1f}, adam {r['adam_ms']:.1f})  {r['ray_samples_per_s']:.3g} samples/s  "
                  f"peak {r['peak_rss_mib']:.0f} MiB", flush=True)
    speedups = {}
    peak, ghz = cpu_peak_gflops(args.threads)
    for case in cases:
        t, k = (next(r for r in rows if r["case"] == case and r["backend"] == b) for b in ("torch", kernel))
        _, field_cfg, n_rays, n_samples, _ = CASES[case]
        bound_ms = 4 * mlp_fmas(field_cfg) * n_rays * n_samples / (peak * 1e9) * 1e3
        speedups[case] = {"speedup": t["step_ms"] / k["step_ms"], "mlp_fma_bound_ms": bound_ms,
                          "kernel_over_bound": k["step_ms"] / bound_ms}
    print("\n| configuration | torch ms | kernel ms | speed-up | MLP-FMA bound ms | kernel / bound |")
    print("|---|---|---|---|---|---|")
    for case, s in speedups.items():
        t, k = (next(r for r in rows if r["case"] == case and r["backend"] == b) for b in ("torch", kernel))
        print(f"| {case} | {t['step_ms']:.1f} | {k['step_ms']:.1f} | {s['speedup']:.2f}x | "
              f"{s['mlp_fma_bound_ms']:.2f} | {s['kernel_over_bound']:.1f} |")
    main_job = []
    if args.main_job:
        for backend in ("torch", kernel):
            m = run_main_job(backend, args.threads)
            main_job.append(m)
            print(f"main job, {backend}: {m['wall_s']:.1f} s, peak {m['peak_rss_mib']:.0f} MiB, "
                  f"PSNR {m['psnr_db']}, steps {m['steps_run']}", flush=True)
    doc = {
        **provenance(torch.device(args.device)),
        "device": args.device, "threads": args.threads, "clock_ghz": ghz, "peak_fp32_gflops": peak,
        "steps": rows, "speedups": speedups, "main_job": main_job,
    }
    out = args.out or REPO / "benchmarks" / f"kernels_{args.device}.json"
    atomic_write_text(out, json.dumps(doc, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
