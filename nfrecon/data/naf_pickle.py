"""NAF's dataset format (``.pickle``), read through a restricted unpickler.

A plain ``pickle.load`` of a downloaded file can run arbitrary code. NAF pickles hold a
dict of builtins and numpy arrays only, so the unpickler here admits exactly the globals
needed to rebuild those (numpy's array/scalar reconstructors and dtype, a few builtin
containers) and refuses anything else with a one-line error naming the file.

Layout (Zha et al., github.com/Ruyi-Zha/naf_cbct, ``dataGenerator/generateData.py``): the
TIGRE config keys (DSD, DSO, nDetector, dDetector, nVoxel, dVoxel, offOrigin, offDetector,
... in mm, NAF's axis orders), ``image`` (the ground-truth volume ``[x, y, z]``), and
``train`` / ``val`` dicts with ``angles`` (radians, TIGRE convention) and ``projections``
(``[view, v, u]`` with rows flipped). The conversion to nfrecon's frame is
:mod:`nfrecon.geometry.interop.tigre`'s.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np

from nfrecon.data.scan import Scan
from nfrecon.errors import InputError
from nfrecon.geometry.interop.tigre import from_tigre, tigre_projections_to_vu, tigre_volume_to_zyx

_ALLOWED = {
    ("builtins", name) for name in ("set", "frozenset", "complex", "bytearray", "slice", "range")
} | {
    ("_codecs", "encode"),  # how protocol-2 pickles spell bytes
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
} | {
    (f"numpy.{core}.{mod}", name)
    for core in ("core", "_core")
    for mod, name in (("multiarray", "_reconstruct"), ("multiarray", "scalar"), ("numeric", "_frombuffer"))
}


class _Refused(pickle.UnpicklingError):
    pass


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise _Refused(f"refused to load '{module}.{name}'")


def safe_unpickle(path: str | Path):
    """Unpickle ``path`` admitting only builtins and numpy arrays (InputError otherwise)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    try:
        return _RestrictedUnpickler(io.BytesIO(path.read_bytes())).load()
    except _Refused as exc:
        raise InputError(f"{path}: {exc}; NAF pickles may hold only builtins and numpy arrays") from exc
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            MemoryError) as exc:
        raise InputError(f"{path}: truncated or corrupt pickle ({type(exc).__name__}: {exc})") from exc


def load_naf_pickle(path: str | Path) -> Scan:
    """A :class:`Scan` from a NAF ``.pickle``: the ``train`` views, ``image`` as ground truth.

    The held-out ``val`` views of the file are not used (nfrecon holds out its own views);
    their count is kept in the metadata.
    """
    path = Path(path)
    data = safe_unpickle(path)
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a dict at the top level, got {type(data).__name__}")
    for key in ("image", "train", "DSD", "DSO", "nDetector", "dDetector", "nVoxel", "dVoxel"):
        if key not in data:
            raise InputError(f"{path}: not a NAF dataset (missing key '{key}')")
    train = data["train"]
    if not isinstance(train, dict) or "angles" not in train or "projections" not in train:
        raise InputError(f"{path}: 'train' must hold 'angles' and 'projections'")
    try:
        geom, vol_geom = from_tigre(data, np.asarray(train["angles"], dtype=np.float64), layout="naf")
        proj = tigre_projections_to_vu(np.asarray(train["projections"], dtype=np.float32), layout="naf")
        gt = tigre_volume_to_zyx(np.asarray(data["image"], dtype=np.float32), layout="naf")
    except InputError as exc:
        raise InputError(f"{path}: {exc}") from exc
    if proj.shape != geom.proj_shape:
        raise InputError(f"{path}: projections have shape {proj.shape}, the config implies {geom.proj_shape}")
    val = data.get("val")
    metadata = {
        "source": str(path),
        "format": "NAF pickle",
        "val_views_in_file": len(val["angles"]) if isinstance(val, dict) and "angles" in val else 0,
    }
    try:
        return Scan(proj, geom, gt=gt, gt_geom=vol_geom, recon_geom=vol_geom, metadata=metadata)
    except InputError as exc:
        raise InputError(f"{path}: {exc}") from exc
