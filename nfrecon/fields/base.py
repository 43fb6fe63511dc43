"""What every field shares: the volume box, a voxel field, and evaluation on a grid.

A field is a module called as ``field(points) -> mu``: points (..., 3) are world positions
in mm, (z, y, x) order; mu (...) is linear attenuation in 1/mm.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nfrecon.errors import InputError
from nfrecon.geometry.volume import VolumeGeometry


class BoxField(nn.Module):
    """Base of fields defined on a volume box: maps world (z, y, x) mm to the unit cube."""

    def __init__(self, vol_geom: VolumeGeometry):
        super().__init__()
        self.vol_geom = vol_geom
        self.register_buffer("box_min", torch.tensor(vol_geom.box_min, dtype=torch.float64), persistent=False)
        self.register_buffer("box_size", torch.tensor(vol_geom.size, dtype=torch.float64), persistent=False)

    def to_unit(self, points: torch.Tensor) -> torch.Tensor:
        """World points (..., 3) mm -> unit-cube coordinates (box_min -> 0, box_max -> 1)."""
        if points.shape[-1:] != (3,):
            raise InputError(f"field: points must have shape (..., 3), got {tuple(points.shape)}")
        return (points - self.box_min.to(points.dtype)) / self.box_size.to(points.dtype)


class VoxelField(BoxField):
    """The continuous function a voxel volume stands for, as :mod:`nfrecon.ops.projector` reads it.

    Trilinear interpolation between voxel centres, constant from the outermost centres to
    the box faces, zero outside the box (faces included in the box). ``volume`` (nz, ny, nx)
    mu in 1/mm becomes a trainable parameter.
    """

    def __init__(self, volume: torch.Tensor, vol_geom: VolumeGeometry):
        super().__init__(vol_geom)
        if tuple(volume.shape) != vol_geom.shape:
            raise InputError(f"voxel field: volume has shape {tuple(volume.shape)}, geometry expects {vol_geom.shape}")
        self.volume = nn.Parameter(volume.detach().clone())

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        grid = self.to_unit(points) * 2 - 1  # grid_sample's [-1, 1], (z, y, x)
        inside = (grid.abs() <= 1).all(dim=-1)
        flat = grid.reshape(1, 1, 1, -1, 3).flip(-1).to(self.volume.dtype)
        mu = F.grid_sample(self.volume[None, None], flat, mode="bilinear", padding_mode="border", align_corners=False)
        return mu.reshape(points.shape[:-1]) * inside


def use_backend(module: nn.Module, backend: str) -> None:
    """Set the implementation ('torch', 'cpp', 'cuda'; :mod:`nfrecon.ops.backend`) of every
    submodule of ``module`` that has a choice (hash-grid encodings, NAF fields' march)."""
    for sub in module.modules():
        if hasattr(sub, "backend"):
            sub.backend = backend


def field_device_dtype(module: nn.Module) -> tuple[torch.device, torch.dtype]:
    """Device and floating dtype of a field's first floating parameter or buffer (CPU float32 if none)."""
    for t in (*module.parameters(), *module.buffers()):
        if t.is_floating_point():
            return t.device, t.dtype
    return torch.device("cpu"), torch.float32


@torch.no_grad()
def evaluate_grid(fld: nn.Module, vol_geom: VolumeGeometry, chunk: int = 2**17) -> torch.Tensor:
    """The field at every voxel centre of ``vol_geom``: a (nz, ny, nx) tensor of mu (1/mm).

    Points are made and evaluated ``chunk`` at a time without autograd, on the field's
    device and in its dtype, so the memory beyond the output volume is that of one
    chunk through the field (NAF defaults, float32: about 2.5 kB per point measured,
    330 MB at the default 2**17).
    """
    if int(chunk) < 1:
        raise InputError(f"evaluate_grid: chunk must be >= 1, got {chunk}")
    device, dtype = field_device_dtype(fld)
    out = torch.empty(vol_geom.n_voxels, dtype=dtype, device=device)
    for a in range(0, vol_geom.n_voxels, int(chunk)):
        flat = torch.arange(a, min(a + int(chunk), vol_geom.n_voxels), device=device)
        out[a : a + flat.shape[0]] = fld(vol_geom.voxel_centers_at(flat).to(dtype))
    return out.reshape(vol_geom.shape)
