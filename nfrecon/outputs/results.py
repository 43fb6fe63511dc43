"""The files every reconstruction leaves in its run folder.

``volume.nii.gz`` or ``volume.mha`` (float32 mu in 1/mm, or int16 HU on request; NIfTI or
MetaImage, the same voxels at the same world positions, see :mod:`nfrecon.data.nifti` and
:mod:`nfrecon.data.metaimage`), ``preview.png`` (three orthogonal mid-slices) and
``metrics.json`` (quality against the ground truth when there is one, plus whatever the
method reports). The files are written atomically, all or none.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Literal

import numpy as np

from nfrecon.data.hu import MU_WATER
from nfrecon.data.metaimage import write_metaimage
from nfrecon.data.nifti import write_nifti
from nfrecon.errors import InputError
from nfrecon.fsutil import atomic_paths, atomic_write_text
from nfrecon.geometry.volume import VolumeGeometry
from nfrecon.metrics import evaluate
from nfrecon.outputs.preview import save_preview

VolumeFormat = Literal["nifti", "mha"]
"""Export formats of the volume (the --format choices)."""

VOLUME_FILES = {"nifti": "volume.nii.gz", "mha": "volume.mha"}
"""The volume's file name in a run folder, per export format."""

_WRITERS = {"nifti": write_nifti, "mha": write_metaimage}


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
    format: VolumeFormat = "nifti",
) -> dict:
    """Write the volume (``VOLUME_FILES[format]``), preview.png and metrics.json into ``out``;
    return the metrics.

    volume, gt: [z, y, x] mu (1/mm) on ``vol_geom``. ``hu``: store int16 HU (with ``mu_water``,
    1/mm) instead of float32 mu. ``info`` (JSON-able) goes into metrics.json beside
    ``vs_ground_truth`` (see :func:`nfrecon.metrics.evaluate`). A volume file of the other
    format left in ``out`` by an earlier run is removed.
    """
    if format not in VOLUME_FILES:
        raise InputError(f"--format: unknown volume format {format!r}; known: {', '.join(VOLUME_FILES)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    metrics = dict(info or {})
    if gt is not None:
        metrics["vs_ground_truth"] = evaluate(volume, gt)
    names = (VOLUME_FILES[format], "preview.png", "metrics.json")
    with atomic_paths(*(out / n for n in names)) as (vol_path, preview_path, metrics_path):  # all or none
        _WRITERS[format](vol_path, volume, vol_geom, hu=hu, mu_water=mu_water)
        save_preview(preview_path, volume, vol_geom, title=title)
        atomic_write_text(metrics_path, json.dumps(metrics, indent=2, default=float) + "\n")
    for name in VOLUME_FILES.values():  # no stale volume of the other format beside the new one
        if name != names[0]:
            (out / name).unlink(missing_ok=True)
    return metrics
