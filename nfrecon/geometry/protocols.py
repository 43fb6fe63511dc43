"""Scan protocols: a circular trajectory, its reconstruction grid and its simulation settings.

A :class:`Protocol` fixes everything a benchmark needs to simulate and reconstruct a scan
the same way every time: source/detector distances, detector, views, volume grid, photon
count and the HU -> mu mapping. Units: mm, degrees for angles, mu in 1/mm; triples are
(z, y, x), detector pairs (v, u) = (rows, cols). Angles follow nfrecon's (ASTRA's)
convention (see :mod:`nfrecon.geometry.cone`): at angle 0 the source is at -y.

Presets live in :data:`PROTOCOLS`; :func:`get_protocol` looks one up by name.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from nfrecon.configio import load_yaml
from nfrecon.errors import InputError
from nfrecon.geometry.cone import ConeGeometry
from nfrecon.geometry.volume import VolumeGeometry


def _floats(value, n: int, name: str, where: str) -> tuple:
    try:
        arr = np.broadcast_to(np.asarray(value, dtype=np.float64), (n,))
    except (TypeError, ValueError) as exc:
        raise InputError(f"{where}: {name} must be {n} numbers, got {value!r}") from exc
    if not np.all(np.isfinite(arr)):
        raise InputError(f"{where}: {name} must be finite, got {value!r}")
    return tuple(float(a) for a in arr)


def _ints(value, n: int, name: str, where: str) -> tuple:
    arr = _floats(value, n, name, where)
    if any(a != round(a) or a < 1 for a in arr):
        raise InputError(f"{where}: {name} must be {n} positive integers, got {value!r}")
    return tuple(int(a) for a in arr)


@dataclass(frozen=True)
class Protocol:
    """A circular cone-beam scan, its reconstruction grid and how it is simulated.

    Geometry: ``sod``/``sdd`` source-to-axis / source-to-detector distances (mm);
    ``det_shape`` (rows, cols); ``pixel_size`` (dv, du) mm; ``n_views`` angles over
    ``arc_deg`` starting at ``start_deg`` (the last one is ``start + arc`` when
    ``endpoint``); ``det_offset`` (v, u) mm shift of the detector centre; ``views``: the
    indices (into the ``n_views`` full set) actually used, ``None`` for all of them.
    Grid: ``vol_shape`` (z, y, x), ``voxel_size`` (z, y, x) mm, ``vol_center`` (z, y, x) mm.
    Simulation: ``photons`` incident per pixel (0 = noiseless) and
    ``mu = max(0, mu_water + mu_slope * clip(HU, hu_min, hu_max) / 1000)`` in 1/mm.
    """

    name: str
    sod: float
    sdd: float
    det_shape: tuple[int, int]
    pixel_size: tuple[float, float]
    n_views: int
    arc_deg: float
    vol_shape: tuple[int, int, int]
    voxel_size: tuple[float, float, float]
    start_deg: float = 0.0
    endpoint: bool = False
    det_offset: tuple[float, float] = (0.0, 0.0)
    vol_center: tuple[float, float, float] = (0.0, 0.0, 0.0)
    photons: float = 0.0
    mu_water: float = 0.0206
    mu_slope: float = 0.0206
    hu_min: float = -1024.0
    hu_max: float = 3071.0
    views: tuple[int, ...] | None = None

    def __post_init__(self):
        where = f"protocol {self.name!r}"

        def put(key, value):
            object.__setattr__(self, key, value)

        if not isinstance(self.name, str) or not self.name:
            raise InputError(f"protocol: name must be a non-empty string, got {self.name!r}")
        for key in ("sod", "sdd", "arc_deg", "start_deg", "photons", "mu_water", "mu_slope", "hu_min", "hu_max"):
            put(key, _floats(getattr(self, key), 1, key, where)[0])
        if not 0 < self.sod < self.sdd:
            raise InputError(f"{where}: need 0 < sod < sdd, got sod={self.sod}, sdd={self.sdd}")
        if self.arc_deg == 0:
            raise InputError(f"{where}: arc_deg (--arc) must not be 0 (every view would see the object from one angle)")
        if self.photons < 0 or self.hu_min >= self.hu_max:
            raise InputError(f"{where}: need photons >= 0 and hu_min < hu_max")
        put("det_shape", _ints(self.det_shape, 2, "det_shape", where))
        put("vol_shape", _ints(self.vol_shape, 3, "vol_shape", where))
        put("n_views", _ints(self.n_views, 1, "n_views", where)[0])
        put("endpoint", bool(self.endpoint))
        for key, n in (("pixel_size", 2), ("voxel_size", 3)):
            value = _floats(getattr(self, key), n, key, where)
            if min(value) <= 0:
                raise InputError(f"{where}: {key} must be positive, got {value}")
            put(key, value)
        put("det_offset", _floats(self.det_offset, 2, "det_offset", where))
        put("vol_center", _floats(self.vol_center, 3, "vol_center", where))
        if self.views is not None:
            views = np.asarray(self.views)
            if views.ndim != 1 or len(views) == 0 or not np.issubdtype(views.dtype, np.integer):
                raise InputError(f"{where}: views must be a non-empty list of view indices")
            if views.min() < 0 or views.max() >= self.n_views or np.any(np.diff(views) <= 0):
                raise InputError(f"{where}: views must be increasing indices in [0, {self.n_views})")
            put("views", tuple(int(i) for i in views))

    # ------------------------------------------------------------------ geometry
    def angles(self) -> np.ndarray:
        """Gantry angles (radians) of the views in use."""
        full = np.deg2rad(self.start_deg) + np.linspace(
            0.0, np.deg2rad(self.arc_deg), self.n_views, endpoint=self.endpoint
        )
        return full if self.views is None else full[list(self.views)]

    def cone_geometry(self) -> ConeGeometry:
        """The views in use as a :class:`ConeGeometry` (circular, about the z axis)."""
        return ConeGeometry.circular(
            sod=self.sod,
            sdd=self.sdd,
            det_shape=self.det_shape,
            pixel_size=self.pixel_size,
            angles=self.angles(),
            det_offset=self.det_offset,
        )

    def volume_geometry(self) -> VolumeGeometry:
        return VolumeGeometry(self.vol_shape, self.voxel_size, self.vol_center)

    # ------------------------------------------------------------------ variants
    def with_views(self, n: int) -> Protocol:
        """The same scan with only ``n`` of its ``n_views`` views (always chosen from the full set).

        View ``i`` (0 <= i < n) is full-set index ``floor(i * n_views / n)``: when ``n``
        divides ``n_views`` this is every ``n_views / n``-th view starting at view 0 (the
        CondCBNT 50-view case is every 8th of 400), otherwise indices spread as evenly as
        integers allow (consecutive gaps differ by at most one view).
        """
        n = int(n)
        if not 1 <= n <= self.n_views:
            raise InputError(f"protocol {self.name!r}: cannot take {n} of {self.n_views} views")
        return dataclasses.replace(self, views=tuple(int(i) for i in (np.arange(n) * self.n_views) // n))

    def scaled(self, size: int, name: str | None = None) -> Protocol:
        """The same field of view and trajectory on a ``size``^3 grid and a ``size``-column detector.

        Volume box and detector width are kept (voxel and pixel sizes grow or shrink);
        detector rows are scaled in proportion (rounded, at least 1) and the detector
        height is kept. Views, distances, offsets and simulation settings are unchanged.
        """
        size = int(size)
        if size < 1:
            raise InputError(f"protocol {self.name!r}: scaled size must be >= 1, got {size}")
        (nv, nu), (dv, du) = self.det_shape, self.pixel_size
        rows = max(1, round(nv * size / nu))
        box = np.asarray(self.vol_shape) * np.asarray(self.voxel_size)
        return dataclasses.replace(
            self,
            name=name or self.name,
            det_shape=(rows, size),
            pixel_size=(nv * dv / rows, nu * du / size),
            vol_shape=(size, size, size),
            voxel_size=tuple(float(s) for s in box / size),
        )

    # ------------------------------------------------------------------ simulation
    def memory_bytes(self, oversample: int = 1) -> float:
        """Rough peak memory (bytes) of simulating one scan of this protocol: about four float32
        copies of the volume (on a grid ``oversample`` times finer per axis) and of the
        projection stack, plus the projector's working chunk (about 256 MiB)."""
        views = self.n_views if self.views is None else len(self.views)
        voxels = float(np.prod(self.vol_shape, dtype=np.float64)) * oversample**3
        pixels = float(views) * self.det_shape[0] * self.det_shape[1]
        return 4 * 4 * (voxels + pixels) + 256 * 2**20

    def sizes(self, oversample: int = 1) -> str:
        """'grid NxNxN, projections VxRxC' (the sizes that drive :meth:`memory_bytes`)."""
        views = self.n_views if self.views is None else len(self.views)
        grid = "x".join(str(n * oversample) for n in self.vol_shape)
        return f"grid {grid}, projections {views}x{self.det_shape[0]}x{self.det_shape[1]}"

    def fov_radius(self) -> float:
        """Radius (mm) about the rotation axis seen by every view (central detector row)."""
        return self.cone_geometry().fov_radius()

    def hu_to_mu(self, hu):
        """Linear attenuation (1/mm) of HU values; works on numpy arrays and torch tensors."""
        return (self.mu_water + self.mu_slope * hu.clip(self.hu_min, self.hu_max) / 1000.0).clip(min=0.0)

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict) -> Protocol:
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - fields)
        if unknown:
            raise InputError(f"protocol: unknown field(s) {', '.join(unknown)}")
        required = [f.name for f in dataclasses.fields(cls)
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        missing = [k for k in required if k not in d]
        if missing:
            raise InputError(f"protocol: missing field(s) {', '.join(missing)} (required: {', '.join(required)})")
        try:
            return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})
        except TypeError as exc:
            raise InputError(f"protocol: {exc}") from exc

    def describe(self) -> str:
        used = self.n_views if self.views is None else len(self.views)
        sub = "" if self.views is None else f" (subset of {self.n_views})"
        noise = f"{self.photons:g} photons/pixel" if self.photons > 0 else "noiseless"
        return (
            f"{self.name}: {used} views{sub} over {self.arc_deg:g} deg, sod {self.sod:g} mm, "
            f"sdd {self.sdd:g} mm, detector {self.det_shape[0]}x{self.det_shape[1]} of "
            f"{self.pixel_size[0]:g}x{self.pixel_size[1]:g} mm, grid "
            f"{'x'.join(map(str, self.vol_shape))} of {'x'.join(f'{s:g}' for s in self.voxel_size)} mm, {noise}"
        )


