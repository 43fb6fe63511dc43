"""Procedural patients: random but anatomically plausible thorax/abdomen CT volumes in HU.

:func:`generate_patient` draws one patient from a seed and renders it on the grid of a
:class:`PatientConfig`. Volumes are float32 ``[z, y, x]`` in HU; air is exactly -1000.

Frames. World (z, y, x) mm as in DESIGN.md §2: x towards the patient's right, y anterior,
z superior; the patient lies supine (the optional table is below, at -y). Anatomy is laid
out in a patient frame (z, w, u): u towards the patient's right, w anterior, z superior,
z = 0 at the top of the right diaphragm dome. World = patient frame scaled by ``s`` (so
that the body fits the grid and field of view), rotated about z by ``theta`` (counter-
clockwise from +x towards +y) and shifted; the patient frame is continuous, so the same
seed renders the same anatomy at any resolution of the same box (only the fine texture
noise, drawn per voxel, differs).

Shapes are signed distances (mm, negative inside) turned into partial-volume occupancies
``clip(0.5 - sd / h, 0, 1)`` with ``h`` the voxel size, and painted in order
(``hu += occ * (value - hu)``): body fat, muscle wall, abdominal/mediastinal filler,
abdominal organs, lungs, heart and great vessels, lung vessel trees, nodules, airways,
liver lesions, bones (vertebrae, ribs, sternum), table; then a smooth intensity field and
a fine texture are added inside the body.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Optional

import numpy as np
from scipy.ndimage import gaussian_filter

from nfrecon.errors import InputError
from nfrecon.geometry.volume import VolumeGeometry

Range = tuple[float, float]
IntRange = tuple[int, int]

AIR_HU = -1000.0
HU_MIN, HU_MAX = -1024.0, 3000.0
_BODY_Z_VARIATION = 0.06  # relative amplitude of the body's half-axes along z
_BODY_DRIFT_MM = 5.0  # amplitude of the body centre's drift along z
_MIN_SCALE = 0.25  # smallest body scale accepted to fit a grid / field of view
_TABLE_MM = (12.0, 20.0)  # table thickness range
_TABLE_GAP_MM = (3.0, 15.0)  # air between the back and the table
_TABLE_HALF_WIDTH_MM = 240.0


@dataclass(frozen=True)
class PatientConfig:
    """Grid and ranges of a procedural patient; every range is (low, high), drawn uniformly.

    Grid: ``shape`` (nz, ny, nx), ``voxel_size`` (dz, dy, dx) mm, ``center`` (z, y, x) mm.
    ``fov_radius_mm``: keep the body within this radius of the world z axis (None: only the
    grid); ``margin_mm``: air kept between the body (and table) and the grid's y/x faces.
    Body: lateral half-width (mm), AP/lateral aspect, subcutaneous fat and muscle wall
    thickness as fractions of the AP half-axis, in-plane offset (up to +-mm in y and x),
    rotation about z (up to +-deg). Anatomy: ``diaphragm_level`` (fraction of the grid's z
    extent, from its bottom, where the right diaphragm dome sits), lung height (mm),
    ``organ_scale`` (per-organ size factor), ``vessel_generations`` (branchings of each lung
    vessel), lesion counts and radii, gas pockets in the bowel, the probability of an
    iodine-contrast (enhanced blood) patient, tissue HU ranges. ``table``: add a couch slab
    of ``table_hu``. Texture: ``smooth_hu`` (amplitude of a smooth intensity variation),
    ``texture_hu`` (std of a fine noise of correlation length ``texture_mm``).
    """

    shape: tuple[int, int, int] = (128, 128, 128)
    voxel_size: tuple[float, float, float] = (3.0, 3.0, 3.0)
    center: tuple[float, float, float] = (0.0, 0.0, 0.0)
    fov_radius_mm: Optional[float] = None
    margin_mm: float = 6.0
    body_half_width_mm: Range = (140.0, 185.0)
    body_aspect: Range = (0.62, 0.80)
    fat_fraction: Range = (0.05, 0.22)
    muscle_fraction: Range = (0.08, 0.13)
    offset_mm: float = 15.0
    rotation_deg: float = 8.0
    diaphragm_level: Range = (0.3, 0.6)
    lung_height_mm: Range = (200.0, 260.0)
    organ_scale: Range = (0.85, 1.15)
    vessel_generations: int = 5
    lung_nodules: IntRange = (0, 4)
    liver_lesions: IntRange = (0, 3)
    lesion_radius_mm: Range = (2.5, 12.0)
    gas_pockets: IntRange = (0, 6)
    contrast_probability: float = 0.3
    lung_hu: Range = (-880.0, -820.0)
    fat_hu: Range = (-115.0, -85.0)
    muscle_hu: Range = (35.0, 55.0)
    liver_hu: Range = (50.0, 70.0)
    kidney_hu: Range = (25.0, 40.0)
    cancellous_hu: Range = (300.0, 700.0)
    cortical_hu: Range = (1000.0, 1600.0)
    rib_hu: Range = (700.0, 1200.0)
    table: bool = False
    table_hu: float = 200.0
    smooth_hu: float = 15.0
    texture_hu: float = 10.0
    texture_mm: float = 2.0

    def __post_init__(self):
        self.geometry()  # validates shape, voxel size, centre
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.type in ("Range", "IntRange"):
                ok = len(value) == 2 and all(np.isfinite(v) for v in value) and value[0] <= value[1]
                ok = ok and (f.type == "Range" or all(float(v).is_integer() for v in value))
                if not ok:
                    raise InputError(f"patient config: {f.name} must be a range (low, high) with low <= high, "
                                     f"got {value!r}")
        positive = ("margin_mm", "offset_mm", "rotation_deg", "smooth_hu", "texture_hu", "texture_mm")
        for name in positive:
            if not getattr(self, name) >= 0:
                raise InputError(f"patient config: {name} must be >= 0, got {getattr(self, name)!r}")
        checks = {
            "fov_radius_mm": self.fov_radius_mm is None or self.fov_radius_mm > 0,
            "body_half_width_mm": self.body_half_width_mm[0] > 0,
            "body_aspect": 0 < self.body_aspect[0] and self.body_aspect[1] <= 1.5,
            "fat_fraction": self.fat_fraction[0] >= 0 and self.fat_fraction[1] + 2 * self.muscle_fraction[1] < 0.7,
            "muscle_fraction": self.muscle_fraction[0] > 0,
            "diaphragm_level": 0 <= self.diaphragm_level[0] and self.diaphragm_level[1] <= 1,
            "lung_height_mm": self.lung_height_mm[0] > 0,
            "organ_scale": self.organ_scale[0] > 0,
            "vessel_generations": 0 <= self.vessel_generations <= 7,
            "lung_nodules": self.lung_nodules[0] >= 0,
            "liver_lesions": self.liver_lesions[0] >= 0,
            "lesion_radius_mm": self.lesion_radius_mm[0] > 0,
            "gas_pockets": self.gas_pockets[0] >= 0,
            "contrast_probability": 0 <= self.contrast_probability <= 1,
        }
        for name, ok in checks.items():
            if not ok:
                raise InputError(f"patient config: {name} is out of range: {getattr(self, name)!r}")

    def geometry(self) -> VolumeGeometry:
        return VolumeGeometry(self.shape, self.voxel_size, self.center)


# ---------------------------------------------------------------------- shape helpers
def _occ(sd, h: float) -> np.ndarray:
    """Partial-volume occupancy (float32 in [0, 1]) of a signed distance ``sd`` (mm) at voxel size ``h``."""
    return np.clip(0.5 - np.asarray(sd, dtype=np.float32) / np.float32(h), 0.0, 1.0)


def _ellipsoid_sd(coords, axes):
    """First-order signed distance (mm) to an axis-aligned ellipsoid; coords centred, any dimension.

    ``(f - 1) / |grad f|`` with f the normalised radius: exact on the surface and along
    the axes, and clipped between the smallest and largest semi-axis (also at the centre).
    """
    axes = [float(a) if np.ndim(a) == 0 else a for a in axes]  # keep float32 arrays float32
    f = np.sqrt(sum((c / a) ** 2 for c, a in zip(coords, axes)))
    g = np.sqrt(sum((c / (a * a)) ** 2 for c, a in zip(coords, axes)))
    lo = axes[0]
    hi = axes[0]
    for a in axes[1:]:
        lo, hi = np.minimum(lo, a), np.maximum(hi, a)
    return (f - 1.0) * np.clip(f / np.maximum(g, 1e-12), lo, hi)


def _local(rot: np.ndarray, center, z, w, u):
    """Coordinates in a rotated frame: rows of ``rot`` are the frame's axes in (z, w, u)."""
    d = (z - float(center[0]), w - float(center[1]), u - float(center[2]))
    return [sum(float(rot[i, j]) * d[j] for j in range(3)) for i in range(3)]


