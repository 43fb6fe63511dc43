"""A bench run: check the options, simulate the scans, run every job, write tables and figures.

For each CT volume the scan is simulated once with all the views any condition needs
(Poisson noise with the protocol's photon count, seed ``seed + i`` for volume ``i``);
a condition with n views keeps ``protocol.with_views(n)`` of them (50 of 400 = every
8th) and "clean" swaps in the noiseless projections of the same views. Each scan is
saved as HDF5 (removed at the end unless ``keep_scans``), each method runs on it in a
fresh process by default, and results.md/.csv/.json are rewritten after every job, so
an interrupted bench leaves what it measured.

Folder layout under ``out``: results.md, results.csv, results.json, curves.png,
slices.png, runs/<volume>/gt.nii.gz and runs/<volume>/<views>v-<noise>/<method>/
(volume.nii.gz, preview.png, metrics.json, ...), scans/ (while running).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
import warnings
import zipfile
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import nfrecon
from nfrecon.bench import figures, table
from nfrecon.bench.config import DEFAULT_METHODS, BenchConfig
from nfrecon.bench.iterative import IterativeSettings
from nfrecon.bench.methods import run_job
from nfrecon.configio import load_yaml, to_dict
from nfrecon.data.nifti import write_nifti
from nfrecon.data.scan import Scan, save_scan
from nfrecon.data.sources import SOURCE_CT, ct_source
from nfrecon.data.volumes import read_ct
from nfrecon.devices import resolve_device
from nfrecon.errors import InputError
from nfrecon.fit.config import FitConfig
from nfrecon.fsutil import check_output_dir
from nfrecon.geometry.protocols import PROTOCOLS, Protocol, get_protocol
from nfrecon.geometry.volume import VolumeGeometry
from nfrecon.metrics import DEFINITIONS
from nfrecon.outputs.progress import format_duration
from nfrecon.outputs.provenance import provenance
from nfrecon.simulate import simulate_scan

PACKAGE_ROOT = Path(nfrecon.__file__).resolve().parents[1]


def default_ct_files() -> list[Path]:
    """The real CTs (``*.npz`` holding ``volume_hu``) in $NFRECON_DATA or ../shared/data."""
    folder = Path(os.environ.get("NFRECON_DATA", PACKAGE_ROOT.parent / "shared" / "data"))
    found = []
    for path in sorted(folder.glob("*.npz")) if folder.is_dir() else []:
        try:
            with zipfile.ZipFile(path) as z:
                if "volume_hu.npy" in z.namelist():
                    found.append(path)
        except (OSError, zipfile.BadZipFile):
            continue
    return found


def load_protocol(name: str, size: int | None) -> Protocol:
    """A preset or a YAML file of Protocol fields, scaled to ``size`` when given."""
    if name in PROTOCOLS or not name.endswith((".yaml", ".yml")):
        protocol = get_protocol(name)
    else:
        protocol = Protocol.from_dict(load_yaml(name))
    return protocol.scaled(size) if size is not None else protocol


@dataclass
class Volume:
    """A CT of the bench: its name (file stem), file, HU array [z, y, x] and grid."""

    name: str
    path: Path
    hu: np.ndarray
    geom: VolumeGeometry


@dataclass(frozen=True)
class FitSetup:
    """A neural method's configuration: the preset's name and the FitConfig it resolved to."""

    preset: str
    config: FitConfig


@dataclass
class Plan:
    """Everything a bench run needs, checked before anything is written."""

    cfg: BenchConfig
    protocol: Protocol
    volumes: list[Volume]
    methods: tuple[str, ...]
    skip: frozenset[tuple[str, int]]
    fits: dict[str, FitSetup]
    device: str
    command: str


def _check_positive(value, name: str) -> None:
    if value is not None and (int(value) != value or value < 1):
        raise InputError(f"--{name}: must be a positive integer, got {value}")


def _unique_names(paths: list[Path]) -> list[str]:
    names = []
    for path in paths:
        stem = path.name.split(".")[0] or "volume"
        name, k = stem, 2
        while name in names:
            name, k = f"{stem}-{k}", k + 1
        names.append(name)
    return names


def _skips(items, methods, views) -> frozenset[tuple[str, int]]:
    pairs = set()
    for item in items:
        method, _, n = str(item).partition(":")
        if method not in methods or not n.isdigit() or int(n) not in views:
            raise InputError(f"--skip: {item!r} is not METHOD:VIEWS with a method of --methods {' '.join(methods)} "
                             f"and views of --views {' '.join(map(str, views))}")
        pairs.add((method, int(n)))
    return frozenset(pairs)


def plan(cfg: BenchConfig, fits: dict[str, FitSetup], command: str) -> Plan:
    """Check the options and read the CTs; every problem is an InputError naming the option.

    ``fits``: the preset-resolved configuration of each neural method that may run
    (naf; condcbnt with the backbone's sizes), see ``nfrecon.cli.bench``.
    """
    if cfg.size is not None and cfg.size < 8:
        raise InputError(f"--size: must be an integer >= 8 (the SSIM window is 7 voxels), got {cfg.size}")
    protocol = load_protocol(cfg.protocol, cfg.size)
    if cfg.photons is not None:
        if not cfg.photons > 0:
            raise InputError(f"--photons: photon count must be positive, got {cfg.photons:g}")
        protocol = dataclasses.replace(protocol, photons=float(cfg.photons))
    for name, value in (("steps", cfg.steps), ("curve-points", cfg.curve_points), ("threads", cfg.threads),
                        ("iterative-iters", cfg.iterative_iters), ("jobs", cfg.jobs)):
        _check_positive(value, name)
    if cfg.jobs > 1 and not cfg.isolate:
        raise InputError(f"--jobs {cfg.jobs}: methods run at the same time only in their own processes "
                         "(drop --no-isolate)")
    if not cfg.views or len(set(cfg.views)) != len(cfg.views):
        raise InputError(f"--views: give one or more distinct numbers of views, got {list(cfg.views)}")
    for n in cfg.views:
        if not 1 <= n <= protocol.n_views:
            raise InputError(f"--views: {n} is not in [1, {protocol.n_views}] (the protocol's views)")
    if not cfg.noise or len(set(cfg.noise)) != len(cfg.noise):
        raise InputError(f"--noise: give noisy and/or clean once each, got {list(cfg.noise)}")
    if "noisy" in cfg.noise and not protocol.photons > 0:
        raise InputError(f"--noise noisy: protocol {protocol.name!r} has no photon count (photons = 0)")
    models = {"lpd": cfg.lpd_model, "unet": cfg.unet_model}
    methods = cfg.methods or DEFAULT_METHODS + (("condcbnt",) if cfg.backbone is not None else ()) + tuple(
        m for m, path in models.items() if path is not None)
    if len(set(methods)) != len(methods):
        raise InputError(f"--methods: a method is listed twice: {list(methods)}")
    if "condcbnt" in methods:
        if cfg.backbone is None:
            raise InputError("--methods condcbnt: needs --backbone (backbone.pt from 'nfrecon pretrain')")
        if not Path(cfg.backbone).is_file():
            raise InputError(f"--backbone {cfg.backbone}: no such file")
    for method, path in models.items():
        if method in methods and path is None:
            raise InputError(f"--methods {method}: needs --{method}-model (model.pt from 'nfrecon train-learned')")
        if method in methods and not Path(path).is_file():
            raise InputError(f"--{method}-model {path}: no such file")
    for method in methods:
        if method in ("naf", "condcbnt") and method not in fits:
            raise InputError(f"--methods {method}: no fit configuration given for it")
    skip = _skips(cfg.skip, methods, cfg.views)
    IterativeSettings("tv", cfg.iterative_iters, lam=cfg.lam).check(min(cfg.views))
    device = str(resolve_device(cfg.device))
    if cfg.sim_step_mm is not None and not cfg.sim_step_mm > 0:
        raise InputError(f"--sim-step-mm: must be positive, got {cfg.sim_step_mm}")
    check_output_dir(cfg.out)
    paths = list(cfg.ct) or default_ct_files()
    if not paths:
        raise InputError("--ct: no CT volumes given, and no real CTs found in ../shared/data (or $NFRECON_DATA)")
    volumes = []
    for name, path in zip(_unique_names(paths), paths):
        hu, geom = read_ct(path)
        volumes.append(Volume(name, Path(path), hu, geom))
    return Plan(cfg, protocol, volumes, tuple(methods), skip, fits, device, command)


# ---------------------------------------------------------------------- scans
def simulate_conditions(plan: Plan, volume: Volume, seed: int) -> tuple[dict[tuple[int, str], Scan], list[str]]:
    """The scan of every condition (views, noise) of one volume, and the simulation's warnings."""
    p, cfg = plan.protocol, plan.cfg
    subsets = {n: p.with_views(n).views for n in cfg.views}
    union = sorted(set().union(*subsets.values()))
    position = {v: i for i, v in enumerate(union)}
    full = dataclasses.replace(p, views=tuple(union))
    meta = {"source": str(volume.path), SOURCE_CT: ct_source(volume.path), "protocol": p.to_dict()}
    photons = p.photons if "noisy" in cfg.noise else None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        scan = simulate_scan(p.hu_to_mu(volume.hu), volume.geom, full.cone_geometry(), full.volume_geometry(),
                             photons=photons, seed=seed, step_mm=cfg.sim_step_mm, device=plan.device, metadata=meta,
                             backend=cfg.backend)
    scans = {}
    for n, views in subsets.items():
        sub = scan.views(np.asarray([position[v] for v in views]))
        for noise in cfg.noise:
            scans[n, noise] = sub if noise == "noisy" else dataclasses.replace(sub, projections=sub.clean, photons=None)
    return scans, sorted({str(w.message) for w in caught})


# ---------------------------------------------------------------------- jobs
def _job(plan: Plan, method: str, scan_path: Path, run_dir: Path) -> dict:
    cfg = plan.cfg
    job = {"method": method, "scan": str(scan_path), "out": str(run_dir), "device": plan.device,
           "threads": cfg.threads, "backend": cfg.backend}
    if method == "iterative":
        job.update(iters=cfg.iterative_iters, lam=cfg.lam)
    elif method in ("lpd", "unet"):
        job.update(model=str(cfg.lpd_model if method == "lpd" else cfg.unet_model))
    elif method in ("naf", "condcbnt"):
        fit = dataclasses.replace(plan.fits[method].config, backbone=cfg.backbone if method == "condcbnt" else None)
        job.update(fit=to_dict(fit), steps=cfg.steps, curve_points=cfg.curve_points, seed=cfg.seed)
    return job


def _run_isolated(job: dict, folder: Path) -> dict:
    """Run ``job`` in a fresh Python process (nfrecon.bench.worker); raise with its error."""
    job_path, record_path = folder / "job.json", folder / "record.json"
    job_path.write_text(json.dumps(job, indent=1))
    record_path.unlink(missing_ok=True)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PACKAGE_ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.run([sys.executable, "-m", "nfrecon.bench.worker", str(job_path), str(record_path)],
                          env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, check=False)
    if proc.returncode != 0 or not record_path.is_file():
        lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
        raise RuntimeError(lines[-1] if lines else f"worker exited with status {proc.returncode}")
    record = json.loads(record_path.read_text())
    job_path.unlink()
    record_path.unlink()
    return record


def _run_record(plan: Plan, job: dict, run_dir: Path) -> dict:
    """Run one job (in a fresh process unless --no-isolate); its record fields, status included."""
    try:
        if plan.cfg.isolate:
            return {**_run_isolated(job, run_dir), "status": "ok"}
        record = run_job(job)
        record["memory"]["peak_rss_mb"] = None  # the process's peak is not the method's own
        return {**record, "status": "ok"}
    except (RuntimeError, InputError, OSError) as exc:
        return {"status": "failed", "error": " ".join(str(exc).split())}


def _summary_line(record: dict) -> str:
    head = f"{record['volume']} {record['views']}v {record['noise']} {record['method']}"
    if record["status"] != "ok":
        return f"{head}: FAILED: {record['error']}"
    m = record["metrics"]
    return f"{head}: PSNR {m['psnr_db']:.2f} dB, SSIM {m['ssim_3d']:.3f}, {format_duration(record['seconds'])}"


def results_document(plan: Plan, volumes_info: list[dict], records: list[dict], started: str) -> dict:
    """Everything results.json holds (and results.md / .csv are made of)."""
    cfg, p = plan.cfg, plan.protocol
    return {
        "format": "nfrecon-bench",
        "version": 1,
        "started": started,
        **provenance(plan.device),
        "command": plan.command,
        "device": plan.device,
        "protocol": p.to_dict(),
        "protocol_description": p.describe(),
        "size": cfg.size,
        "conditions": [{"views": n, "noise": noise} for n in cfg.views for noise in cfg.noise],
        "methods": list(plan.methods),
        "settings": {
            "iterative": {"method": "tv", "iters": IterativeSettings("tv", cfg.iterative_iters).n_iter, "lam": cfg.lam},
            "neural": {m: {"preset": plan.fits[m].preset,
                           "steps": cfg.steps or plan.fits[m].config.steps,
                           "backbone": str(cfg.backbone) if m == "condcbnt" else None}
                       for m in plan.methods if m in ("naf", "condcbnt")},
            "skipped": sorted(f"{m}:{n}" for m, n in plan.skip),
            "seed": cfg.seed,
            "sim_step_mm": cfg.sim_step_mm,
            "isolated": cfg.isolate,
            "threads": cfg.threads,
        },
        "volumes": volumes_info,
        "definitions": {**DEFINITIONS, **table.DEFINITIONS},
        "results": records,
        "summary": table.summarize(records),
    }


def run_bench(plan: Plan) -> dict:
    """Run the planned bench; returns the results document (also written to ``out``)."""
    cfg = plan.cfg
    out = Path(cfg.out)
    scans_dir, runs_dir = out / "scans", out / "runs"
    scans_dir.mkdir(parents=True, exist_ok=True)
    started = time.strftime("%Y-%m-%d %H:%M:%S %z")
    records: list[dict] = []
    volumes_info: list[dict] = []
    runs = [(n, method) for n in cfg.views for method in plan.methods if (method, n) not in plan.skip]
    total = len(plan.volumes) * len(cfg.noise) * len(runs)
    print(f"bench: {len(plan.volumes)} volume(s) x {len(cfg.views) * len(cfg.noise)} condition(s) x "
          f"{len(plan.methods)} method(s){' less the skipped' if plan.skip else ''} = {total} runs; "
          f"{plan.protocol.describe()}", flush=True)
    pool = ThreadPoolExecutor(max_workers=cfg.jobs)
    pending: dict[Future, tuple[int, dict]] = {}
    finished: dict[int, dict] = {}

    def finish() -> None:
        """Wait for the submitted jobs; record each as it ends (records keep the planned order)."""
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                index, record = pending.pop(future)
                finished[index] = {**record, **future.result()}
                records[:] = [finished[k] for k in sorted(finished)]
                print(f"[{len(records)}/{total}] {_summary_line(finished[index])}", flush=True)
                table.write_all(out, results_document(plan, volumes_info, records, started))

    for i, volume in enumerate(plan.volumes):
        t0 = time.perf_counter()
        scans, sim_warnings = simulate_conditions(plan, volume, cfg.seed + i)
        any_scan = next(iter(scans.values()))
        write_nifti(runs_dir / volume.name / "gt.nii.gz", any_scan.gt, any_scan.gt_geom)
        volumes_info.append({"name": volume.name, "path": str(volume.path), "shape": list(volume.hu.shape),
                             "spacing_mm": list(volume.geom.voxel_size), "seed": cfg.seed + i,
                             "gt": f"runs/{volume.name}/gt.nii.gz", "simulation_warnings": sim_warnings,
                             "simulation_seconds": time.perf_counter() - t0})
        for text in sim_warnings:
            print(f"warning: {volume.name}: {text}", file=sys.stderr)
        for (n, noise), scan in scans.items():
            scan_path = save_scan(scan, scans_dir / f"{volume.name}_{n}v_{noise}.h5")
            for method in (m for m in plan.methods if (m, n) not in plan.skip):
                rel = Path("runs") / volume.name / f"{n}v-{noise}" / method
                run_dir = out / rel
                run_dir.mkdir(parents=True, exist_ok=True)
                record = {"volume": volume.name, "views": n, "noise": noise, "method": method,
                          "run_dir": str(rel), "volume_path": str(rel / "volume.nii.gz")}
                future = pool.submit(_run_record, plan, _job(plan, method, scan_path, run_dir), run_dir)
                pending[future] = (len(finished) + len(pending), record)
        finish()  # before the next volume's simulation, so that it does not slow these jobs
    pool.shutdown()
    document = results_document(plan, volumes_info, records, started)
    table.write_all(out, document)
    figures.write_all(out, document)
    if not cfg.keep_scans:
        shutil.rmtree(scans_dir, ignore_errors=True)
    return document