# ---------------------------------------------------------------------- presets
# CondCBNT / LIRE-like (DESIGN.md section 4): 256^3 at 2 mm, 400 views over 205 degrees
# with the endpoint included; the 50-view case is every 8th view (``with_views(50)``).
CONDCBNT = Protocol(
    name="condcbnt",
    sod=1000.0,
    sdd=1500.0,
    det_shape=(256, 256),
    pixel_size=(2.0, 2.0),
    n_views=400,
    arc_deg=205.0,
    endpoint=True,
    vol_shape=(256, 256, 256),
    voxel_size=(2.0, 2.0, 2.0),
    photons=1e5,
    mu_water=0.0206,
    mu_slope=0.0202,
    hu_min=-1024.0,
    hu_max=2000.0,
)

# NAF-like (Zha et al., MICCAI 2022; github.com/Ruyi-Zha/naf_cbct). Facts from the
# repository: dataGenerator/generateData.py simulates with TIGRE, angles
# linspace(0, totalAngle, numTrain + 1)[:-1] + startAngle (endpoint excluded),
# Poisson noise with 1e5 photons, mu = mu_water + (mu_water - mu_air) * HU / 1000 with
# mu_water = 0.206 and mu_air = 0.0004 per cm (0.0206 and 0.00004 per mm), followed by
# normalisation of the volume to [0, 1] (not modelled here). TIGRE's angle a is our angle
# a + 90 degrees (see nfrecon.geometry.interop.tigre), hence start_deg = 90. The scanner
# configs themselves (config.yml per CT) ship with NAF's dataset download, not the
# repository: DSO 1000 / DSD 1500 / 256^2 detector / 50 views over 180 degrees are from
# DESIGN.md; the 128^3 grid (the NAF chest case) at 2 mm and the 2 mm pixels that cover
# its field of view are our choice. The HU clip range is the 12-bit CT range.
NAF = Protocol(
    name="naf",
    sod=1000.0,
    sdd=1500.0,
    det_shape=(256, 256),
    pixel_size=(2.0, 2.0),
    n_views=50,
    arc_deg=180.0,
    start_deg=90.0,
    endpoint=False,
    vol_shape=(128, 128, 128),
    voxel_size=(2.0, 2.0, 2.0),
    photons=1e5,
    mu_water=0.0206,
    mu_slope=0.0206 - 0.00004,
    hu_min=-1024.0,
    hu_max=3071.0,
)

