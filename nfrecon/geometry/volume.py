"""Volume geometry: a box of voxels in world millimetres.

Arrays are indexed ``[z, y, x]``; every triple in this module is in (z, y, x) order.
Voxel ``(k, j, i)`` has its centre at ``center + (index - (shape - 1) / 2) * voxel_size``,
so the voxel index grows with the world coordinate along each axis. The box spans
``center -+ shape * voxel_size / 2`` (the outer faces of the border voxels).

That formula is written once (:func:`_centre`) and serves numpy (``axis_coords``,
``index_to_world``, ``voxel_centers``) and torch (``voxel_centers_at``, flat indices, float64).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from nfrecon.errors import InputError

Triple = tuple[float, float, float]


def _triple(value, name: str, kind=float) -> tuple:
    try:
        arr = np.broadcast_to(np.asarray(value, dtype=np.float64), (3,))
    except (TypeError, ValueError) as exc:
        raise InputError(f"volume geometry: {name} must be 3 numbers (z, y, x), got {value!r}") from exc
    if not np.all(np.isfinite(arr)):
        raise InputError(f"volume geometry: {name} must be finite, got {tuple(arr)}")
    return tuple(kind(a) for a in arr)


def _centre(index, shape, voxel_size, center):
    """World position (mm) of voxel ``index`` along one or all three axes: the one voxel-centre
    formula, for numpy arrays and torch tensors alike (float64 results)."""
    return center + (index - (shape - 1) / 2) * voxel_size


@dataclass(frozen=True)
class VolumeGeometry:
    """A regular voxel grid.

    shape: (nz, ny, nx) voxels; voxel_size: (dz, dy, dx) mm (a scalar means isotropic);
    center: world position (z, y, x) mm of the box centre.
    """

    shape: tuple[int, int, int]
    voxel_size: Triple = (1.0, 1.0, 1.0)
    center: Triple = (0.0, 0.0, 0.0)

    def __post_init__(self):
        shape = _triple(self.shape, "shape", int)
        if min(shape) < 1 or not np.allclose(shape, np.broadcast_to(self.shape, (3,))):
            raise InputError(f"volume geometry: shape must be 3 positive integers, got {self.shape}")
        size = _triple(self.voxel_size, "voxel_size")
        if min(size) <= 0:
            raise InputError(f"volume geometry: voxel_size must be positive, got {size}")
        object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "voxel_size", size)
        object.__setattr__(self, "center", _triple(self.center, "center"))

    @classmethod
    def cube(cls, n: int, voxel_mm: float, center: Triple = (0.0, 0.0, 0.0)) -> VolumeGeometry:
        """An n^3 grid of isotropic voxels of ``voxel_mm`` mm."""
        return cls((n, n, n), (voxel_mm,) * 3, center)

    @property
    def size(self) -> np.ndarray:
        """Box edge lengths (z, y, x) in mm."""
        return np.asarray(self.shape) * np.asarray(self.voxel_size)

    @property
    def box_min(self) -> np.ndarray:
        return np.asarray(self.center) - self.size / 2

    @property
    def box_max(self) -> np.ndarray:
        return np.asarray(self.center) + self.size / 2

    @property
    def n_voxels(self) -> int:
        return int(np.prod(self.shape))

    def axis_coords(self, axis: int) -> np.ndarray:
        """World coordinates (mm) of the voxel centres along axis 0 (z), 1 (y) or 2 (x)."""
        return _centre(np.arange(self.shape[axis]), self.shape[axis], self.voxel_size[axis], self.center[axis])

    def index_to_world(self, index) -> np.ndarray:
        """Voxel index (..., 3) in (k, j, i) order -> world (z, y, x) mm."""
        index = np.asarray(index, dtype=np.float64)
        return _centre(index, np.asarray(self.shape), np.asarray(self.voxel_size), np.asarray(self.center))

    def world_to_index(self, points) -> np.ndarray:
        """World (..., 3) (z, y, x) mm -> fractional voxel index (k, j, i)."""
        points = np.asarray(points, dtype=np.float64)
        return (points - np.asarray(self.center)) / np.asarray(self.voxel_size) + (np.asarray(self.shape) - 1) / 2

    def voxel_centers(self) -> np.ndarray:
        """All voxel centres, shape (nz, ny, nx, 3), (z, y, x) mm."""
        zz, yy, xx = np.meshgrid(*(self.axis_coords(a) for a in range(3)), indexing="ij")
        return np.stack([zz, yy, xx], axis=-1)

    def voxel_centers_at(self, flat: torch.Tensor) -> torch.Tensor:
        """Centres of the voxels with C-order flat indices ``flat`` (integer tensor (n,), voxel
        ``(k, j, i)`` at ``(k * ny + j) * nx + i``): (n, 3) world (z, y, x) mm, float64, on
        ``flat``'s device."""
        ny, nx = self.shape[1:]
        index = torch.stack((flat // (ny * nx), (flat // nx) % ny, flat % nx), dim=-1).to(torch.float64)
        shape, voxel, center = (torch.tensor(v, dtype=torch.float64, device=flat.device)
                                for v in (self.shape, self.voxel_size, self.center))
        return _centre(index, shape, voxel, center)

    def with_shape(self, shape) -> VolumeGeometry:
        """Same box, another grid: voxel size is rescaled so that the box is unchanged."""
        shape = _triple(shape, "shape", int)
        return VolumeGeometry(shape, tuple(self.size / np.asarray(shape)), self.center)

    def to_dict(self) -> dict:
        return {"shape": list(self.shape), "voxel_size": list(self.voxel_size), "center": list(self.center)}

    @classmethod
    def from_dict(cls, d: dict) -> VolumeGeometry:
        return cls(tuple(d["shape"]), tuple(d["voxel_size"]), tuple(d.get("center", (0.0, 0.0, 0.0))))

    def describe(self) -> str:
        s = self.size
        return (
            f"{self.shape[0]}x{self.shape[1]}x{self.shape[2]} voxels (z,y,x) of "
            f"{self.voxel_size[0]:g}x{self.voxel_size[1]:g}x{self.voxel_size[2]:g} mm, "
            f"box {s[0]:g}x{s[1]:g}x{s[2]:g} mm "
            f"centred at ({self.center[0]:g}, {self.center[1]:g}, {self.center[2]:g}) mm"
        )
