"""The bench's figures (matplotlib's Agg canvas): PSNR over time, and one slice of every method.

curves.png: one panel per condition (views, noise); PSNR (dB) against the method's own
wall time (s, log axis) for every volume: the neural fits as lines through their
periodic evaluations, the iterative method per iteration, FDK as a single point.
slices.png: one row per volume and condition, the axial mid-slice of the ground truth
and of every method (radiological orientation, as in the previews), one grey window per
row (0 to the ground truth's 99.5th percentile of mu), PSNR in each title.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from nfrecon.bench.table import LABELS, METHOD_ORDER
from nfrecon.data.nifti import read_nifti
from nfrecon.fsutil import atomic_path
from nfrecon.outputs.preview import orthogonal_panels

COLORS = {"fdk": "tab:gray", "iterative": "tab:blue", "naf": "tab:orange", "condcbnt": "tab:green"}
LINESTYLES = ("-", "--", ":", "-.")


def _figure(rows: int, cols: int, size: tuple[float, float]):
    """A figure on the Agg canvas (no pyplot state) and its (rows, cols) axes."""
    fig = Figure(figsize=(size[0] * cols, size[1] * rows))
    FigureCanvasAgg(fig)
    return fig, fig.subplots(rows, cols, squeeze=False)


def _save(fig: Figure, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)


def _conditions(doc: dict) -> list[tuple[int, str]]:
    return [(c["views"], c["noise"]) for c in doc["conditions"]]


def _methods(doc: dict) -> list[str]:
    return sorted(doc["methods"], key=lambda m: METHOD_ORDER.index(m) if m in METHOD_ORDER else 99)


def plot_curves(path: Path, doc: dict) -> None:
    """curves.png (module doc)."""
    conditions = _conditions(doc)
    style = {v["name"]: LINESTYLES[i % len(LINESTYLES)] for i, v in enumerate(doc["volumes"])}
    cols = min(2, len(conditions))
    rows = -(-len(conditions) // cols)
    fig, axes = _figure(rows, cols, (6, 4))
    for ax, (views, noise) in zip(axes.flat, conditions):
        for r in doc["results"]:
            if r["status"] != "ok" or (r["views"], r["noise"]) != (views, noise) or not r.get("curve"):
                continue
            t, psnr = np.asarray([c[0] for c in r["curve"]]), np.asarray([c[1] for c in r["curve"]])
            keep = t > 0
            label = f"{LABELS.get(r['method'], r['method'])}, {r['volume']}"
            ax.plot(t[keep], psnr[keep], style[r["volume"]], color=COLORS.get(r["method"]),
                    marker="o" if len(t) == 1 else ".", markersize=6 if len(t) == 1 else 3, label=label)
        ax.set_xscale("log")
        ax.set_xlabel("wall time of the method (s)")
        ax.set_ylabel("PSNR (dB)")
        ax.set_title(f"{views} views, {noise}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(conditions):]:
        ax.axis("off")
    fig.suptitle(f"PSNR over time, {doc['protocol']['name']} protocol"
                 + (f" at {doc['size']}^3" if doc.get("size") else ""), fontsize=11)
    fig.tight_layout()
    _save(fig, path)


def plot_slices(path: Path, out: Path, doc: dict) -> None:
    """slices.png (module doc); volumes are read back from the run folders under ``out``."""
    methods = _methods(doc)
    by_key = {(r["volume"], r["views"], r["noise"], r["method"]): r for r in doc["results"]}
    rows = [(v, c) for v in doc["volumes"] for c in _conditions(doc)]
    cols = 1 + len(methods)
    fig, axes = _figure(len(rows), cols, (2.6, 2.8))
    for (volume, (views, noise)), row_axes in zip(rows, axes):
        gt, geom, _ = read_nifti(out / volume["gt"])
        hi = float(np.percentile(gt, 99.5)) or 1.0
        panels = [("ground truth", gt, None)]
        for method in methods:
            r = by_key.get((volume["name"], views, noise, method))
            if r is not None and r["status"] == "ok":
                panels.append((LABELS.get(method, method), read_nifti(out / r["volume_path"])[0],
                               r["metrics"]["psnr_db"]))
            else:
                panels.append((LABELS.get(method, method), None, None))
        for ax, (label, vol, psnr) in zip(row_axes, panels):
            ax.set_xticks([])
            ax.set_yticks([])
            if vol is None:
                ax.set_title(f"{label}: not run", fontsize=8)
                continue
            ax.imshow(orthogonal_panels(vol, geom)["axial"], cmap="gray", vmin=0.0, vmax=hi)
            ax.set_title(label + (f"  {psnr:.2f} dB" if psnr is not None else ""), fontsize=8)
        row_axes[0].set_ylabel(f"{volume['name']}\n{views} views, {noise}", fontsize=8)
    fig.suptitle("axial mid-slice, mu window 0 .. 99.5th percentile of the ground truth", fontsize=10)
    fig.tight_layout()
    _save(fig, path)


def write_all(out: Path, doc: dict) -> None:
    """curves.png and slices.png in ``out``."""
    out = Path(out)
    plot_curves(out / "curves.png", doc)
    plot_slices(out / "slices.png", out, doc)