# R2-Gaussian-like (Zha et al., NeurIPS 2024; github.com/Ruyi-Zha/r2_gaussian,
# data_generator/synthetic_dataset/scanner/cone_beam.yml and generate_data.py): TIGRE cone
# beam with DSO 5, DSD 7, a 512^2 detector 4 wide, a 256^3 volume 2 wide (the CT is
# normalised into [-1, 1]^3, so lengths are in arbitrary units), 50 views over 360 degrees
# from linspace(0, 360, n + 1)[:-1] (TIGRE angle 0 = our 90 degrees), Poisson noise with
# 1e4 photons (plus Gaussian read noise of std 10 counts, not modelled here). HU are
# clipped to [-1000, 2000] and mapped linearly onto density [0, 1] per unit length.
# We take 1 unit = 128 mm (1 mm voxels): DSO 640 mm, DSD 896 mm, 1 mm pixels, and the
# density becomes mu = (HU + 1000) / 3000 / 128 per mm, i.e. mu_water = mu_slope = 1/384,
# which keeps their projection values (and so their noise level) unchanged.
R2GAUSSIAN = Protocol(
    name="r2gaussian",
    sod=640.0,
    sdd=896.0,
    det_shape=(512, 512),
    pixel_size=(1.0, 1.0),
    n_views=50,
    arc_deg=360.0,
    start_deg=90.0,
    endpoint=False,
    vol_shape=(256, 256, 256),
    voxel_size=(1.0, 1.0, 1.0),
    photons=1e4,
    mu_water=1.0 / 384.0,
    mu_slope=1.0 / 384.0,
    hu_min=-1000.0,
    hu_max=2000.0,
)

