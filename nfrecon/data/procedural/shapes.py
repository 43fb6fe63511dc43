"""Shape helpers of procedural patients: signed distances (mm, negative inside), occupancies, smooth fields.

Coordinates are in the patient frame (z, w, u) mm (see :mod:`nfrecon.data.procedural`);
functions take them as broadcastable arrays, in that order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from nfrecon.data.procedural.config import IntRange, Range


def occupancy(sd, h: float) -> np.ndarray:
    """Partial-volume occupancy (float32 in [0, 1]) of a signed distance ``sd`` (mm) at voxel size ``h``."""
    return np.clip(0.5 - np.asarray(sd, dtype=np.float32) / np.float32(h), 0.0, 1.0)


def ellipsoid_sd(coords, axes):
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


def local_coords(rot: np.ndarray, center, z, w, u):
    """Coordinates in a rotated frame: rows of ``rot`` are the frame's axes in (z, w, u)."""
    d = (z - float(center[0]), w - float(center[1]), u - float(center[2]))
    return [sum(float(rot[i, j]) * d[j] for j in range(3)) for i in range(3)]


def rotation(axis, roll: float) -> np.ndarray:
    """A rotation whose first row is the unit ``axis`` (z, w, u), rolled by ``roll`` rad about it."""
    a = np.asarray(axis, dtype=np.float64)
    a = a / np.linalg.norm(a)
    helper = np.array([0.0, 1.0, 0.0]) if abs(a[1]) < 0.9 else np.array([0.0, 0.0, 1.0])
    b = np.cross(a, helper)
    b /= np.linalg.norm(b)
    c = np.cross(a, b)
    b, c = math.cos(roll) * b + math.sin(roll) * c, -math.sin(roll) * b + math.cos(roll) * c
    return np.stack([a, b, c])


def segment_sd(p0, p1, r0: float, r1: float, z, w, u):
    """Signed distance to a capsule (a tube from p0 to p1, radius r0 -> r1, round ends)."""
    d = [float(b - a) for a, b in zip(p0, p1)]
    dz, dw, du = (z - float(p0[0]), w - float(p0[1]), u - float(p0[2]))
    length2 = d[0] ** 2 + d[1] ** 2 + d[2] ** 2
    t = np.clip((dz * d[0] + dw * d[1] + du * d[2]) / length2, 0.0, 1.0) if length2 > 0 else 0.0 * dz
    dist = np.sqrt((dz - t * d[0]) ** 2 + (dw - t * d[1]) ** 2 + (du - t * d[2]) ** 2)
    return dist - (r0 + t * (r1 - r0))


@dataclass(frozen=True)
class Waves:
    """A smooth random field: a sum of cosines ``sum a cos(k . p + phase)``, |field| <= sum |a|."""

    amps: np.ndarray  # (n,)
    k: np.ndarray  # (n, d) angular wave numbers, rad/mm
    phase: np.ndarray  # (n,)

    @classmethod
    def draw(cls, rng: np.random.Generator, n: int, dims: int, wavelength: Range, total: float = 1.0) -> Waves:
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


def uniform(rng: np.random.Generator, r: Range) -> float:
    return float(rng.uniform(r[0], r[1]))


def draw_count(rng: np.random.Generator, r: IntRange) -> int:
    return int(rng.integers(r[0], r[1] + 1))
