"""The files every reconstruction leaves in its run folder.

``volume.nii.gz`` (float32 mu in 1/mm, or int16 HU on request), ``preview.png`` (three
orthogonal mid-slices) and ``metrics.json`` (quality against the ground truth when there
is one, plus whatever the method reports). Each file is written atomically.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from nfrecon.data.hu import MU_WATER
from nfrecon.data.nifti import write_nifti
from nfrecon.fsutil import atomic_paths, atomic_write_text
from nfrecon.geometry.volume import VolumeGeometry
from nfrecon.metrics import evaluate
from nfrecon.outputs.preview import save_preview


def write_results(
    out: str | os.PathLike,
    volume: np.ndarray,
    vol_geom: VolumeGeometry,
    *,
    gt: np.ndarray | None = None,
    info: dict | None = None,
    title: str | None = None,
    hu: bool = False,
    mu_water: float = MU_WATER,
) -> dict:
    """Write volume.nii.gz, preview.png and metrics.json into ``out``; return the metrics.

    volume, gt: [z, y, x] mu (1/mm) on ``vol_geom``. ``info`` (JSON-able) goes into
    metrics.json beside ``vs_ground_truth`` (see :func:`nfrecon.metrics.evaluate`).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    metrics = dict(info or {})
    if gt is not None:
        metrics["vs_ground_truth"] = evaluate(volume, gt)
    names = ("volume.nii.gz", "preview.png", "metrics.json")
    with atomic_paths(*(out / n for n in names)) as (vol_path, preview_path, metrics_path):  # all or none
        write_nifti(vol_path, volume, vol_geom, hu=hu, mu_water=mu_water)
        save_preview(preview_path, volume, vol_geom, title=title)
        atomic_write_text(metrics_path, json.dumps(metrics, indent=2, default=float) + "\n")
    return metrics
