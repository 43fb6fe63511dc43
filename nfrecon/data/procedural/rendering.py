"""Placing a procedural patient on the grid and painting it: world (z, y, x) mm, volumes [z, y, x] in HU.

:func:`place` fits the body into the grid and field of view (:class:`Frame`, patient frame
(z, w, u) -> world), :class:`Canvas` paints partial-volume shapes onto the HU grid, and
:func:`generate_patient` runs it all from a seed.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np
from scipy.ndimage import gaussian_filter

from nfrecon.data.procedural.anatomy import Anatomy
from nfrecon.data.procedural.config import (
    AIR_HU,
    BODY_DRIFT_MM,
    BODY_Z_VARIATION,
    HU_MAX,
    HU_MIN,
    MIN_SCALE,
    TABLE_GAP_MM,
    TABLE_HALF_WIDTH_MM,
    TABLE_MM,
    PatientConfig,
    Range,
)
from nfrecon.data.procedural.shapes import ellipsoid_sd, occupancy, segment_sd, uniform
from nfrecon.errors import InputError
from nfrecon.geometry.volume import VolumeGeometry


# ---------------------------------------------------------------------- placement
@dataclass(frozen=True)
class Frame:
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


def place(rng: np.random.Generator, cfg: PatientConfig, geom: VolumeGeometry, half_axes: Range,
           table_mm: float) -> Frame:
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
    if scale < MIN_SCALE:
        raise InputError(f"patient config: a body does not fit the grid ({geom.describe()})"
                         + ("" if cfg.fov_radius_mm is None
                            else f" and field of view (radius {cfg.fov_radius_mm:g} mm)")
                         + f" at a plausible size (scale {scale:.2f} < {MIN_SCALE})")
    z0 = lo[0] + uniform(rng, cfg.diaphragm_level) * geom.size[0]
    return Frame(scale, theta, cy, cx, z0)


# ---------------------------------------------------------------------- rendering
class Canvas:
    """The HU grid being painted, with patient-frame coordinates of its voxel centres."""

    def __init__(self, geom: VolumeGeometry, frame: Frame):
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
        occ = occupancy(sd_fn(z, w, u), self.h)
        if callable(mask):
            occ = occ * occupancy(mask(z, w, u), self.h)
        elif mask is not None:
            occ = occ * mask[sl]
        self.paint(sl, occ, value)
        return sl, occ

    def capsule(self, p0, p1, r0: float, r1: float, value, mask=None) -> None:
        r = max(r0, r1) + self.h
        lo, hi = np.minimum(p0, p1) - r, np.maximum(p0, p1) + r
        self.shape(lo, hi, lambda z, w, u: segment_sd(p0, p1, r0, r1, z, w, u), value, mask)


def render(a: Anatomy, cv: Canvas) -> np.ndarray:
    """Paint every structure but the table and the noise; returns the body occupancy (float32 grid)."""
    k, L, M = a.k, a.L, a.M
    z, w, u = cv.z, cv.w, cv.u
    full = (slice(None),) * 3
    # walls and fillers (mediastinal / visceral soft tissue mixed with patches of fat)
    body = occupancy(a.body_sd(z, w, u), cv.h)
    cv.paint(full, body, a.fat_hu)
    cv.paint(full, occupancy(a.wall_sd(z, w, u), cv.h), a.muscle_hu)
    std = a.fine_fat.std
    threshold = NormalDist(0.0, std).inv_cdf(1.0 - a.visceral_fat)
    fat_mix = np.clip(0.5 + (a.fine_fat(z, w, u) - threshold) / (0.5 * std), 0.0, 1.0)
    cv.paint(full, occupancy(a.cavity_sd(z, w, u), cv.h), a.soft_hu + (a.fat_hu - a.soft_hu) * fat_mix)
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
        cv.shape(c - r, c + r, lambda z, w, u, c=c, ax=axes: ellipsoid_sd((z - c[0], w - c[1], u - c[2]), ax), AIR_HU)
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
    for p0, p1 in itertools.pairwise(aorta):
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
    render_bones(a, cv, body)
    return body


def render_bones(a: Anatomy, cv: Canvas, body: np.ndarray) -> None:
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
        body2d = ellipsoid_sd((u, wc), (a.vb_u * g, a.vb_w * g))
        cv.paint(sl, occupancy(body2d, cv.h) * inside, a.disc_hu)
        cv.paint(sl, occupancy(body2d, cv.h) * occupancy(dz - half, cv.h) * inside, a.cortical_hu)
        cv.paint(sl, occupancy(body2d + a.cortex, cv.h) * occupancy(dz - half + a.cortex, cv.h) * inside,
                 a.cancellous_hu)
        rc = a.canal_r * g
        cw = wc + a.vb_w * g + rc - 1.0  # w relative to the canal's centre
        canal_d = np.sqrt(u ** 2 + cw ** 2)
        ring = np.abs(canal_d - rc - 3.0 * k) - 3.0 * k
        spinous = np.sqrt(u ** 2 + (cw - np.clip(cw, -rc - back, -rc)) ** 2) - 4.0 * k
        t = np.clip(np.abs(u), rc, rc + 28.0 * k * g)
        transverse = np.sqrt((np.abs(u) - t) ** 2 + (cw + 0.15 * (t - rc)) ** 2) - 4.5 * k
        arch = np.minimum(np.minimum(ring, spinous), transverse)
        cv.paint(sl, occupancy(arch, cv.h) * occupancy(dz - half + 1.0, cv.h) * inside,
                 0.5 * (a.cortical_hu + a.cancellous_hu))
        cv.paint(sl, occupancy(canal_d - rc, cv.h) * inside, a.canal_hu)
    for p0, p1, r0, r1, value in a.ribs:
        cv.capsule(p0, p1, r0, r1, value, body)
    z_lo, z_hi, su, sw = a.sternum

    def sternum_sd(z, w, u, inset=0.0):
        _, b = a.cavity_axes(z)
        sd = ellipsoid_sd((u - a.drift_u(z), w - (a.cw + a.drift_w(z) + b + 0.35 * a.muscle)), (su, sw))
        return np.maximum(sd, np.maximum(z - z_hi, z_lo - z)) + inset

    front = a.b0 * (1 + BODY_Z_VARIATION) + BODY_DRIFT_MM
    box = (np.array([z_lo, a.cw + 0.5 * a.M, -2 * su]), np.array([z_hi, front, 2 * su]))
    cv.shape(*box, sternum_sd, a.cortical_hu, body)
    cv.shape(*box, lambda z, w, u: sternum_sd(z, w, u, a.cortex), a.cancellous_hu, body)


def paint_table(cv: Canvas, rng: np.random.Generator, cfg: PatientConfig, body_bottom: float, thickness: float) -> None:
    """A flat couch slab (world frame, all z) of ``thickness`` mm just below ``body_bottom`` (world y, mm)."""
    geom = cv.geom
    top = body_bottom - uniform(rng, TABLE_GAP_MM)
    half = min(TABLE_HALF_WIDTH_MM, geom.size[2] / 2 - cfg.margin_mm)
    y, x = geom.axis_coords(1)[:, None], geom.axis_coords(2)[None, :] - geom.center[2]
    sd = np.maximum(np.maximum(y - top, top - thickness - y), np.abs(x) - half)
    cv.paint((slice(None),) * 3, occupancy(sd, float(np.mean(geom.voxel_size[1:])))[None], cfg.table_hu)


def texture(rng: np.random.Generator, cfg: PatientConfig, geom: VolumeGeometry) -> np.ndarray:
    """Gaussian-correlated noise of unit std on the grid (correlation length ``texture_mm``)."""
    sigma = [cfg.texture_mm / s for s in geom.voxel_size]
    noise = gaussian_filter(rng.standard_normal(geom.shape, dtype=np.float32), sigma, mode="wrap")
    return noise / np.float32(max(float(noise.std()), 1e-12))


# ---------------------------------------------------------------------- entry point
def generate_patient(seed: int, cfg: PatientConfig | None = None) -> tuple[np.ndarray, VolumeGeometry]:
    """A random patient in HU: (float32 [z, y, x] in [-1024, 3000], its VolumeGeometry = ``cfg.geometry()``).

    Everything is drawn from ``numpy.random.default_rng`` streams of ``seed`` alone: the same
    seed and config give a bitwise identical volume; different seeds give different patients.
    ``cfg`` defaults to ``PatientConfig()``.
    """
    cfg = PatientConfig() if cfg is None else cfg
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InputError(f"seed: must be a non-negative integer, got {seed!r}")
    geom = cfg.geometry()
    anatomy_ss, texture_ss, table_ss, extent_ss = np.random.SeedSequence(int(seed)).spawn(4)
    rng, table_rng = np.random.default_rng(anatomy_ss), np.random.default_rng(table_ss)
    half_width, aspect = uniform(rng, cfg.body_half_width_mm), uniform(rng, cfg.body_aspect)
    thickness = uniform(table_rng, TABLE_MM)  # room for a table is kept with or without one: same patient
    extent = (half_width * (1 + BODY_Z_VARIATION) + BODY_DRIFT_MM,
              half_width * aspect * (1 + BODY_Z_VARIATION) + BODY_DRIFT_MM)
    frame = place(rng, cfg, geom, extent, thickness + TABLE_GAP_MM[1])
    z_visible = ((geom.box_min[0] - frame.z0) / frame.scale, (geom.box_max[0] - frame.z0) / frame.scale)
    anat = Anatomy(rng, cfg, half_width, aspect, z_visible)
    cv = Canvas(geom, frame)
    body = render(anat, cv)
    variation = anat.smooth(cv.z, cv.w, cv.u)
    if cfg.texture_hu > 0:
        variation = variation + np.float32(cfg.texture_hu) * texture(np.random.default_rng(texture_ss), cfg, geom)
    cv.hu += body * variation
    if cfg.table:
        c, s = math.cos(frame.theta), math.sin(frame.theta)
        paint_table(cv, table_rng, cfg, frame.cy - math.hypot(extent[0] * s, extent[1] * c) * frame.scale, thickness)
    np.clip(cv.hu, HU_MIN, HU_MAX, out=cv.hu)
    if cfg.scan_length != (1.0, 1.0):
        extent_rng, nz = np.random.default_rng(extent_ss), geom.shape[0]
        keep = min(nz, max(1, round(uniform(extent_rng, cfg.scan_length) * nz)))
        start = int(extent_rng.integers(0, nz - keep + 1))
        cv.hu[:start] = AIR_HU
        cv.hu[start + keep:] = AIR_HU
    return cv.hu, geom