def _rotation(axis, roll: float) -> np.ndarray:
    """A rotation whose first row is the unit ``axis`` (z, w, u), rolled by ``roll`` rad about it."""
    a = np.asarray(axis, dtype=np.float64)
    a = a / np.linalg.norm(a)
    helper = np.array([0.0, 1.0, 0.0]) if abs(a[1]) < 0.9 else np.array([0.0, 0.0, 1.0])
    b = np.cross(a, helper)
    b /= np.linalg.norm(b)
    c = np.cross(a, b)
    b, c = math.cos(roll) * b + math.sin(roll) * c, -math.sin(roll) * b + math.cos(roll) * c
    return np.stack([a, b, c])


def _segment_sd(p0, p1, r0: float, r1: float, z, w, u):
    """Signed distance to a capsule (a tube from p0 to p1, radius r0 -> r1, round ends)."""
    d = [float(b - a) for a, b in zip(p0, p1)]
    dz, dw, du = (z - float(p0[0]), w - float(p0[1]), u - float(p0[2]))
    length2 = d[0] ** 2 + d[1] ** 2 + d[2] ** 2
    t = np.clip((dz * d[0] + dw * d[1] + du * d[2]) / length2, 0.0, 1.0) if length2 > 0 else 0.0 * dz
    dist = np.sqrt((dz - t * d[0]) ** 2 + (dw - t * d[1]) ** 2 + (du - t * d[2]) ** 2)
    return dist - (r0 + t * (r1 - r0))


@dataclass(frozen=True)
class _Waves:
    """A smooth random field: a sum of cosines ``sum a cos(k . p + phase)``, |field| <= sum |a|."""

    amps: np.ndarray  # (n,)
    k: np.ndarray  # (n, d) angular wave numbers, rad/mm
    phase: np.ndarray  # (n,)

    @classmethod
    def draw(cls, rng: np.random.Generator, n: int, dims: int, wavelength: Range, total: float = 1.0) -> "_Waves":
        """``n`` waves of random direction, wavelengths in ``wavelength`` mm, amplitudes summing to ``total``."""
        direction = rng.normal(size=(n, dims))
        direction /= np.linalg.norm(direction, axis=1, keepdims=True)
        k = direction * (2 * np.pi / rng.uniform(*wavelength, size=(n, 1)))
        amps = rng.uniform(0.5, 1.0, size=n)
        return cls(amps * (total / amps.sum()), k, rng.uniform(0, 2 * np.pi, size=n))

    @property
    def std(self) -> float:
        """Standard deviation of the field over space (random phases): sqrt(sum a^2 / 2)."""
        return float(np.sqrt((self.amps ** 2).sum() / 2))

    def __call__(self, *coords):
        out = 0.0
        for a, k, ph in zip(self.amps, self.k, self.phase):
            arg = float(ph) + sum(float(kk) * c for kk, c in zip(k, coords))
            out = out + np.float32(a) * np.cos(arg)
        return out


def _u(rng: np.random.Generator, r: Range) -> float:
    return float(rng.uniform(r[0], r[1]))


def _count(rng: np.random.Generator, r: IntRange) -> int:
    return int(rng.integers(r[0], r[1] + 1))


