"""A cone-beam scan: projections, geometry, optional ground truth; its HDF5 file format.

The file format (``nfrecon-scan`` version 1) is specified in docs/scan-format.md.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import h5py
import numpy as np

import nfrecon
from nfrecon.errors import InputError
from nfrecon.fsutil import atomic_path
from nfrecon.geometry.cone import ConeGeometry
from nfrecon.geometry.volume import VolumeGeometry

FORMAT = "nfrecon-scan"
VERSION = 1
# Every dataset carries HDF5's Fletcher-32 checksum (a damaged chunk fails to read); the v1.8
# file format (libver) adds checksums to the object headers, where the attributes live.
# Files written without them (older nfrecon) read as before.
_CHECKSUM = {"fletcher32": True}
_COMPRESSION = {"compression": "gzip", "compression_opts": 1, "shuffle": True, **_CHECKSUM}
_LIBVER = ("v108", "latest")


def _array(value, name: str, shape: tuple | None = None, what: str = "") -> np.ndarray:
    arr = np.asarray(value, dtype=np.float32)
    if shape is not None and arr.shape != tuple(shape):
        raise InputError(f"{name}: shape {arr.shape} does not match {what} {tuple(shape)}")
    if not np.all(np.isfinite(arr)):
        raise InputError(f"{name}: contains NaN or Inf")
    return arr


@dataclass
class Scan:
    """One cone-beam scan (units and axis orders of DESIGN.md §2).

    projections: float32 [view, v, u] line integrals -ln(I/I0); geom: its ConeGeometry;
    gt: optional float32 [z, y, x] mu (1/mm) on ``gt_geom`` (required with gt);
    recon_geom: the intended reconstruction grid (defaults to gt_geom; may stay None for a
    measured scan); clean: optional noiseless projections; photons: I0 per pixel of the
    simulated noise (None: noiseless or unknown); metadata: JSON-able dict (source file,
    protocol, seed, read noise, mu mapping, ...).
    """

    projections: np.ndarray
    geom: ConeGeometry
    gt: np.ndarray | None = None
    gt_geom: VolumeGeometry | None = None
    recon_geom: VolumeGeometry | None = None
    clean: np.ndarray | None = None
    photons: float | None = None
    metadata: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.recon_geom is None:
            self.recon_geom = self.gt_geom
        self.validate()

    def validate(self) -> None:
        """Check shapes and values (and normalise dtypes); InputError naming the field."""
        if not isinstance(self.geom, ConeGeometry):
            raise InputError(f"scan geometry: expected a ConeGeometry, got {type(self.geom).__name__}")
        self.projections = _array(self.projections, "projections", self.geom.proj_shape, "the geometry's")
        if self.clean is not None:
            self.clean = _array(self.clean, "clean projections", self.geom.proj_shape, "the geometry's")
        if (self.gt is None) != (self.gt_geom is None):
            raise InputError("ground truth: gt and gt_geom must be given together")
        if self.gt is not None:
            self.gt = _array(self.gt, "ground truth", self.gt_geom.shape, "gt_geom's")
        for name in ("gt_geom", "recon_geom"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, VolumeGeometry):
                raise InputError(f"{name}: expected a VolumeGeometry, got {type(value).__name__}")
        if self.photons is not None:
            photons = float(self.photons)
            if not (np.isfinite(photons) and photons > 0):
                raise InputError(f"photons: photon count must be positive, got {self.photons}")
            self.photons = photons
        if not isinstance(self.metadata, dict) or not all(isinstance(k, str) for k in self.metadata):
            raise InputError("metadata: must be a dict with string keys")
        try:
            json.dumps(self.metadata)
        except (TypeError, ValueError) as exc:
            raise InputError(f"metadata: not JSON-serialisable ({exc})") from exc

    def require_recon_grid(self, source) -> VolumeGeometry:
        """The reconstruction grid; InputError naming ``source`` (the scan's file) when the scan
        has none."""
        if self.recon_geom is None:
            raise InputError(f"{source}: the scan has no reconstruction grid (recon_geometry); add one to the file")
        return self.recon_geom

    # ------------------------------------------------------------------ derived scans
    def views(self, idx) -> Scan:
        """The scan restricted to some views, e.g. ``scan.views(slice(None, None, 8))``.

        ``idx``: slice, int or index array. ``metadata["views"]`` records the indices into
        the original (first) scan.
        """
        picked = np.atleast_1d(np.arange(self.geom.n_views)[idx])
        if picked.size == 0:
            raise InputError(f"views: the selection {idx!r} is empty")
        prior = self.metadata.get("views")
        known = isinstance(prior, list) and len(prior) == self.geom.n_views
        original = (np.asarray(prior) if known else np.arange(self.geom.n_views))[picked]
        return replace(
            self,
            projections=self.projections[picked],
            geom=self.geom[picked],
            clean=None if self.clean is None else self.clean[picked],
            metadata={**self.metadata, "views": original.tolist()},
        )

    def describe(self) -> str:
        """A multi-line human summary (used by ``nfrecon info``)."""
        p = self.projections
        lines = [
            f"geometry: {self.geom.describe()}",
            (f"projections: {' x '.join(map(str, p.shape))} (views x rows x cols) line integrals, "
             f"min {p.min():.4g}, mean {p.mean():.4g}, max {p.max():.4g}"),
            "noise: " + (f"Poisson, {self.photons:g} photons per pixel" if self.photons
                         else "none recorded (noiseless or measured)"),
            f"clean projections: {'yes' if self.clean is not None else 'no'}",
        ]
        if self.gt is not None:
            lines.append(f"ground truth: mu (1/mm) in [{self.gt.min():.4g}, {self.gt.max():.4g}] "
                         f"on {self.gt_geom.describe()}")
        else:
            lines.append("ground truth: none")
        lines.append(f"reconstruction grid: {self.recon_geom.describe() if self.recon_geom else 'not set'}")
        for key, value in self.metadata.items():
            text = json.dumps(value)
            lines.append(f"{key}: {text if len(text) <= 80 else text[:77] + '...'}")
        return "\n".join(lines)


# ---------------------------------------------------------------------- HDF5 I/O
def _write_vol_geom(f: h5py.File, name: str, geom: VolumeGeometry) -> None:
    g = f.create_group(name)
    g.attrs["shape"] = np.asarray(geom.shape, dtype=np.int64)
    g.attrs["voxel_size"] = np.asarray(geom.voxel_size, dtype=np.float64)
    g.attrs["center"] = np.asarray(geom.center, dtype=np.float64)


def _read_vol_geom(f: h5py.File, name: str) -> VolumeGeometry | None:
    if name not in f:
        return None
    a = f[name].attrs
    return VolumeGeometry(tuple(a["shape"]), tuple(a["voxel_size"]), tuple(a["center"]))


def _write_stack(f: h5py.File, name: str, data: np.ndarray) -> None:
    f.create_dataset(name, data=data, chunks=(1, *data.shape[1:]), **_COMPRESSION)


def save_scan(scan: Scan, path) -> Path:
    """Write ``scan`` to an HDF5 file (format ``nfrecon-scan`` v1), atomically. Returns the path."""
    path = Path(path)
    try:
        scan.validate()
    except InputError as exc:
        raise InputError(f"{path}: cannot save the scan: {exc}") from exc
    with atomic_path(path) as tmp, h5py.File(tmp, "w", libver=_LIBVER) as f:
        f.attrs["format"] = FORMAT
        f.attrs["version"] = VERSION
        f.attrs["software"] = f"nfrecon {nfrecon.__version__}"
        f.attrs["metadata"] = json.dumps(scan.metadata)
        if scan.photons is not None:
            f.attrs["photons"] = float(scan.photons)
        _write_stack(f, "projections", scan.projections)
        geo = f.create_group("geometry")
        geo.attrs["det_shape"] = np.asarray(scan.geom.det_shape, dtype=np.int64)
        for key in ("src", "det", "u", "v"):
            geo.create_dataset(key, data=getattr(scan.geom, key).astype(np.float64), **_CHECKSUM)
        if scan.clean is not None:
            _write_stack(f, "clean", scan.clean)
        if scan.gt is not None:
            _write_stack(f, "gt", scan.gt)
            _write_vol_geom(f, "gt_geometry", scan.gt_geom)
        if scan.recon_geom is not None:
            _write_vol_geom(f, "recon_geometry", scan.recon_geom)
    return path


def _require(f: h5py.File, name: str):
    if name not in f:
        raise InputError(f"missing dataset /{name}, not a complete nfrecon scan file")
    return f[name]


def _read_scan(f: h5py.File) -> Scan:
    fmt = f.attrs.get("format")
    if isinstance(fmt, bytes):
        fmt = fmt.decode()
    if fmt != FORMAT:
        raise InputError(f"not an nfrecon scan file (format attribute is {fmt!r}, expected {FORMAT!r})")
    version = f.attrs.get("version")
    if version != VERSION:
        raise InputError(f"scan format version {version} is not supported (this nfrecon reads {VERSION})")
    geo = _require(f, "geometry")
    vectors = {key: _require(f, f"geometry/{key}")[()] for key in ("src", "det", "u", "v")}
    if "det_shape" not in geo.attrs:
        raise InputError("/geometry has no det_shape attribute")
    geom = ConeGeometry(tuple(geo.attrs["det_shape"]), **vectors)
    photons = f.attrs.get("photons")
    return Scan(
        projections=_require(f, "projections")[()],
        geom=geom,
        gt=f["gt"][()] if "gt" in f else None,
        gt_geom=_read_vol_geom(f, "gt_geometry"),
        recon_geom=_read_vol_geom(f, "recon_geometry"),
        clean=f["clean"][()] if "clean" in f else None,
        photons=None if photons is None else float(photons),
        metadata=json.loads(f.attrs.get("metadata", "{}")),
    )


def _read_file(path, read):
    """``read(h5py.File)`` of the scan file ``path``; every problem is an InputError naming the file."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path}: is a folder, expected a scan file")
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    if not h5py.is_hdf5(path):
        raise InputError(f"{path}: not an HDF5 file (expected an nfrecon scan, format {FORMAT!r})")
    try:
        with h5py.File(path, "r") as f:
            return read(f)
    except InputError as exc:
        raise InputError(f"{path}: {exc}") from exc
    except (OSError, KeyError, RuntimeError, ValueError, TypeError) as exc:
        raise InputError(f"{path}: truncated or corrupt HDF5 file ({exc})") from exc


def load_scan(path) -> Scan:
    """Read a scan written by :func:`save_scan`; every problem is an InputError naming the file."""
    return _read_file(path, _read_scan)


def load_scan_metadata(path) -> dict:
    """The metadata dict of a scan file, without reading its arrays (InputError naming the file)."""
    return _read_file(path, lambda f: json.loads(f.attrs.get("metadata", "{}")))
