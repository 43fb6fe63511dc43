"""Attenuation fields: the NAF field (hash grid + MLP), a voxel field, grid evaluation.

Every field is a module called as ``field(points) -> mu``: points ``(..., 3)`` are world
positions in mm, (z, y, x) order; mu ``(...)`` is linear attenuation in 1/mm. The
renderer accepts any of them.

NAF's published configuration (Zha et al., MICCAI 2022; repository Ruyi-Zha/naf_cbct,
``config/*_50.yaml`` and ``src/network/network.py``): hash grid of 16 levels x 2
features, base resolution 16, growth 2 per level, 2**19 rows per hashed level; MLP of
4 linear layers, width 32, the encoding concatenated again before layer 2, LeakyReLU
(slope 0.01) and a sigmoid output. Differences from that code, by design: world points
are mapped to the unit cube by the volume box (NAF scales by a fixed ``bound``); cells
are vertex-aligned (NAF's encoder adds a half-cell offset); the hash primes are
Instant-NGP's (1, 2654435761, 805459861; NAF's encoder uses 1, 19349663, 83492791).
The table has the same size as NAF's (14 262 438 parameters for the defaults).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from nfrecon.errors import InputError
from nfrecon.fields.hashgrid import HashGridConfig, HashGridEncoding
from nfrecon.fields.mlp import MLP, MLPConfig
from nfrecon.geometry.volume import VolumeGeometry


@dataclass(frozen=True)
class NAFFieldConfig:
    """Encoder and MLP of a NAF field (defaults: NAF's published configuration)."""

    encoder: HashGridConfig = field(default_factory=HashGridConfig)
    mlp: MLPConfig = field(default_factory=MLPConfig)

    def n_params(self) -> int:
        return self.encoder.n_params + self.mlp.n_params(self.encoder.n_output_dims, 1)


class _BoxField(nn.Module):
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


class NAFField(_BoxField):
    """mu(p) = mu_max * MLP(HashGrid(unit(p))): in (0, mu_max) 1/mm with the sigmoid output.

    ``mu_max`` (1/mm) is the attenuation range of the scan; it is stored in the state dict.
    Points outside the box take the value at the nearest box point (the encoding clamps).
    """

    def __init__(self, cfg: NAFFieldConfig, vol_geom: VolumeGeometry, mu_max: float):
        super().__init__(vol_geom)
        if not np.isfinite(mu_max) or mu_max <= 0:
            raise InputError(f"NAF field: mu_max must be a positive number (1/mm), got {mu_max}")
        self.cfg = cfg
        self.encoder = HashGridEncoding(cfg.encoder)
        self.mlp = MLP(cfg.encoder.n_output_dims, 1, cfg.mlp)
        self.register_buffer("mu_max", torch.tensor(float(mu_max), dtype=torch.float64))

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.encoder(self.to_unit(points)))[..., 0] * self.mu_max

    @torch.no_grad()
    def start_near(self, mu0: float) -> None:
        """Set the output bias so that the fresh field is about ``mu0`` (1/mm) everywhere.

        With the sigmoid output a fresh field sits at mu_max / 2, far above the mean
        attenuation of a box that is mostly air; starting near the mean line integral per
        mm keeps the first steps from saturating the sigmoid at 0.
        """
        if self.cfg.mlp.out_activation != "sigmoid":
            raise InputError("NAF field: start_near needs the sigmoid output")
        frac = min(max(float(mu0) / float(self.mu_max), 1e-4), 1 - 1e-4)
        self.mlp.layers[-1].bias.fill_(float(np.log(frac / (1 - frac))))


class VoxelField(_BoxField):
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
    nz, ny, nx = vol_geom.shape
    center = torch.tensor(vol_geom.center, dtype=torch.float64, device=device)
    voxel = torch.tensor(vol_geom.voxel_size, dtype=torch.float64, device=device)
    half = (torch.tensor(vol_geom.shape, dtype=torch.float64, device=device) - 1) / 2
    out = torch.empty(vol_geom.n_voxels, dtype=dtype, device=device)
    for a in range(0, vol_geom.n_voxels, int(chunk)):
        flat = torch.arange(a, min(a + int(chunk), vol_geom.n_voxels), device=device)
        index = torch.stack((flat // (ny * nx), (flat // nx) % ny, flat % nx), dim=-1)
        points = center + (index - half) * voxel
        out[a : a + flat.shape[0]] = fld(points.to(dtype))
    return out.reshape(nz, ny, nx)