# ---------------------------------------------------------------------- placement
@dataclass(frozen=True)
class _Frame:
    """Patient frame -> world: scale, rotation about z (rad), body centre (y, x) mm, z of the dome (mm)."""

    scale: float
    theta: float
    cy: float
    cx: float
    z0: float

    def to_world(self, pts) -> np.ndarray:
        """Points (..., 3) in the patient frame (z, w, u) -> world (z, y, x) mm."""
        p = np.asarray(pts, dtype=np.float64) * self.scale
        c, s = math.cos(self.theta), math.sin(self.theta)
        x = self.cx + c * p[..., 2] - s * p[..., 1]
        y = self.cy + s * p[..., 2] + c * p[..., 1]
        return np.stack([self.z0 + p[..., 0], y, x], axis=-1)


def _place(rng: np.random.Generator, cfg: PatientConfig, geom: VolumeGeometry, half_axes: Range,
           table_mm: float) -> _Frame:
    """Offset, rotation, scale (<= 1, to fit grid, margins, table and field of view) and z placement."""
    a, b = half_axes
    theta = math.radians(rng.uniform(-cfg.rotation_deg, cfg.rotation_deg))
    lo, hi = geom.box_min, geom.box_max
    y_lo, y_hi = lo[1] + cfg.margin_mm + table_mm, hi[1] - cfg.margin_mm
    x_lo, x_hi = lo[2] + cfg.margin_mm, hi[2] - cfg.margin_mm
    if y_hi <= y_lo or x_hi <= x_lo:
        raise InputError(f"patient config: the grid ({geom.describe()}) leaves no room inside its margins")
    span = np.array([y_hi - y_lo, x_hi - x_lo])
    offset = np.clip(rng.uniform(-cfg.offset_mm, cfg.offset_mm, size=2), -0.1 * span, 0.1 * span)
    cy, cx = (y_lo + y_hi) / 2 + offset[0], (x_lo + x_hi) / 2 + offset[1]
    c, s = math.cos(theta), math.sin(theta)
    ey, ex = math.hypot(a * s, b * c), math.hypot(a * c, b * s)  # world half-extents of the rotated ellipse
    limits = [(y_hi - cy) / ey, (cy - y_lo) / ey, (x_hi - cx) / ex, (cx - x_lo) / ex, 1.0]
    if cfg.fov_radius_mm is not None:
        edge = 0.5 * max(geom.voxel_size[1:])  # partial-volume voxels reach half a voxel beyond the outline
        limits.append((cfg.fov_radius_mm - edge - math.hypot(cy, cx)) / max(a, b))
    scale = min(limits)
    if scale < _MIN_SCALE:
        raise InputError(f"patient config: a body does not fit the grid ({geom.describe()})"
                         + ("" if cfg.fov_radius_mm is None else f" and field of view (radius {cfg.fov_radius_mm:g} mm)")
                         + f" at a plausible size (scale {scale:.2f} < {_MIN_SCALE})")
    z0 = lo[0] + _u(rng, cfg.diaphragm_level) * geom.size[0]
    return _Frame(scale, theta, cy, cx, z0)


