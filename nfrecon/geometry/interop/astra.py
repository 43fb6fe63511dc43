"""ASTRA Toolbox geometry dictionaries <-> nfrecon geometry.

The dictionaries have the layout of ``astra.create_proj_geom`` / ``astra.create_vol_geom``
and are built by hand, so this module never imports ``astra`` (it stays optional).

Conventions (ASTRA 2.x, documented and in its source):

- Projection vectors are in ASTRA's (x, y, z) order; ours are (z, y, x). A ``cone_vec``
  row is (src, detector centre, u = pixel (0,0)->(0,1), v = pixel (0,0)->(1,0)), exactly
  our quadruple reversed per vector.
- ``cone``: ``DetectorSpacingX`` is the column (u) pitch, ``DetectorSpacingY`` the row (v)
  pitch; ``DistanceOriginDetector`` is origin-to-detector (= sdd - sod). At angle ``a`` the
  source is at (x, y, z) = (sin a, -cos a, 0) * sod (``astra.functions.geom_2vec``), which
  is what :meth:`ConeGeometry.circular` builds.
- ASTRA's 3D projection data are indexed ``[v, view, u]`` (ours ``[view, v, u]``:
  ``np.swapaxes(proj, 0, 1)``); volume data ``[z, y, x]`` like ours.
- Volumes: ``create_vol_geom(Y, X, Z, minx, maxx, miny, maxy, minz, maxz)`` gives
  ``GridRowCount`` = ny, ``GridColCount`` = nx, ``GridSliceCount`` = nz and the window
  (box faces). The 3D GPU projectors shift the geometry by minus the window centre and
  divide by the voxel size (cuda/3d/astra3d.cu, convertAstraGeometry_internal), then read
  the volume texture at coordinate + n / 2 on each axis (cuda/3d/cone_fp.cu), so voxel
  ``[k, j, i]`` has its centre at ``WindowMin + (index + 0.5) * voxel`` on every axis, the
  index growing with the coordinate, as in :class:`VolumeGeometry`. (The helper methods
  ``pixelRowToCenterY``/``pixelSliceToCenterZ`` in VolumeGeometry3D.h count rows and
  slices down from ``WindowMax``; the 3D projectors do not use them.)
"""

from __future__ import annotations

import numpy as np

from nfrecon.errors import InputError
from nfrecon.geometry.cone import ConeGeometry
from nfrecon.geometry.volume import VolumeGeometry

_CONE_KEYS = (
    "DetectorSpacingX",
    "DetectorSpacingY",
    "DetectorRowCount",
    "DetectorColCount",
    "ProjectionAngles",
    "DistanceOriginSource",
    "DistanceOriginDetector",
)
_WINDOW = tuple(f"Window{m}{a}" for a in "XYZ" for m in ("Min", "Max"))


def _require(d: dict, keys, what: str) -> None:
    missing = [k for k in keys if k not in d]
    if missing:
        raise InputError(f"ASTRA {what}: missing key(s) {', '.join(missing)}")


def to_astra(geom: ConeGeometry) -> dict:
    """An ASTRA ``cone_vec`` projection geometry dictionary for ``geom``."""
    nv, nu = geom.det_shape
    return {
        "type": "cone_vec",
        "DetectorRowCount": nv,
        "DetectorColCount": nu,
        "Vectors": geom.to_astra_vectors(),
    }


def from_astra(proj_geom: dict) -> ConeGeometry:
    """ConeGeometry from an ASTRA ``cone`` or ``cone_vec`` projection geometry dictionary."""
    kind = proj_geom.get("type") if isinstance(proj_geom, dict) else None
    if kind == "cone_vec":
        _require(proj_geom, ("DetectorRowCount", "DetectorColCount", "Vectors"), "cone_vec geometry")
        shape = (proj_geom["DetectorRowCount"], proj_geom["DetectorColCount"])
        return ConeGeometry.from_astra_vectors(proj_geom["Vectors"], shape)
    if kind == "cone":
        _require(proj_geom, _CONE_KEYS, "cone geometry")
        sod = float(proj_geom["DistanceOriginSource"])
        return ConeGeometry.circular(
            sod=sod,
            sdd=sod + float(proj_geom["DistanceOriginDetector"]),
            det_shape=(proj_geom["DetectorRowCount"], proj_geom["DetectorColCount"]),
            pixel_size=(float(proj_geom["DetectorSpacingY"]), float(proj_geom["DetectorSpacingX"])),
            angles=np.asarray(proj_geom["ProjectionAngles"], dtype=np.float64),
        )
    raise InputError(f"ASTRA projection geometry: type must be 'cone' or 'cone_vec', got {kind!r}")


def vol_geom_to_astra(vol_geom: VolumeGeometry) -> dict:
    """An ASTRA 3D volume geometry dictionary (as ``astra.create_vol_geom`` builds it)."""
    lo, hi = vol_geom.box_min, vol_geom.box_max
    nz, ny, nx = vol_geom.shape
    option = {}
    for axis, a in ((2, "X"), (1, "Y"), (0, "Z")):
        option[f"WindowMin{a}"] = float(lo[axis])
        option[f"WindowMax{a}"] = float(hi[axis])
    return {"option": option, "GridRowCount": ny, "GridColCount": nx, "GridSliceCount": nz}


def vol_geom_from_astra(d: dict) -> VolumeGeometry:
    """VolumeGeometry from an ASTRA 3D volume geometry dictionary (windows required)."""
    if not isinstance(d, dict):
        raise InputError("ASTRA volume geometry: expected a dictionary")
    _require(d, ("GridRowCount", "GridColCount", "GridSliceCount", "option"), "volume geometry")
    _require(d["option"], _WINDOW, "volume geometry option")
    shape = np.array([d["GridSliceCount"], d["GridRowCount"], d["GridColCount"]], dtype=np.float64)
    lo = np.array([d["option"][f"WindowMin{a}"] for a in "ZYX"], dtype=np.float64)
    hi = np.array([d["option"][f"WindowMax{a}"] for a in "ZYX"], dtype=np.float64)
    if np.any(hi <= lo):
        raise InputError("ASTRA volume geometry: every WindowMax must exceed its WindowMin")
    return VolumeGeometry(tuple(shape), tuple((hi - lo) / shape), tuple((hi + lo) / 2))