# A CPU-sized CondCBNT for demos and tests: the same physical set-up on a 64^3 grid and a
# 64x64 detector (8 mm voxels and pixels), 50 views spread over the full 205 degrees.
SMALL = dataclasses.replace(CONDCBNT.scaled(64, name="small"), n_views=50)

PROTOCOLS: dict[str, Protocol] = {p.name: p for p in (CONDCBNT, NAF, R2GAUSSIAN, SMALL)}


def load_protocol(
    name: str,
    *,
    size: int | None = None,
    views: int | None = None,
    arc_deg: float | None = None,
    mu_water: float | None = None,
) -> Protocol:
    """A preset name or a YAML file of Protocol fields, then (in this order) scaled to
    ``size``, given another arc and mu_water, and reduced to ``views`` of its views."""
    if name.endswith((".yaml", ".yml")) and name not in PROTOCOLS:
        try:
            protocol = Protocol.from_dict(load_yaml(name))
        except InputError as exc:
            raise InputError(exc if str(exc).startswith(name) else f"{name}: {exc}") from exc
    else:
        protocol = get_protocol(name)
    if size is not None:
        protocol = protocol.scaled(size)
    if arc_deg is not None:
        protocol = dataclasses.replace(protocol, arc_deg=arc_deg)
    if mu_water is not None:
        protocol = dataclasses.replace(protocol, mu_water=mu_water)
    return protocol if views is None else protocol.with_views(views)


def get_protocol(name: str) -> Protocol:
    """The preset called ``name`` (see :data:`PROTOCOLS`)."""
    try:
        return PROTOCOLS[name]
    except KeyError:
        raise InputError(f"protocol: unknown name {name!r}; known: {', '.join(sorted(PROTOCOLS))}") from None