# ---------------------------------------------------------------------- anatomy
class _Anatomy:
    """All random parameters of one patient in the patient frame (mm), and its shapes' signed distances."""

    def __init__(self, rng: np.random.Generator, cfg: PatientConfig, half_width: float, aspect: float,
                 z_visible: Range):
        self.cfg = cfg
        self.z_visible = z_visible
        U = lambda r: _u(rng, r)  # noqa: E731
        # body and walls
        self.a0, self.b0 = half_width, half_width * aspect
        self.width_z = _Waves.draw(rng, 3, 1, (150.0, 500.0), _BODY_Z_VARIATION)
        self.depth_z = _Waves.draw(rng, 3, 1, (150.0, 500.0), _BODY_Z_VARIATION)
        self.drift_u = _Waves.draw(rng, 2, 1, (200.0, 600.0), _BODY_DRIFT_MM)
        self.drift_w = _Waves.draw(rng, 2, 1, (200.0, 600.0), _BODY_DRIFT_MM)
        self.fat = U(cfg.fat_fraction) * self.b0
        self.muscle = U(cfg.muscle_fraction) * self.b0
        self.cw = 0.5 * self.muscle  # the cavity sits anterior: the back wall is thicker
        L = self.L = self.a0 - self.fat - self.muscle  # cavity half-width (size unit)
        M = self.M = self.b0 - self.fat - 2.0 * self.muscle  # the cavity's back wall is at w = -M
        k = self.k = L / 140.0
        size = lambda: U(cfg.organ_scale)  # noqa: E731
        # tissue values
        self.lung_hu, self.fat_hu, self.muscle_hu = U(cfg.lung_hu), U(cfg.fat_hu), U(cfg.muscle_hu)
        self.soft_hu = U((20.0, 40.0))
        self.visceral_fat = U((0.15, 0.5))
        contrast = rng.uniform() < cfg.contrast_probability
        self.blood_hu = U((150.0, 280.0)) if contrast else U((35.0, 50.0))
        self.myocardium_hu = U((35.0, 55.0))
        self.liver_hu = U(cfg.liver_hu) + (U((30.0, 60.0)) if contrast else 0.0)
        self.spleen_hu = U((40.0, 55.0)) + (U((40.0, 80.0)) if contrast else 0.0)
        self.kidney_hu = U(cfg.kidney_hu) + (U((80.0, 150.0)) if contrast else 0.0)
        self.stomach_hu = U((15.0, 35.0))
        self.cancellous_hu, self.cortical_hu = U(cfg.cancellous_hu), U(cfg.cortical_hu)
        self.rib_hu, self.cartilage_hu = U(cfg.rib_hu), U((80.0, 150.0))
        self.disc_hu, self.canal_hu = U((60.0, 100.0)), U((5.0, 30.0))
        # lungs and diaphragm
        self.lung_top = U(cfg.lung_height_mm) * U((0.9, 1.1)) * max(k, 0.8)
        self.dome_left = -U((10.0, 25.0))
        self.dome_depth = U((50.0, 80.0)) * k
        self.apex_depth = U((30.0, 50.0)) * k
        self.mediastinum = U((0.16, 0.24)) * L
        # spine (vertebral body half-axes grow caudally), its curvature
        self.vb_u = 0.13 * L * U((0.9, 1.1))
        self.vb_w = 0.8 * self.vb_u
        self.vb_wc = self.cw - M + 1.3 * self.vb_w
        self.spine_curve = _Waves.draw(rng, 1, 1, (500.0, 800.0), U((0.0, 8.0)))
        self.canal_r = 0.055 * L
        self.period = U((24.0, 30.0)) * max(k, 0.8)
        self.disc = U((5.0, 8.0)) * max(k, 0.8)
        self.phase = U((0.0, self.period))
        self.cortex = U((1.2, 2.0))
        # heart and great vessels
        self.heart_c = np.array([U((35.0, 50.0)) * k, self.cw + 0.3 * M, -U((0.12, 0.2)) * L])
        self.heart_axes = np.array([0.5, 0.4, 0.36]) * L * size()
        axis = np.array([-0.45, 0.5, -0.75]) + rng.normal(scale=0.1, size=3)
        self.heart_rot = _rotation(axis, U((0.0, np.pi)))
        self.aorta_r = U((11.0, 15.0)) * k
        self.trachea_r = U((8.0, 11.0)) * k
        self.hilum_z = U((0.42, 0.52)) * self.lung_top
        self.hilum_w = self.cw + U((-0.1, 0.05)) * M
        self.hila = [np.array([self.hilum_z, self.hilum_w, side * (self.mediastinum + 12.0 * k)]) for side in (1, -1)]
        # abdominal organs: (centre, half-axes (mm), rotation)
        self.liver = (np.array([-U((40.0, 60.0)) * k, self.cw, 0.25 * L]),
                      np.array([0.75 * L, 0.85 * M, 0.65 * L]) * size(), np.eye(3))
        self.spleen = (np.array([-U((30.0, 60.0)) * k, self.cw - 0.45 * M, -0.62 * L]),
                       np.array([0.38 * L, 0.32 * M, 0.17 * L]) * size(), np.eye(3))
        self.stomach = (np.array([-U((30.0, 50.0)) * k, self.cw + 0.3 * M, -0.35 * L]),
                        np.array([0.30 * L, 0.30 * M, 0.28 * L]) * size(), np.eye(3))
        self.stomach_gas = rng.uniform() < 0.7
        self.kidneys = []
        for side in (1, -1):
            kz = -U((90.0, 120.0)) * k - (U((5.0, 20.0)) * k if side > 0 else 0.0)
            centre = np.array([kz, self.vb_wc + 5.0 * k, side * (self.vb_u + 0.3 * L)])
            rot = _rotation([1.0, -0.15, -0.2 * side], side * math.radians(U((15.0, 35.0))))
            self.kidneys.append((centre, np.array([0.38, 0.2, 0.16]) * L * size(), rot))
        # stochastic structures: vessel trees, ribs, lesions, gas
        self.vessels = self._vessel_trees(rng, U)
        self.ribs = self._ribs(rng, U)
        self.sternum = (U((-5.0, 25.0)) * k, self.lung_top - U((20.0, 40.0)) * k, 0.11 * L, U((5.0, 7.0)) * k)
        self.lung_lesions = self._lesions(rng, cfg.lung_nodules, self._lung_box(), self._inside_lung,
                                          self._lung_lesion_value)
        self.liver_lesions = self._lesions(rng, cfg.liver_lesions, self._box(self.liver), self._inside_liver,
                                           self._liver_lesion_value)
        self.gas = self._gas_pockets(rng, U)
        self.fine_fat = _Waves.draw(rng, 8, 3, (25.0, 60.0), 1.0)
        self.smooth = _Waves.draw(rng, 6, 3, (60.0, 200.0), cfg.smooth_hu)

    # ------------------------------------------------------------------ body and cavity
    def _ellipse(self, z, w, u, shrink_u: float, shrink_w: float, shift_w: float = 0.0):
        a = self.a0 * (1 + self.width_z(z)) - shrink_u
        b = self.b0 * (1 + self.depth_z(z)) - shrink_w
        return _ellipsoid_sd((u - self.drift_u(z), w - self.drift_w(z) - shift_w), (a, b))

    def body_sd(self, z, w, u):
        return self._ellipse(z, w, u, 0.0, 0.0)

    def wall_sd(self, z, w, u):
        """Inner face of the subcutaneous fat (outer face of the muscle wall)."""
        return self._ellipse(z, w, u, self.fat, self.fat)

    def cavity_sd(self, z, w, u):
        return self._ellipse(z, w, u, self.fat + self.muscle, self.fat + 1.5 * self.muscle, self.cw)

    def cavity_axes(self, z):
        return (self.a0 * (1 + self.width_z(z)) - self.fat - self.muscle,
                self.b0 * (1 + self.depth_z(z)) - self.fat - 1.5 * self.muscle)

    def dome(self, w, u):
        """z (mm) of the diaphragm above (w, u): two domes, the right one higher."""
        top = self.dome_left + (0.0 - self.dome_left) / (1 + np.exp(-u / (15.0 * self.k)))
        r2 = ((np.abs(u) - 0.35 * self.L) / (0.65 * self.L)) ** 2 + ((w - self.cw + 0.1 * self.M) / (0.95 * self.M)) ** 2
        return top - self.dome_depth * r2

    def spine_w(self, z):
        return self.vb_wc + self.spine_curve(z)

    def spine_scale(self, z):
        """Vertebral size factor: smaller at the top of the thorax, larger in the lumbar spine."""
        return 1 + 0.25 * np.clip(-z / 250.0, 0, 1) - 0.15 * np.clip(z / self.lung_top - 0.5, 0, 1)

    def lung_sd(self, z, w, u):
        top = self.lung_top - self.apex_depth * (((np.abs(u) - 0.45 * self.L) / (0.45 * self.L)) ** 2
                                                 + ((w - self.cw + 0.1 * self.M) / (0.8 * self.M)) ** 2)
        spine = (1.15 * self.vb_u * self.spine_scale(z) + 6.0) - np.sqrt(u ** 2 + (w - self.spine_w(z)) ** 2)
        sd = np.maximum(self.cavity_sd(z, w, u) + 2.0, self.dome(w, u) - z)
        sd = np.maximum(sd, z - top)
        sd = np.maximum(sd, -_ellipsoid_sd((u, w - self.cw - 0.05 * self.M), (self.mediastinum, 0.95 * self.M)))
        return np.maximum(sd, spine)

    def heart_sd(self, z, w, u):
        sd = _ellipsoid_sd(_local(self.heart_rot, self.heart_c, z, w, u), self.heart_axes)
        return np.maximum(sd, self.cavity_sd(z, w, u) + 2.0)

    def organ_sd(self, organ, z, w, u):
        """An abdominal organ: its ellipsoid within the cavity and below the diaphragm."""
        centre, axes, rot = organ
        sd = _ellipsoid_sd(_local(rot, centre, z, w, u), axes)
        return np.maximum(np.maximum(sd, self.cavity_sd(z, w, u) + 1.0), z - self.dome(w, u) + 3.0)

    # ------------------------------------------------------------------ random structures
    def _box(self, organ, margin: float = 0.0):
        centre, axes, _ = organ
        r = float(np.max(axes)) + margin
        return centre - r, centre + r

    def _lung_box(self):
        lo = np.array([self.dome_left - self.dome_depth, self.cw - self.M, -self.L * 1.1])
        hi = np.array([self.lung_top, self.cw + self.M, self.L * 1.1])
        return lo, hi

    def _inside_lung(self, p, r):
        return (self.lung_sd(*p) < -r) & (self.heart_sd(*p) > r)

    def _inside_liver(self, p, r):
        return self.organ_sd(self.liver, *p) < -r

    def _lung_lesion_value(self, rng):
        kind = rng.uniform()
        if kind < 0.7:
            return _u(rng, (-50.0, 80.0))  # solid
        if kind < 0.9:
            return _u(rng, (-650.0, -350.0))  # ground glass
        return _u(rng, (300.0, 700.0))  # calcified

    def _liver_lesion_value(self, rng):
        return self.liver_hu + (-_u(rng, (30.0, 60.0)) if rng.uniform() < 0.6 else _u(rng, (25.0, 50.0)))

    def _candidates(self, rng, box, n: int = 256) -> np.ndarray:
        """``n`` uniform points (3, n) in ``box`` limited to the visible z range (none when they miss it)."""
        lo, hi = np.array(box[0], dtype=np.float64), np.array(box[1], dtype=np.float64)
        lo[0], hi[0] = max(lo[0], self.z_visible[0]), min(hi[0], self.z_visible[1])
        pts = rng.uniform(size=(3, n))
        return lo[:, None] + pts * (hi - lo)[:, None] if hi[0] > lo[0] else np.zeros((3, 0))

    def _lesions(self, rng, count: IntRange, box, inside, value) -> list:
        """Lobulated blobs: [(centre, radius, value)] of 1-3 overlapping spheres each, inside an organ."""
        out = []
        for _ in range(_count(rng, count)):
            r = _u(rng, self.cfg.lesion_radius_mm)
            p = self._candidates(rng, box)
            ok = np.flatnonzero(inside(p, r))
            if len(ok) == 0:
                continue
            c = p[:, ok[0]]
            v = value(rng)
            out.append((c, r, v))
            for _ in range(int(rng.integers(0, 3))):
                d = rng.normal(size=3)
                out.append((c + d / np.linalg.norm(d) * r * _u(rng, (0.4, 0.7)), r * _u(rng, (0.5, 0.8)), v))
        return out

    def _gas_pockets(self, rng, U) -> list:
        out = []
        box = (np.array([-300.0 * self.k, self.cw - 0.2 * self.M, -0.7 * self.L]),
               np.array([-60.0 * self.k, self.cw + self.M, 0.7 * self.L]))
        for _ in range(_count(rng, self.cfg.gas_pockets)):
            axes = np.array([U((6.0, 20.0)), U((5.0, 12.0)), U((6.0, 18.0))]) * self.k
            p = self._candidates(rng, box)
            r = float(axes.max())
            ok = (self.cavity_sd(*p) < -r) & (self.organ_sd(self.liver, *p) > r)
            for kidney in self.kidneys:
                ok &= self.organ_sd(kidney, *p) > r
            idx = np.flatnonzero(ok)
            if len(idx):
                out.append((p[:, idx[0]], axes))
        return out

    def _vessel_trees(self, rng, U) -> list:
        """Capsules (p0, p1, r0, r1) of the pulmonary vessels: from each hilum, 8 mains that branch in two.

        Mains head for well-spread points of the lung (farthest-point picks); each child
        direction is the best of three random turns (its end deepest inside the lung), which
        makes the tree fill the lung instead of leaving it.
        """
        segments = []
        lo, hi = self._lung_box()
        for hilum, side in zip(self.hila, (1, -1)):
            box_lo, box_hi = lo.copy(), hi.copy()
            if side > 0:
                box_lo[2] = self.mediastinum
            else:
                box_hi[2] = -self.mediastinum
            pts = box_lo[:, None] + rng.uniform(size=(3, 512)) * (box_hi - box_lo)[:, None]
            pool = pts[:, self.lung_sd(*pts) < -10.0].T
            targets = []
            while len(targets) < 8 and len(pool):
                far = 0 if not targets else int(np.argmax(np.min(
                    [np.linalg.norm(pool - t, axis=1) for t in targets], axis=0)))
                targets.append(pool[far])
            if not targets:
                continue
            start = np.asarray(targets) - hilum
            length = 0.45 * np.linalg.norm(start, axis=1)
            d = start / np.linalg.norm(start, axis=1, keepdims=True)
            p = np.repeat(hilum[None], len(d), axis=0)
            r = rng.uniform(3.5, 5.5, size=len(d)) * self.k
            for gen in range(self.cfg.vessel_generations + 1):  # one generation of all branches at a time
                q = p + d * length[:, None]
                segments += [(a, b, float(ra), 0.85 * float(ra)) for a, b, ra in zip(p, q, r)]
                if gen == self.cfg.vessel_generations:
                    break
                n = 2 * len(d)  # two children per branch, each the best of 3 random turns
                d, q, length, r = (np.repeat(x, 2, axis=0) for x in (d, q, length, r))
                v = rng.normal(size=(n, 3, 3))
                v -= np.einsum("nkj,nj->nk", v, d)[..., None] * d[:, None]
                v /= np.linalg.norm(v, axis=2, keepdims=True)
                a = np.radians(rng.uniform(20.0, 45.0, size=(n, 3, 1)))
                dirs = np.cos(a) * d[:, None] + np.sin(a) * v
                length = length * rng.uniform(0.65, 0.85, size=n)
                ends = q[:, None] + length[:, None, None] * dirs
                best = np.argmin(self.lung_sd(*ends.reshape(-1, 3).T).reshape(n, 3), axis=1)
                p, d, r = q, dirs[np.arange(n), best], 0.75 * r
        return segments

    def _ribs(self, rng, U) -> list:
        """Capsules (p0, p1, r0, r1, value) of 12 rib pairs with their costal cartilage."""
        top = self.lung_top - U((5.0, 20.0)) * self.k
        bottom = -U((60.0, 90.0)) * self.k
        drop = U((60.0, 110.0)) * self.k
        radius = U((3.5, 5.0)) * self.k
        out = []
        for side in (1, -1):
            for i in range(12):
                z_att = top + (bottom - top) * i / 11
                a_end, _ = self.cavity_axes(np.float64(z_att))
                if i < 7:
                    end, cart = math.pi - math.asin(min(0.95, (0.11 * self.L + 8.0) / float(a_end))), 2.35
                elif i < 10:
                    end, cart = U((2.3, 2.6)), 2.1
                else:
                    end, cart = U((1.6, 2.0)), 9.0
                theta = np.linspace(0.25, end, 12)
                z = z_att - drop * (theta - 0.25) / (math.pi - 0.25)
                a, b = self.cavity_axes(z)
                ring_u = self.drift_u(z) + side * (a + 0.45 * self.muscle) * np.sin(theta)
                ring_w = self.cw + self.drift_w(z) - (b + 0.45 * self.muscle) * np.cos(theta)
                head = np.array([z_att + 5.0, float(self.spine_w(np.float64(z_att))) - 0.3 * self.vb_w,
                                 side * (self.vb_u + 3.0)])
                pts = [head] + [np.array(p) for p in zip(z, ring_w, ring_u)]
                for j in range(len(pts) - 1):
                    value = self.cartilage_hu if j > 0 and theta[j - 1] > cart else self.rib_hu
                    out.append((pts[j], pts[j + 1], radius, radius, value))
        return out


