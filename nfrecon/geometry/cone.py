"""Cone-beam geometry in the ASTRA/tomosipo ``cone_vec`` form.

Per view, four vectors in world (z, y, x) millimetres:

- ``src``: the X-ray source position;
- ``det``: the centre of the detector;
- ``u``: from the centre of pixel (0, 0) to the centre of pixel (0, 1) (one column step);
- ``v``: from the centre of pixel (0, 0) to the centre of pixel (1, 0) (one row step).

A projection stack is indexed ``[view, v, u]``; pixel ``(r, c)`` of view ``i`` has its
centre at ``det[i] + (c - (nu - 1) / 2) * u[i] + (r - (nv - 1) / 2) * v[i]``.

Circular scans are built by :meth:`ConeGeometry.circular`, which follows ASTRA's
``cone`` convention: at angle ``a`` the source is at (z, y, x) = (0, -cos a, sin a) * sod,
the detector centre at (0, cos a, -sin a) * (sdd - sod), ``u = (0, sin a, cos a) * du``
and ``v = (dv, 0, 0)``: the rotation axis is z, through the world origin.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nfrecon.errors import InputError


def _vectors(value, name: str, n: int | None = None) -> np.ndarray:
    arr = np.array(value, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[None]
    if arr.ndim != 2 or arr.shape[1] != 3 or (n is not None and arr.shape[0] != n):
        want = f"({n}, 3)" if n is not None else "(views, 3)"
        raise InputError(f"cone geometry: {name} must have shape {want}, got {np.shape(value)}")
    if not np.all(np.isfinite(arr)):
        raise InputError(f"cone geometry: {name} contains NaN or Inf")
    arr.setflags(write=False)
    return arr


@dataclass(frozen=True, eq=False)
class ConeGeometry:
    """Per-view cone-beam geometry (see module docstring for the conventions).

    det_shape: (nv, nu) detector rows and columns; src, det, u, v: (views, 3) arrays,
    (z, y, x) mm. ``u`` and ``v`` have the length of one pixel (mm).
    """

    det_shape: tuple[int, int]
    src: np.ndarray
    det: np.ndarray
    u: np.ndarray
    v: np.ndarray

    def __post_init__(self):
        shape = tuple(int(s) for s in np.ravel(self.det_shape))
        if len(shape) != 2 or min(shape) < 1:
            raise InputError(f"cone geometry: det_shape must be (rows, cols) >= 1, got {self.det_shape}")
        object.__setattr__(self, "det_shape", shape)
        src = _vectors(self.src, "src")
        n = src.shape[0]
        object.__setattr__(self, "src", src)
        for name in ("det", "u", "v"):
            object.__setattr__(self, name, _vectors(getattr(self, name), name, n))
        normal = np.cross(self.u, self.v)
        area = np.linalg.norm(normal, axis=1)
        if np.any(area <= 1e-12 * np.linalg.norm(self.u, axis=1) * np.linalg.norm(self.v, axis=1)) or np.any(area == 0):
            raise InputError("cone geometry: u and v are parallel or zero for some view")
        height = np.einsum("ij,ij->i", self.det - self.src, normal / area[:, None])
        if np.any(np.abs(height) < 1e-9):
            raise InputError("cone geometry: the source lies in the detector plane for some view")

    # ------------------------------------------------------------------ constructors
    @classmethod
    def circular(
        cls,
        *,
        sod: float,
        sdd: float,
        det_shape: tuple[int, int],
        pixel_size: float | tuple[float, float],
        angles: np.ndarray | None = None,
        n_views: int | None = None,
        arc_deg: float = 360.0,
        start_deg: float = 0.0,
        endpoint: bool = False,
        det_offset: tuple[float, float] = (0.0, 0.0),
    ) -> ConeGeometry:
        """Circular trajectory about the z axis (ASTRA ``cone`` convention).

        sod: source-to-rotation-axis distance (mm); sdd: source-to-detector distance (mm);
        det_shape: (rows, cols); pixel_size: (dv, du) mm or a scalar; angles: radians, or
        ``n_views`` equally spaced over ``arc_deg`` starting at ``start_deg`` (the last angle
        is ``start + arc`` when ``endpoint``); det_offset: (v, u) shift of the detector
        centre in mm along its rows/columns (a scalar-free way to model a shifted panel).
        Volume offsets are the volume geometry's centre, not part of the trajectory.
        """
        if not (np.isfinite(sod) and np.isfinite(sdd)) or sod <= 0 or sdd <= sod:
            raise InputError(f"circular geometry: need 0 < sod < sdd, got sod={sod}, sdd={sdd}")
        if angles is None:
            if n_views is None or int(n_views) < 1:
                raise InputError("circular geometry: give angles or n_views >= 1")
            arc = np.deg2rad(arc_deg)
            angles = np.deg2rad(start_deg) + np.linspace(0.0, arc, int(n_views), endpoint=bool(endpoint))
        angles = np.atleast_1d(np.asarray(angles, dtype=np.float64))
        dv, du = np.broadcast_to(np.asarray(pixel_size, dtype=np.float64), (2,))
        if dv <= 0 or du <= 0:
            raise InputError(f"circular geometry: pixel_size must be positive, got {(dv, du)}")
        c, s, z = np.cos(angles), np.sin(angles), np.zeros_like(angles)
        src = np.stack([z, -c, s], 1) * sod
        u = np.stack([z, s, c], 1) * du
        v = np.stack([z + dv, z, z], 1)
        det = np.stack([z, c, -s], 1) * (sdd - sod)
        det = det + det_offset[0] * v / dv + det_offset[1] * u / du
        return cls(det_shape, src, det, u, v)

    @classmethod
    def from_astra_vectors(cls, vectors, det_shape) -> ConeGeometry:
        """From ASTRA ``cone_vec`` rows (srcX,srcY,srcZ, dX,dY,dZ, uX,uY,uZ, vX,vY,vZ).

        ASTRA orders vectors (x, y, z); ``det_shape`` is (DetectorRowCount, DetectorColCount).
        """
        vec = np.asarray(vectors, dtype=np.float64)
        if vec.ndim != 2 or vec.shape[1] != 12:
            raise InputError(f"ASTRA cone_vec vectors must have shape (views, 12), got {vec.shape}")
        zyx = vec.reshape(-1, 4, 3)[:, :, ::-1]
        return cls(det_shape, zyx[:, 0], zyx[:, 1], zyx[:, 2], zyx[:, 3])

    def to_astra_vectors(self) -> np.ndarray:
        """ASTRA ``cone_vec`` rows, (views, 12), each vector in (x, y, z) order."""
        stacked = np.stack([self.src, self.det, self.u, self.v], axis=1)[:, :, ::-1]
        return np.ascontiguousarray(stacked.reshape(-1, 12))

    # ------------------------------------------------------------------ views
    @property
    def n_views(self) -> int:
        return self.src.shape[0]

    @property
    def n_rays(self) -> int:
        return self.n_views * self.det_shape[0] * self.det_shape[1]

    @property
    def proj_shape(self) -> tuple[int, int, int]:
        """Shape of a projection stack: (views, rows, cols)."""
        return (self.n_views, *self.det_shape)

    def __len__(self) -> int:
        return self.n_views

    def __getitem__(self, views) -> ConeGeometry:
        """A subset of views, e.g. ``geom[::8]`` or ``geom[[0, 5, 9]]``."""
        idx = np.arange(self.n_views)[views]
        idx = np.atleast_1d(idx)
        return ConeGeometry(self.det_shape, self.src[idx], self.det[idx], self.u[idx], self.v[idx])

    # ------------------------------------------------------------------ derived
    @property
    def normal(self) -> np.ndarray:
        """Unit detector normal per view, pointing from the source towards the detector."""
        n = np.cross(self.u, self.v)
        n /= np.linalg.norm(n, axis=1, keepdims=True)
        sign = np.sign(np.einsum("ij,ij->i", self.det - self.src, n))
        return n * sign[:, None]

    @property
    def sdd(self) -> np.ndarray:
        """Perpendicular source-to-detector-plane distance per view (mm)."""
        return np.einsum("ij,ij->i", self.det - self.src, self.normal)

    def sod_to(self, point=(0.0, 0.0, 0.0)) -> np.ndarray:
        """Distance from the source to ``point`` along the detector normal, per view (mm)."""
        return np.einsum("ij,ij->i", np.asarray(point, dtype=np.float64) - self.src, self.normal)

    @property
    def pixel_size(self) -> tuple[float, float]:
        """Mean (dv, du) pixel size in mm."""
        return (float(np.linalg.norm(self.v, axis=1).mean()), float(np.linalg.norm(self.u, axis=1).mean()))

    def pixel_centers(self, views=None) -> np.ndarray:
        """World positions of pixel centres: (views, rows, cols, 3), (z, y, x) mm."""
        g = self if views is None else self[views]
        nv, nu = self.det_shape
        cu = np.arange(nu) - (nu - 1) / 2
        cv = np.arange(nv) - (nv - 1) / 2
        return (
            g.det[:, None, None, :]
            + cu[None, None, :, None] * g.u[:, None, None, :]
            + cv[None, :, None, None] * g.v[:, None, None, :]
        )

    def circular_angles(self) -> np.ndarray:
        """Gantry angle (radians, ASTRA convention, unwrapped) of each view's source about z."""
        return np.unwrap(np.arctan2(self.src[:, 2], -self.src[:, 1]))

    def arc_deg(self) -> float:
        """Angular range covered by the sources about the z axis, in degrees."""
        a = self.circular_angles()
        return float(np.rad2deg(a.max() - a.min())) if len(a) > 1 else 0.0

    def fan_angle_deg(self) -> float:
        """Full fan angle (degrees) in the central row, from the mean detector width and sdd."""
        width = self.det_shape[1] * self.pixel_size[1]
        return float(np.rad2deg(2 * np.arctan(width / 2 / self.sdd.mean())))

    def fov_radius(self) -> float:
        """Radius (mm) about the z axis seen by every view in the central detector row."""
        radius = np.inf
        for side in (-0.5, 0.5):
            edge = self.det + side * self.det_shape[1] * self.u
            s, e = self.src[:, 1:], edge[:, 1:] - self.src[:, 1:]
            dist = np.abs(s[:, 0] * e[:, 1] - s[:, 1] * e[:, 0]) / np.linalg.norm(e, axis=1)
            radius = min(radius, float(dist.min()))
        return radius

    def is_circular(self, rtol: float = 1e-6) -> bool:
        """True if sources lie on one circle about the z axis at z = const (FDK's assumption)."""
        r = np.hypot(self.src[:, 1], self.src[:, 2])
        return bool(np.ptp(r) <= rtol * r.mean() and np.ptp(self.src[:, 0]) <= rtol * r.mean())

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict:
        return {
            "det_shape": list(self.det_shape),
            "src": self.src.tolist(),
            "det": self.det.tolist(),
            "u": self.u.tolist(),
            "v": self.v.tolist(),
        }

    @classmethod
    def from_dict(cls, d: dict) -> ConeGeometry:
        return cls(tuple(d["det_shape"]), d["src"], d["det"], d["u"], d["v"])

    def allclose(self, other: ConeGeometry, atol: float = 1e-6) -> bool:
        return self.det_shape == other.det_shape and self.n_views == other.n_views and all(
            np.allclose(getattr(self, k), getattr(other, k), atol=atol) for k in ("src", "det", "u", "v")
        )

    def describe(self) -> str:
        nv, nu = self.det_shape
        dv, du = self.pixel_size
        sod = np.linalg.norm(self.src[:, 1:], axis=1).mean()
        text = (
            f"{self.n_views} views, detector {nv}x{nu} (rows x cols) of {dv:g}x{du:g} mm, "
            f"source-axis {sod:g} mm, source-detector {self.sdd.mean():g} mm"
        )
        if self.is_circular():
            a = np.rad2deg(self.circular_angles())
            text += (f", circular arc {a.max() - a.min():g} deg from {a[0]:g} deg, "
                     f"fan angle {self.fan_angle_deg():.3g} deg")
        else:
            text += ", general (non-circular) trajectory"
        return text
