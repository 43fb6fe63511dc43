"""Ellipsoid phantoms with closed-form line integrals; 3D Shepp-Logan is the default.

An ellipsoid is given in world (z, y, x) mm: centre, semi-axes (along its own z, y, x
before rotation), a rotation angle about the z axis (degrees, counter-clockwise from +x
towards +y) and an additive attenuation ``mu`` (1/mm). Overlapping ellipsoids add up.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from nfrecon.geometry.cone import ConeGeometry
from nfrecon.geometry.volume import VolumeGeometry

# 3D modified Shepp-Logan (Kak & Slaney geometry, Toft's higher-contrast intensities, as in
# Schabel's phantom3d), in units of the phantom radius: value, semi-axes (a_x, b_y, c_z),
# centre (x, y, z), rotation about z in degrees.
_SHEPP_LOGAN = (
    (1.0, (0.6900, 0.920, 0.810), (0.0, 0.0, 0.0), 0.0),
    (-0.8, (0.6624, 0.874, 0.780), (0.0, -0.0184, 0.0), 0.0),
    (-0.2, (0.1100, 0.310, 0.220), (0.22, 0.0, 0.0), -18.0),
    (-0.2, (0.1600, 0.410, 0.280), (-0.22, 0.0, 0.0), 18.0),
    (0.1, (0.2100, 0.250, 0.410), (0.0, 0.35, -0.15), 0.0),
    (0.1, (0.0460, 0.046, 0.050), (0.0, 0.1, 0.25), 0.0),
    (0.1, (0.0460, 0.046, 0.050), (0.0, -0.1, 0.25), 0.0),
    (0.1, (0.0460, 0.023, 0.050), (-0.08, -0.605, 0.0), 0.0),
    (0.1, (0.0230, 0.023, 0.020), (0.0, -0.606, 0.0), 0.0),
    (0.1, (0.0230, 0.046, 0.020), (0.06, -0.605, 0.0), 0.0),
)


@dataclass(frozen=True)
class Ellipsoid:
    """center, axes: (z, y, x) mm; angle_deg: rotation about z; mu: 1/mm (additive)."""

    center: tuple[float, float, float]
    axes: tuple[float, float, float]
    angle_deg: float
    mu: float

    def _frame(self) -> tuple[np.ndarray, np.ndarray]:
        """Rotation (columns: the ellipsoid's z, y, x axes in world zyx) and semi-axes."""
        a = np.deg2rad(self.angle_deg)
        c, s = np.cos(a), np.sin(a)
        ez, ey, ex = (1.0, 0.0, 0.0), (0.0, c, -s), (0.0, s, c)
        return np.array([ez, ey, ex]).T, np.asarray(self.axes, dtype=np.float64)


@dataclass(frozen=True)
class EllipsoidPhantom:
    """A sum of ellipsoids with exact line integrals and supersampled voxelisation."""

    ellipsoids: tuple[Ellipsoid, ...]

    @classmethod
    def shepp_logan(cls, radius_mm: float = 100.0, mu_water: float = 0.0206) -> EllipsoidPhantom:
        """Modified 3D Shepp-Logan scaled to ``radius_mm``; its brain (0.2) maps to ``mu_water``.

        The head axis is z (the rotation axis of a circular scan).
        """
        scale = mu_water / 0.2
        items = []
        for value, (ax, by, cz), (x0, y0, z0), phi in _SHEPP_LOGAN:
            items.append(
                Ellipsoid(
                    center=(z0 * radius_mm, y0 * radius_mm, x0 * radius_mm),
                    axes=(cz * radius_mm, by * radius_mm, ax * radius_mm),
                    angle_deg=phi,
                    mu=value * scale,
                )
            )
        return cls(tuple(items))

    def line_integrals(self, origins: np.ndarray, dirs: np.ndarray) -> np.ndarray:
        """Exact integral of mu along the full lines ``origins + t * dirs`` (unit dirs)."""
        origins = np.asarray(origins, dtype=np.float64)
        dirs = np.asarray(dirs, dtype=np.float64)
        out = np.zeros(origins.shape[:-1])
        for e in self.ellipsoids:
            rot, axes = e._frame()
            p = ((origins - np.asarray(e.center)) @ rot) / axes
            d = (dirs @ rot) / axes
            a = np.einsum("...i,...i", d, d)
            b = np.einsum("...i,...i", p, d)
            c = np.einsum("...i,...i", p, p) - 1.0
            disc = np.clip(b * b - a * c, 0.0, None)
            out += e.mu * 2.0 * np.sqrt(disc) / a
        return out

    def project(self, geom: ConeGeometry) -> np.ndarray:
        """Analytic line integrals for every detector pixel: (views, rows, cols)."""
        pix = geom.pixel_centers()
        d = pix - geom.src[:, None, None, :]
        d /= np.linalg.norm(d, axis=-1, keepdims=True)
        return self.line_integrals(np.broadcast_to(geom.src[:, None, None, :], d.shape), d)

    def voxelize(self, vol_geom: VolumeGeometry, supersample: int = 2) -> np.ndarray:
        """Mean mu over each voxel, estimated on a ``supersample``^3 sub-grid: (nz, ny, nx) float32."""
        s = int(supersample)
        sub = (np.arange(s) + 0.5) / s - 0.5
        size = np.asarray(vol_geom.voxel_size)
        out = torch.zeros(vol_geom.shape, dtype=torch.float64)
        for e in self.ellipsoids:
            rot, axes = e._frame()
            reach = np.sqrt(((rot * axes) ** 2).sum(1))  # half extent of the ellipsoid per world axis
            lo = np.floor(vol_geom.world_to_index(np.asarray(e.center) - reach) - 1).astype(int)
            hi = np.ceil(vol_geom.world_to_index(np.asarray(e.center) + reach) + 1).astype(int)
            lo, hi = np.maximum(lo, 0), np.minimum(hi, np.asarray(vol_geom.shape) - 1)
            if np.any(hi < lo):
                continue
            coords = [torch.as_tensor(vol_geom.axis_coords(a)[lo[a] : hi[a] + 1] - e.center[a]) for a in range(3)]
            inv = torch.as_tensor(rot / axes)  # (world zyx) -> unit-sphere coords
            hits = torch.zeros([len(c) for c in coords], dtype=torch.float64)
            for oz in sub * size[0]:
                for oy in sub * size[1]:
                    for ox in sub * size[2]:
                        z, y, x = torch.meshgrid(coords[0] + oz, coords[1] + oy, coords[2] + ox, indexing="ij")
                        q = torch.stack([z, y, x], -1) @ inv
                        hits += (q * q).sum(-1) <= 1.0
            out[lo[0] : hi[0] + 1, lo[1] : hi[1] + 1, lo[2] : hi[2] + 1] += e.mu * hits / s**3
        return out.numpy().astype(np.float32)