# ---------------------------------------------------------------------- rendering
class _Canvas:
    """The HU grid being painted, with patient-frame coordinates of its voxel centres."""

    def __init__(self, geom: VolumeGeometry, frame: _Frame):
        self.geom, self.frame = geom, frame
        zc, yc, xc = (geom.axis_coords(a) for a in range(3))
        c, s = math.cos(frame.theta), math.sin(frame.theta)
        dy, dx = (yc - frame.cy)[:, None], (xc - frame.cx)[None, :]
        self.z = ((zc - frame.z0) / frame.scale).astype(np.float32)[:, None, None]
        self.u = ((c * dx + s * dy) / frame.scale).astype(np.float32)[None]
        self.w = ((-s * dx + c * dy) / frame.scale).astype(np.float32)[None]
        self.h = float(np.mean(geom.voxel_size)) / frame.scale  # patient-frame mm per voxel
        self.hu = np.full(geom.shape, AIR_HU, dtype=np.float32)

    def block(self, lo, hi):
        """(slices, z, w, u) of the voxels covering the patient-frame box [lo, hi] (z, w, u), or None."""
        corners = np.array(list(itertools.product(*zip(lo, hi))), dtype=np.float64)
        idx = self.geom.world_to_index(self.frame.to_world(corners))
        start = np.maximum(np.floor(idx.min(0)).astype(int) - 1, 0)
        stop = np.minimum(np.ceil(idx.max(0)).astype(int) + 2, self.geom.shape)
        if np.any(stop <= start):
            return None
        sl = tuple(slice(int(a), int(b)) for a, b in zip(start, stop))
        return sl, self.z[sl[0]], self.w[:, sl[1], sl[2]], self.u[:, sl[1], sl[2]]

    def paint(self, sl, occ, value) -> None:
        block = self.hu[sl]
        block += occ * (np.float32(value) - block)

    def shape(self, lo, hi, sd_fn, value, mask=None):
        """Paint ``value`` where ``sd_fn(z, w, u) < 0`` within the box [lo, hi]; returns (slices, occupancy).

        ``mask`` clips the shape: a second signed-distance function, or a grid of occupancies.
        """
        found = self.block(lo, hi)
        if found is None:
            return None
        sl, z, w, u = found
        occ = _occ(sd_fn(z, w, u), self.h)
        if callable(mask):
            occ = occ * _occ(mask(z, w, u), self.h)
        elif mask is not None:
            occ = occ * mask[sl]
        self.paint(sl, occ, value)
        return sl, occ

    def capsule(self, p0, p1, r0: float, r1: float, value, mask=None) -> None:
        r = max(r0, r1) + self.h
        lo, hi = np.minimum(p0, p1) - r, np.maximum(p0, p1) + r
        self.shape(lo, hi, lambda z, w, u: _segment_sd(p0, p1, r0, r1, z, w, u), value, mask)


