"""The bench's tables: per-volume records -> summary rows -> results.md, results.csv, results.json.

:func:`summarize` groups the records by (method, views, noise); :func:`render_markdown`
lays the summary out in the seeds' layout (method x views x noisy/clean) with the
published numbers (:mod:`nfrecon.bench.published`) beside the measured ones, then the
per-volume rows; :func:`write_all` writes the three files atomically. Everything is
made from the results document (results.json), so the markdown can be re-rendered from
a saved run (scripts/bench_table.py).
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import numpy as np

from nfrecon.bench.published import PUBLISHED, SOURCE
from nfrecon.fsutil import atomic_write_text
from nfrecon.outputs.progress import format_duration

METHOD_ORDER = ("fdk", "iterative", "naf", "condcbnt", "unet", "lpd")
NOISE_ORDER = ("noisy", "clean")
LABELS = {"fdk": "FDK", "iterative": "Iterative (TV)", "naf": "NAF", "condcbnt": "CondCBNT", "unet": "FDK + U-Net",
          "lpd": "Learned primal-dual"}

DEFINITIONS = {
    "mean_std": "mean over the volumes +- sample standard deviation (ddof = 1; none for one volume)",
    "seconds": "wall time of the reconstruction per volume, scan in memory -> volume in memory "
    "(neural fits: set-up, fitting and export, without the PSNR evaluations of the curves)",
    "peak_rss_mb": "peak resident set size (MiB) of the fresh process that ran only this method "
    "(getrusage ru_maxrss; includes Python, torch and the scan: see baseline_rss_mb)",
    "baseline_rss_mb": "peak resident set size (MiB) of that process before the method started",
    "cuda_peak_mb": "torch.cuda.max_memory_allocated (MiB) during the method (CUDA runs only)",
}

CSV_COLUMNS = ("volume", "method", "views", "noise", "status", "psnr_db", "ssim_3d", "ssim_2d_mean_3axes", "mae",
               "rmse", "data_range", "seconds", "peak_rss_mb", "baseline_rss_mb", "cuda_peak_mb", "volume_path",
               "error", "device", "cpu", "cores", "torch", "commit", "command")


def _order(record: dict) -> tuple:
    method = record["method"]
    return (METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER), method,
            record["views"], NOISE_ORDER.index(record["noise"]) if record["noise"] in NOISE_ORDER else 9)


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    values = [float(v) for v in values if v is not None]
    if not values:
        return None, None
    return float(np.mean(values)), (float(np.std(values, ddof=1)) if len(values) > 1 else None)


def _max(values) -> float | None:
    values = [float(v) for v in values if v is not None]
    return max(values) if values else None


def summarize(records: list[dict]) -> list[dict]:
    """One row per (method, views, noise) over the successful records (means, stds, maxima)."""
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault((r["method"], r["views"], r["noise"]), []).append(r)
    rows = []
    for (method, views, noise), group in sorted(groups.items(), key=lambda kv: _order(kv[1][0])):
        ok = [r for r in group if r["status"] == "ok"]
        psnr, psnr_std = _mean_std([r["metrics"]["psnr_db"] for r in ok])
        ssim, ssim_std = _mean_std([r["metrics"]["ssim_3d"] for r in ok])
        seconds, seconds_std = _mean_std([r["seconds"] for r in ok])
        rows.append({
            "method": method, "views": views, "noise": noise, "volumes": [r["volume"] for r in ok],
            "failed": [r["volume"] for r in group if r["status"] != "ok"],
            "psnr_db": psnr, "psnr_db_std": psnr_std, "ssim_3d": ssim, "ssim_3d_std": ssim_std,
            "seconds": seconds, "seconds_std": seconds_std,
            "peak_rss_mb": _max(r["memory"]["peak_rss_mb"] for r in ok),
            "baseline_rss_mb": _max(r["memory"]["baseline_rss_mb"] for r in ok),
            "cuda_peak_mb": _max(r["memory"]["cuda_peak_mb"] for r in ok),
        })
    return rows


# ---------------------------------------------------------------------- markdown
def _pm(mean: float | None, std: float | None, digits: int) -> str:
    if mean is None:
        return "-"
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None else "")


def _memory(row: dict) -> str:
    if row.get("cuda_peak_mb") is not None:
        return f"{row['cuda_peak_mb']:.0f} (CUDA)"
    if row.get("peak_rss_mb") is None:
        return "-"
    return f"{row['peak_rss_mb']:.0f} (+{row['peak_rss_mb'] - row['baseline_rss_mb']:.0f})"


def _seconds(value: float | None) -> str:
    return "-" if value is None else format_duration(value)


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _comparison_rows(doc: dict) -> list[list[str]]:
    measured = {(r["method"], r["views"], r["noise"]): r for r in doc["summary"]}
    keys = sorted(set(measured) | set(PUBLISHED),
                  key=lambda k: _order({"method": k[0], "views": k[1], "noise": k[2]}))
    rows = []
    for key in keys:
        method, views, noise = key
        m = measured.get(key)
        if m is not None and m["psnr_db"] is not None:
            ours = [_pm(m["psnr_db"], m["psnr_db_std"], 2), _pm(m["ssim_3d"], m["ssim_3d_std"], 3),
                    _seconds(m["seconds"]), _memory(m)]
        else:
            ours = ["failed" if m is not None else "not run", "", "", ""]
        pub = PUBLISHED.get(key)
        theirs = [f"{pub[0]:.2f}", f"{pub[1]:.2f}", _seconds(pub[2])] if pub else ["-", "-", "-"]
        rows.append([LABELS.get(method, method), str(views), noise, *ours, *theirs])
    return rows


def _volume_rows(doc: dict) -> list[list[str]]:
    rows = []
    for r in sorted(doc["results"], key=lambda r: (_order(r), r["volume"])):
        if r["status"] == "ok":
            m = r["metrics"]
            mem = _memory(r["memory"])
            cells = [f"{m['psnr_db']:.2f}", f"{m['ssim_3d']:.3f}", f"{m['ssim_2d_mean_3axes']:.3f}",
                     _seconds(r["seconds"]), mem]
        else:
            cells = ["failed: " + r.get("error", ""), "", "", "", ""]
        rows.append([r["volume"], LABELS.get(r["method"], r["method"]), str(r["views"]), r["noise"], *cells])
    return rows


def render_markdown(doc: dict) -> str:
    """results.md of a results document."""
    p, machine = doc["protocol"], doc["machine"]
    size = doc.get("size")
    scale = (f"scaled to {size}^3 voxels of {p['voxel_size'][0]:g} mm and {p['det_shape'][0]}x{p['det_shape'][1]} "
             f"detector pixels of {p['pixel_size'][1]:g} mm (same field of view)" if size else "at full size")
    settings, d = doc["settings"], doc["definitions"]
    neural = "; ".join(f"{LABELS.get(m, m)}: preset {s['preset']}, {s['steps']} steps (automatic stopping on)"
                       + (f", backbone {s['backbone']}" if s.get("backbone") else "")
                       for m, s in settings["neural"].items())
    it = settings["iterative"]
    gpu = f", GPU {machine['gpu']}" if machine.get("gpu") else ""
    threads = ", ".join(sorted({str(r["torch_threads"]) for r in doc["results"] if "torch_threads" in r})) or "-"
    volumes = ", ".join(f"{v['name']} ({'x'.join(map(str, v['shape']))} voxels of "
                        f"{'x'.join(f'{s:g}' for s in v['spacing_mm'])} mm)" for v in doc["volumes"])
    parts = [
        f"# nfrecon bench: {p['name']} protocol, {scale}",
        "",
        (f"Protocol: {doc['protocol_description']}. Conditions take their views from the full set "
         f"(e.g. 50 of 400 = every 8th view); noisy = Poisson noise with {p['photons']:g} photons per pixel, "
         "clean = noiseless projections of the same views."),
        "",
        f"Volumes: {volumes}.",
        "",
        (f"Machine: {machine['cpu']}, {machine['cores']} cores, torch {machine['torch']} "
         f"({threads} threads per method), device {doc['device']}{gpu}. "
         f"Commit {doc['commit']}. Started {doc['started']}."),
        "",
        f"Command: `{doc['command']}`",
        "",
        (f"Settings: Iterative (TV): Chambolle-Pock, {it['iters']} iterations, relative lam {it['lam']:g}; "
         f"{neural or 'no neural fits'}; seed {settings['seed']}"
         + (f"; not run: {', '.join(settings['skipped'])}" if settings.get("skipped") else "") + "."),
        "",
        "## Measured here vs published",
        "",
        ("Measured: mean ± sample std over the volumes above, on this protocol size and this machine. "
         f"Published: {SOURCE}. Different volumes, grid size and hardware: compare trends, not digits."),
        "",
        _md_table(["method", "views", "noise", "PSNR dB (measured)", "SSIM (measured)", "s / volume (measured)",
                   "peak MiB (measured)", "PSNR dB (published)", "SSIM (published)", "s / volume (published)"],
                  _comparison_rows(doc)),
        "",
        (f"PSNR: {d['psnr_db']} (R = max of the ground truth on the reconstruction grid). "
         f"SSIM (measured): {d['ssim_3d']}. Seconds: {d['seconds']}. Peak MiB: {d['peak_rss_mb']}; in brackets "
         "how far it rose above the process's peak before the method started; on CUDA the peak of torch's "
         "allocations."),
        "",
        "## Per volume",
        "",
        _md_table(["volume", "method", "views", "noise", "PSNR dB", "SSIM 3D", "SSIM 2D (3 axes)", "seconds",
                   "peak MiB"], _volume_rows(doc)),
        "",
    ]
    warned = [f"- {v['name']}: {w}" for v in doc["volumes"] for w in v.get("simulation_warnings", [])]
    warned += [f"- {r['volume']} {r['views']}v {r['noise']} {r['method']}: {w}"
               for r in doc["results"] for w in r.get("warnings", [])]
    if warned:
        parts += ["## Warnings", "", *warned, ""]
    return "\n".join(parts)


# ---------------------------------------------------------------------- csv / json
def render_csv(doc: dict) -> str:
    """One row per record (volume x method x condition), with the machine, commit and command."""
    machine = doc["machine"]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for r in sorted(doc["results"], key=lambda r: (_order(r), r["volume"])):
        metrics, memory = r.get("metrics", {}), r.get("memory", {})
        row = {k: r.get(k) for k in ("volume", "method", "views", "noise", "status", "seconds", "volume_path", "error")}
        row.update({k: metrics.get(k)
                    for k in ("psnr_db", "ssim_3d", "ssim_2d_mean_3axes", "mae", "rmse", "data_range")})
        row.update({k: memory.get(k) for k in ("peak_rss_mb", "baseline_rss_mb", "cuda_peak_mb")})
        row.update(device=r.get("device", doc["device"]), cpu=machine["cpu"], cores=machine["cores"],
                   torch=machine["torch"], commit=doc["commit"], command=doc["command"])
        writer.writerow({k: "" if v is None else v for k, v in row.items()})
    return buf.getvalue()


def _json_safe(value):
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def write_all(out: Path, doc: dict) -> None:
    """results.json, results.csv and results.md in ``out``, each atomically."""
    out = Path(out)
    atomic_write_text(out / "results.json", json.dumps(_json_safe(doc), indent=1) + "\n")
    atomic_write_text(out / "results.csv", render_csv(doc))
    atomic_write_text(out / "results.md", render_markdown(doc))
