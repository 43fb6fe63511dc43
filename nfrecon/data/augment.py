"""Augmentation of real CT volumes (HU, [z, y, x]) into new, plausible patients.

:func:`augment_ct` draws an :class:`Augmentation` from a seed and applies it: a z crop
(a contiguous sub-range of slices, as a scan of another length), a rigid motion (rotation
about z, small tilts about y and x, a translation), a smooth elastic deformation and an
intensity jitter, and resamples the result onto the requested grid (-1000 HU outside the
source). Units: mm, degrees; world coordinates (z, y, x) as in DESIGN.md §2.

Mapping. A source point ``s`` moves to ``R (s - c) + c + t`` (``c``: centre of the source
box, ``R = Rz Ry Rx``; a positive angle about z turns +x towards +y). The output at ``p``
is the moved volume at ``p + d(p)``, with ``d`` the elastic displacement field: a cubic
B-spline on a coarse lattice of control vectors of norm <= ``elastic_mm``; B-spline
weights are non-negative and sum to one, so ``|d| <= elastic_mm`` everywhere.

Sampling. The source is first resampled (:func:`nfrecon.data.volumes.resample`, with its
anti-aliasing) onto the output grid's own lattice extended over the needed region, then
read with trilinear ``grid_sample`` at the mapped points: with an identity augmentation
the points fall on that lattice and the result is exactly ``resample(hu, geom, out_geom)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from nfrecon.data.resample import resample
from nfrecon.errors import InputError
from nfrecon.geometry.volume import VolumeGeometry

Range = tuple[float, float]
AIR_HU = -1000.0
_CHUNK_VOXELS = 1 << 22  # output voxels mapped per grid_sample call (bounds the memory)


@dataclass(frozen=True)
class AugmentConfig:
    """Ranges (low, high) of the random augmentation, drawn uniformly.

    rotate_deg: rotation about z; tilt_deg: rotations about y and about x (each);
    translate_mm: shift along each of z, y, x; crop_fraction: fraction of the slices kept
    (a random contiguous range); elastic_mm: largest elastic displacement (mm, 0: none);
    elastic_spacing_mm: spacing of its control lattice; hu_scale: factor on (HU + 1000)
    (air stays -1000); hu_offset: HU added to tissue (weight 0 in air rising linearly to 1
    at water and above); hu_floor: input HU below it are raised to it first (e.g. the
    -2048 padding outside a scanner's field of view).
    """

    rotate_deg: Range = (-10.0, 10.0)
    tilt_deg: Range = (-3.0, 3.0)
    translate_mm: Range = (-25.0, 25.0)
    crop_fraction: Range = (0.6, 1.0)
    elastic_mm: float = 4.0
    elastic_spacing_mm: float = 60.0
    hu_scale: Range = (0.97, 1.03)
    hu_offset: Range = (-10.0, 10.0)
    hu_floor: float = AIR_HU

    def __post_init__(self):
        for name in ("rotate_deg", "tilt_deg", "translate_mm", "crop_fraction", "hu_scale", "hu_offset"):
            value = getattr(self, name)
            if len(value) != 2 or not all(np.isfinite(v) for v in value) or value[0] > value[1]:
                raise InputError(f"augment config: {name} must be a range (low, high) with low <= high, got {value!r}")
        if not (0 < self.crop_fraction[0] and self.crop_fraction[1] <= 1):
            raise InputError(f"augment config: crop_fraction must lie in (0, 1], got {self.crop_fraction!r}")
        if not (np.isfinite(self.elastic_mm) and self.elastic_mm >= 0):
            raise InputError(f"augment config: elastic_mm must be >= 0, got {self.elastic_mm!r}")
        if not (np.isfinite(self.elastic_spacing_mm) and self.elastic_spacing_mm > 0):
            raise InputError(f"augment config: elastic_spacing_mm must be > 0, got {self.elastic_spacing_mm!r}")
        if self.hu_scale[0] <= 0:
            raise InputError(f"augment config: hu_scale must be positive, got {self.hu_scale!r}")
        if not np.isfinite(self.hu_floor):
            raise InputError(f"augment config: hu_floor must be finite, got {self.hu_floor!r}")

    @classmethod
    def identity(cls) -> AugmentConfig:
        """No change: the augmented volume is the plain resampling of the input."""
        return cls(rotate_deg=(0.0, 0.0), tilt_deg=(0.0, 0.0), translate_mm=(0.0, 0.0), crop_fraction=(1.0, 1.0),
                   elastic_mm=0.0, hu_scale=(1.0, 1.0), hu_offset=(0.0, 0.0))


def rotation_zyx(about_z: float, about_y: float = 0.0, about_x: float = 0.0) -> np.ndarray:
    """``Rz @ Ry @ Rx`` (radians) acting on (z, y, x) vectors; about z, +x turns towards +y."""
    cz, sz = math.cos(about_z), math.sin(about_z)
    cy, sy = math.cos(about_y), math.sin(about_y)
    cx, sx = math.cos(about_x), math.sin(about_x)
    rz = np.array([[1, 0, 0], [0, cz, sz], [0, -sz, cz]])  # y' = sin x + cos y, x' = cos x - sin y
    ry = np.array([[cy, 0, -sy], [0, 1, 0], [sy, 0, cy]])  # z' = cos z - sin x, x' = sin z + cos x
    rx = np.array([[cx, sx, 0], [-sx, cx, 0], [0, 0, 1]])  # z' = sin y + cos z, y' = cos y - sin z
    return rz @ ry @ rx


def _bspline_weights(coords: np.ndarray, knots: np.ndarray, spacing: float) -> np.ndarray:
    """Cubic B-spline weights (n_coords, n_knots); rows sum to 1 where 4 knots surround a coordinate."""
    t = np.abs(coords[:, None] - knots[None, :]) / spacing
    inner = (4 - 6 * t ** 2 + 3 * t ** 3) / 6
    outer = np.clip(2 - t, 0, None) ** 3 / 6
    return np.where(t < 1, inner, outer)


def _lattice_axis(out: VolumeGeometry, axis: int, lo: float, hi: float):
    """Indices (k0, k1) of the output lattice (extended beyond its grid) covering [lo, hi] plus 2 voxels."""
    origin, step = out.axis_coords(axis)[0], out.voxel_size[axis]
    return math.floor((lo - origin) / step) - 2, math.ceil((hi - origin) / step) + 2


@dataclass(frozen=True, eq=False)
class Augmentation:
    """One drawn augmentation of a source volume onto an output grid (see the module docstring).

    crop: slice range (start, stop) of the source kept; rotation (3x3, (z, y, x)),
    translation (z, y, x) mm and centre (z, y, x) mm of the rigid motion; control: elastic
    control vectors (3, cz, cy, cx) mm on a lattice of ``spacing`` mm starting at
    ``lattice_min`` (z, y, x); hu_scale, hu_offset: the intensity jitter.
    """

    crop: tuple[int, int]
    rotation: np.ndarray
    translation: np.ndarray
    center: np.ndarray
    control: np.ndarray
    spacing: float
    lattice_min: np.ndarray
    hu_scale: float
    hu_offset: float
    hu_floor: float

    @classmethod
    def draw(cls, seed: int, cfg: AugmentConfig, src_geom: VolumeGeometry, out_geom: VolumeGeometry) -> Augmentation:
        """Draw every parameter from ``numpy.random.default_rng(seed)`` (same seed, same draws)."""
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise InputError(f"seed: must be a non-negative integer, got {seed!r}")
        rng = np.random.default_rng(int(seed))
        angles = [math.radians(rng.uniform(*r)) for r in (cfg.rotate_deg, cfg.tilt_deg, cfg.tilt_deg)]
        translation = rng.uniform(*cfg.translate_mm, size=3)
        nz = src_geom.shape[0]
        keep = min(nz, max(1, round(rng.uniform(*cfg.crop_fraction) * nz)))
        start = int(rng.integers(0, nz - keep + 1))
        hu_scale, hu_offset = rng.uniform(*cfg.hu_scale), rng.uniform(*cfg.hu_offset)
        # elastic control lattice over the output box, 2 spacings beyond it (full B-spline support)
        h = cfg.elastic_spacing_mm
        lattice_min = out_geom.box_min - 2 * h
        n = np.ceil((out_geom.box_max + 2 * h - lattice_min) / h).astype(int) + 1
        control = 0.5 * cfg.elastic_mm * rng.standard_normal((3, *n))
        norm = np.linalg.norm(control, axis=0)
        control *= np.minimum(1.0, cfg.elastic_mm / np.maximum(norm, 1e-12))
        return cls((start, start + keep), rotation_zyx(*angles), translation, np.asarray(src_geom.center),
                   control, h, lattice_min, float(hu_scale), float(hu_offset), cfg.hu_floor)

    def displacement(self, out_geom: VolumeGeometry, z_range: tuple[int, int] | None = None,
                     device=None) -> torch.Tensor:
        """Elastic displacement (3, nz, ny, nx) mm ((z, y, x) components) at the output voxel centres.

        ``z_range``: (start, stop) of the output slices to evaluate (default all).
        """
        k0, k1 = z_range or (0, out_geom.shape[0])
        out = torch.as_tensor(self.control, dtype=torch.float32, device=device)
        for axis in range(3):
            coords = out_geom.axis_coords(axis)
            if axis == 0:
                coords = coords[k0:k1]
            knots = self.lattice_min[axis] + self.spacing * np.arange(self.control.shape[axis + 1])
            w = torch.as_tensor(_bspline_weights(coords, knots, self.spacing), dtype=torch.float32, device=device)
            out = torch.tensordot(w, out, dims=([1], [axis + 1])).movedim(0, axis + 1)
        return out

    def apply(self, hu, geom: VolumeGeometry, out_geom: VolumeGeometry):
        """The augmented volume on ``out_geom`` (numpy in -> float32 numpy out; a tensor stays on its device)."""
        is_tensor = isinstance(hu, torch.Tensor)
        vol = hu if is_tensor else torch.from_numpy(np.ascontiguousarray(hu, dtype=np.float32))
        if tuple(vol.shape) != geom.shape:
            raise InputError(f"augment: volume has shape {tuple(vol.shape)}, its geometry says {geom.shape}")
        vol = vol.float().clamp(min=self.hu_floor)
        start, stop = self.crop
        vol = vol[start:stop]
        dz = geom.voxel_size[0]
        crop_geom = VolumeGeometry((stop - start, *geom.shape[1:]), geom.voxel_size,
                                   (geom.center[0] + (start + stop - 1 - (geom.shape[0] - 1)) / 2 * dz,
                                    *geom.center[1:]))
        out = torch.full(out_geom.shape, AIR_HU, dtype=torch.float32, device=vol.device)
        inter = self._intermediate(vol, crop_geom, out_geom)
        if inter is not None:
            lattice, origin = inter
            # normalised grid_sample coordinate of R^T (p + d - c - t) + c on the lattice: (p + d) @ m + b
            scale = 2.0 / (np.asarray(out_geom.voxel_size) * (np.asarray(lattice.shape) - 1))
            m = self.rotation * scale[None, :]
            b = ((self.center - (self.center + self.translation) @ self.rotation - origin) * scale - 1.0)
            m, b = m[:, ::-1], b[::-1]  # grid_sample wants (x, y, z)
            as32 = lambda a: torch.as_tensor(np.ascontiguousarray(a), dtype=torch.float32, device=vol.device)
            terms = [as32(np.outer(out_geom.axis_coords(a), m[a])) for a in range(3)]
            m32, b32 = as32(m), as32(b)
            air = (lattice - AIR_HU)[None, None]  # zero padding outside = air
            ny, nx = out_geom.shape[1:]
            chunk = max(1, _CHUNK_VOXELS // (ny * nx))
            for k0 in range(0, out_geom.shape[0], chunk):
                k1 = min(k0 + chunk, out_geom.shape[0])
                grid = terms[0][k0:k1, None, None] + terms[1][None, :, None] + terms[2][None, None, :] + b32
                if self.control.any():
                    grid = grid + self.displacement(out_geom, (k0, k1), vol.device).movedim(0, -1) @ m32
                out[k0:k1] = F.grid_sample(air, grid[None], mode="bilinear", padding_mode="zeros",
                                           align_corners=True)[0, 0] + AIR_HU
        tissue = ((out - AIR_HU) / 1000.0).clamp(0.0, 1.0)
        out = AIR_HU + self.hu_scale * (out - AIR_HU) + self.hu_offset * tissue
        return out if is_tensor else out.cpu().numpy()

    def _intermediate(self, vol: torch.Tensor, src_geom: VolumeGeometry, out_geom: VolumeGeometry):
        """(the source on the output lattice over the region the mapping reads, world (z, y, x) of its voxel 0).

        None when the mapped output box misses the source entirely.
        """
        corners = np.array(np.meshgrid(*zip(out_geom.box_min, out_geom.box_max), indexing="ij")).reshape(3, -1).T
        reach = float(np.linalg.norm(self.control, axis=0).max()) if self.control.size else 0.0
        src = (corners - self.center - self.translation) @ self.rotation + self.center
        lo = np.maximum(src.min(0) - reach, src_geom.box_min)
        hi = np.minimum(src.max(0) + reach, src_geom.box_max)
        if np.any(hi <= lo):
            return None
        ranges = [_lattice_axis(out_geom, a, lo[a], hi[a]) for a in range(3)]
        shape = tuple(k1 - k0 + 1 for k0, k1 in ranges)
        origin = np.array([out_geom.axis_coords(a)[0] + ranges[a][0] * out_geom.voxel_size[a] for a in range(3)])
        center = origin + (np.asarray(shape) - 1) / 2 * np.asarray(out_geom.voxel_size)
        lattice = resample(vol, src_geom, VolumeGeometry(shape, out_geom.voxel_size, tuple(center)), fill=AIR_HU)
        return lattice, origin


def augment_ct(hu, geom: VolumeGeometry, seed: int, cfg: AugmentConfig = AugmentConfig(),
               out_geom: VolumeGeometry | None = None):
    """A random augmentation of the CT ``hu`` [z, y, x] (HU) on ``geom``, resampled onto ``out_geom``.

    ``out_geom`` defaults to ``geom``. Deterministic per ``seed``; -1000 HU outside the
    (cropped) source. numpy in -> float32 numpy out; a torch tensor stays on its device.
    """
    out_geom = geom if out_geom is None else out_geom
    return Augmentation.draw(seed, cfg, geom, out_geom).apply(hu, geom, out_geom)