def _render(a: _Anatomy, cv: _Canvas) -> np.ndarray:
    """Paint every structure but the table and the noise; returns the body occupancy (float32 grid)."""
    k, L, M = a.k, a.L, a.M
    z, w, u = cv.z, cv.w, cv.u
    full = (slice(None),) * 3
    # walls and fillers (mediastinal / visceral soft tissue mixed with patches of fat)
    body = _occ(a.body_sd(z, w, u), cv.h)
    cv.paint(full, body, a.fat_hu)
    cv.paint(full, _occ(a.wall_sd(z, w, u), cv.h), a.muscle_hu)
    std = a.fine_fat.std
    threshold = NormalDist(0.0, std).inv_cdf(1.0 - a.visceral_fat)
    fat_mix = np.clip(0.5 + (a.fine_fat(z, w, u) - threshold) / (0.5 * std), 0.0, 1.0)
    cv.paint(full, _occ(a.cavity_sd(z, w, u), cv.h), a.soft_hu + (a.fat_hu - a.soft_hu) * fat_mix)
    # abdominal organs
    for organ, value in ((a.liver, a.liver_hu), (a.spleen, a.spleen_hu), (a.stomach, a.stomach_hu)):
        cv.shape(*a._box(organ), lambda z, w, u, o=organ: a.organ_sd(o, z, w, u), value)
    if a.stomach_gas:
        c, axes, _ = a.stomach
        gas_w = float(c[1] + 0.4 * axes[1])
        cv.shape(*a._box(a.stomach), lambda z, w, u: np.maximum(a.organ_sd(a.stomach, z, w, u) + 3.0, gas_w - w),
                 AIR_HU)
    for kidney in a.kidneys:
        cv.shape(*a._box(kidney, 10.0 * k), lambda z, w, u, o=kidney: a.organ_sd(o, z, w, u) - 8.0 * k, a.fat_hu)
        cv.shape(*a._box(kidney), lambda z, w, u, o=kidney: a.organ_sd(o, z, w, u), a.kidney_hu)
    for c, axes in a.gas:
        r = float(axes.max())
        cv.shape(c - r, c + r, lambda z, w, u, c=c, ax=axes: _ellipsoid_sd((z - c[0], w - c[1], u - c[2]), ax), AIR_HU)
    # lungs, heart and great vessels, pulmonary vessels, nodules, airways
    lungs = np.zeros(cv.hu.shape, dtype=np.float32)  # lung occupancy: where vessels and nodules may go
    found = cv.shape(*a._lung_box(), a.lung_sd, a.lung_hu)
    if found is not None:
        lungs[found[0]] = found[1]
    hr = float(a.heart_axes.max()) + 6.0
    heart_box = (a.heart_c - hr, a.heart_c + hr)
    cv.shape(*heart_box, lambda z, w, u: a.heart_sd(z, w, u) - 4.0, a.fat_hu)  # pericardial fat
    cv.shape(*heart_box, a.heart_sd, a.myocardium_hu)
    cv.shape(*heart_box, lambda z, w, u: a.heart_sd(z, w, u) + 9.0 * k, a.blood_hu)
    root = a.heart_c + np.array([0.6 * a.heart_axes[0], 0.0, 0.15 * L])
    arch_z = max(0.65 * a.lung_top, root[0] + 40.0 * k)
    desc_u, front = -(a.vb_u + a.aorta_r + 3.0), a.vb_wc + a.vb_w
    low = min(-150.0 * k, a.z_visible[0]) - 20.0
    aorta = [root, root + [0.5 * (arch_z - root[0]), -0.05 * M, 0.0], [arch_z, a.cw - 0.05 * M, 0.08 * L],
             [arch_z + 12.0 * k, a.cw - 0.3 * M, -0.06 * L], [arch_z, front, desc_u],
             [0.0, front + 0.3 * a.aorta_r, desc_u], [-150.0 * k, front + a.aorta_r, -0.5 * a.vb_u],
             [low, front + a.aorta_r, -0.5 * a.vb_u]]
    for p0, p1 in zip(aorta[:-1], aorta[1:]):
        cv.capsule(np.asarray(p0), np.asarray(p1), a.aorta_r, a.aorta_r, a.blood_hu, a.cavity_sd)
    trunk = a.heart_c + np.array([0.5 * a.heart_axes[0], 0.25 * M, -0.05 * L])
    fork = np.array([a.hilum_z + 8.0 * k, a.cw + 0.05 * M, -0.08 * L])
    cv.capsule(trunk, fork, 0.85 * a.aorta_r, 0.8 * a.aorta_r, a.blood_hu)
    for hilum in a.hila:
        cv.capsule(fork, hilum, 0.65 * a.aorta_r, 0.45 * a.aorta_r, a.blood_hu)
    for p0, p1, r0, r1 in a.vessels:
        cv.capsule(p0, p1, r0, r1, a.blood_hu, lungs)
    for c, r, value in a.lung_lesions:
        cv.capsule(c, c, r, r, value, lungs)
    trachea_w = a.vb_wc + a.vb_w + 8.0 * k + a.trachea_r
    carina = np.array([a.hilum_z + 25.0 * k, trachea_w, 0.0])
    cv.capsule(np.array([a.z_visible[1] + 20.0, trachea_w, 0.0]), carina, a.trachea_r, a.trachea_r, AIR_HU)
    for hilum in a.hila:
        cv.capsule(carina, hilum + [8.0 * k, -6.0 * k, 0.0], 0.7 * a.trachea_r, 0.55 * a.trachea_r, AIR_HU)
    for c, r, value in a.liver_lesions:
        cv.capsule(c, c, r, r, value, lambda z, w, u: a.organ_sd(a.liver, z, w, u))
    _render_bones(a, cv, body)
    return body


