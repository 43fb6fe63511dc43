"""tomosipo geometry objects <-> nfrecon geometry (tomosipo is imported lazily).

tomosipo works in (z, y, x) like nfrecon, so no axis reordering is needed:
``ts.cone_vec(shape=(rows, cols), src_pos, det_pos, det_v, det_u)`` holds exactly our
``src``, ``det``, ``v``, ``u`` (det_v: pixel (0,0)->(1,0), det_u: (0,0)->(0,1)), and
``ts.volume(shape, pos, size)`` is an axis-aligned box centred on ``pos`` with voxel
indices growing along +z, +y, +x, like :class:`VolumeGeometry`.
"""

from __future__ import annotations

import numpy as np

from nfrecon.errors import InputError
from nfrecon.geometry.cone import ConeGeometry
from nfrecon.geometry.volume import VolumeGeometry


def _ts():
    try:
        import tomosipo
    except ImportError as exc:
        raise InputError("tomosipo interop needs the 'tomosipo' package (github.com/ahendriksen/tomosipo)") from exc
    return tomosipo


def to_tomosipo(geom: ConeGeometry):
    """A ``ts.cone_vec`` geometry equal to ``geom``."""
    return _ts().cone_vec(shape=geom.det_shape, src_pos=geom.src, det_pos=geom.det, det_v=geom.v, det_u=geom.u)


def from_tomosipo(proj_geom) -> ConeGeometry:
    """ConeGeometry from a tomosipo cone geometry (``ts.cone`` or ``ts.cone_vec``)."""
    if not getattr(proj_geom, "is_cone", False):
        raise InputError(f"tomosipo geometry: expected a cone-beam geometry, got {type(proj_geom).__name__}")
    vec = proj_geom.to_vec()
    return ConeGeometry(vec.det_shape, vec.src_pos, vec.det_pos, vec.det_u, vec.det_v)


def vol_geom_to_tomosipo(vol_geom: VolumeGeometry):
    """A ``ts.volume`` with the same shape, centre and size."""
    return _ts().volume(shape=vol_geom.shape, pos=vol_geom.center, size=tuple(float(s) for s in vol_geom.size))


def vol_geom_from_tomosipo(ts_volume) -> VolumeGeometry:
    """VolumeGeometry from a ``ts.volume`` (or a static, axis-aligned ``ts.volume_vec``)."""
    vec = ts_volume.to_vec()
    w, v, u = (np.asarray(a, dtype=np.float64) for a in (vec.w, vec.v, vec.u))
    axes = np.stack([w[0], v[0], u[0]])
    if len(w) != 1 or not np.allclose(axes, np.diag(np.diag(axes))) or np.any(np.diag(axes) <= 0):
        raise InputError("tomosipo volume: only static, axis-aligned volumes with positive voxel axes convert")
    return VolumeGeometry(tuple(vec.shape), tuple(np.diag(axes)), tuple(np.asarray(vec.pos, dtype=np.float64)[0]))