def _render_bones(a: _Anatomy, cv: _Canvas, body: np.ndarray) -> None:
    """Vertebrae (cortical shell, cancellous core, discs, posterior arch, canal), ribs, sternum; within ``body``."""
    k, g_max = a.k, 1.3
    back = 0.6 * (a.fat + 2.0 * a.muscle)  # length of the spinous process
    reach = (a.vb_u + a.canal_r + 35.0 * k) * g_max
    lo = np.array([-1e6, a.vb_wc - 10.0 - (a.vb_w + 2 * a.canal_r + 5.0 * k) * g_max - back, -reach])
    hi = np.array([1e6, a.vb_wc + 10.0 + a.vb_w * g_max, reach])
    found = cv.block(lo, hi)
    if found is not None:
        sl, z, w, u = found
        inside = body[sl]
        g = a.spine_scale(z)
        wc = w - a.spine_w(z)  # w relative to the vertebral body's centre
        dz = np.abs((z - a.phase + 0.5 * a.period) % a.period - 0.5 * a.period)  # to the nearest body centre
        half = 0.5 * (a.period - a.disc)
        body2d = _ellipsoid_sd((u, wc), (a.vb_u * g, a.vb_w * g))
        cv.paint(sl, _occ(body2d, cv.h) * inside, a.disc_hu)
        cv.paint(sl, _occ(body2d, cv.h) * _occ(dz - half, cv.h) * inside, a.cortical_hu)
        cv.paint(sl, _occ(body2d + a.cortex, cv.h) * _occ(dz - half + a.cortex, cv.h) * inside, a.cancellous_hu)
        rc = a.canal_r * g
        cw = wc + a.vb_w * g + rc - 1.0  # w relative to the canal's centre
        canal_d = np.sqrt(u ** 2 + cw ** 2)
        ring = np.abs(canal_d - rc - 3.0 * k) - 3.0 * k
        spinous = np.sqrt(u ** 2 + (cw - np.clip(cw, -rc - back, -rc)) ** 2) - 4.0 * k
        t = np.clip(np.abs(u), rc, rc + 28.0 * k * g)
        transverse = np.sqrt((np.abs(u) - t) ** 2 + (cw + 0.15 * (t - rc)) ** 2) - 4.5 * k
        arch = np.minimum(np.minimum(ring, spinous), transverse)
        cv.paint(sl, _occ(arch, cv.h) * _occ(dz - half + 1.0, cv.h) * inside, 0.5 * (a.cortical_hu + a.cancellous_hu))
        cv.paint(sl, _occ(canal_d - rc, cv.h) * inside, a.canal_hu)
    for p0, p1, r0, r1, value in a.ribs:
        cv.capsule(p0, p1, r0, r1, value, body)
    z_lo, z_hi, su, sw = a.sternum

    def sternum_sd(z, w, u, inset=0.0):
        _, b = a.cavity_axes(z)
        sd = _ellipsoid_sd((u - a.drift_u(z), w - (a.cw + a.drift_w(z) + b + 0.35 * a.muscle)), (su, sw))
        return np.maximum(sd, np.maximum(z - z_hi, z_lo - z)) + inset

    front = a.b0 * (1 + _BODY_Z_VARIATION) + _BODY_DRIFT_MM
    box = (np.array([z_lo, a.cw + 0.5 * a.M, -2 * su]), np.array([z_hi, front, 2 * su]))
    cv.shape(*box, sternum_sd, a.cortical_hu, body)
    cv.shape(*box, lambda z, w, u: sternum_sd(z, w, u, a.cortex), a.cancellous_hu, body)


def _table(cv: _Canvas, rng: np.random.Generator, cfg: PatientConfig, body_bottom: float, thickness: float) -> None:
    """A flat couch slab (world frame, all z) of ``thickness`` mm just below ``body_bottom`` (world y, mm)."""
    geom = cv.geom
    top = body_bottom - _u(rng, _TABLE_GAP_MM)
    half = min(_TABLE_HALF_WIDTH_MM, geom.size[2] / 2 - cfg.margin_mm)
    y, x = geom.axis_coords(1)[:, None], geom.axis_coords(2)[None, :] - geom.center[2]
    sd = np.maximum(np.maximum(y - top, top - thickness - y), np.abs(x) - half)
    cv.paint((slice(None),) * 3, _occ(sd, float(np.mean(geom.voxel_size[1:])))[None], cfg.table_hu)


def _texture(rng: np.random.Generator, cfg: PatientConfig, geom: VolumeGeometry) -> np.ndarray:
    """Gaussian-correlated noise of unit std on the grid (correlation length ``texture_mm``)."""
    sigma = [cfg.texture_mm / s for s in geom.voxel_size]
    noise = gaussian_filter(rng.standard_normal(geom.shape, dtype=np.float32), sigma, mode="wrap")
    return noise / np.float32(max(float(noise.std()), 1e-12))


# ---------------------------------------------------------------------- entry point
def generate_patient(seed: int, cfg: PatientConfig = PatientConfig()) -> tuple[np.ndarray, VolumeGeometry]:
    """A random patient in HU: (float32 [z, y, x] in [-1024, 3000], its VolumeGeometry = ``cfg.geometry()``).

    Everything is drawn from ``numpy.random.default_rng`` streams of ``seed`` alone: the same
    seed and config give a bitwise identical volume; different seeds give different patients.
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InputError(f"seed: must be a non-negative integer, got {seed!r}")
    geom = cfg.geometry()
    anatomy_ss, texture_ss, table_ss = np.random.SeedSequence(int(seed)).spawn(3)
    rng, table_rng = np.random.default_rng(anatomy_ss), np.random.default_rng(table_ss)
    half_width, aspect = _u(rng, cfg.body_half_width_mm), _u(rng, cfg.body_aspect)
    thickness = _u(table_rng, _TABLE_MM)  # room for a table is kept with or without one: same patient
    extent = (half_width * (1 + _BODY_Z_VARIATION) + _BODY_DRIFT_MM,
              half_width * aspect * (1 + _BODY_Z_VARIATION) + _BODY_DRIFT_MM)
    frame = _place(rng, cfg, geom, extent, thickness + _TABLE_GAP_MM[1])
    z_visible = ((geom.box_min[0] - frame.z0) / frame.scale, (geom.box_max[0] - frame.z0) / frame.scale)
    anat = _Anatomy(rng, cfg, half_width, aspect, z_visible)
    cv = _Canvas(geom, frame)
    body = _render(anat, cv)
    variation = anat.smooth(cv.z, cv.w, cv.u)
    if cfg.texture_hu > 0:
        variation = variation + np.float32(cfg.texture_hu) * _texture(np.random.default_rng(texture_ss), cfg, geom)
    cv.hu += body * variation
    if cfg.table:
        c, s = math.cos(frame.theta), math.sin(frame.theta)
        _table(cv, table_rng, cfg, frame.cy - math.hypot(extent[0] * s, extent[1] * c) * frame.scale, thickness)
    np.clip(cv.hu, HU_MIN, HU_MAX, out=cv.hu)
    return cv.hu, geom
