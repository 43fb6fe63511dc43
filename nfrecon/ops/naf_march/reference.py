"""The NAF ray march in torch: the reference semantics of the fused kernel.

Predicted line integrals of a NAF field (hash grid + MLP, ``mu = mu_max * out``) along
detector rays, exactly as :class:`nfrecon.render.raymarch.RayMarcher` renders an
:class:`nfrecon.fields.naf.NAFField`: rays from the source through pixel centres
(:func:`~nfrecon.geometry.rays.pixel_rays`), clipped to the march box
(:func:`~nfrecon.geometry.rays.ray_box`), ``n_samples`` stratified samples
(:func:`~nfrecon.geometry.rays.stratified_samples` with the given bin offsets, midpoints
when None), world points mapped to the field's unit cube by its own box, and
``sum(mu * dt)``. Units: mm, mu in 1/mm; all coordinates (z, y, x).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch

from nfrecon.geometry.cone import ConeGeometry
from nfrecon.geometry.rays import geometry_tensors, pixel_rays, ray_box, stratified_samples
from nfrecon.geometry.volume import VolumeGeometry
from nfrecon.ops.hashgrid import HashGridConfig, hashgrid_reference
from nfrecon.ops.mlp import mlp_forward


@dataclass(frozen=True, eq=False)
class MarchGeometry:
    """What a march needs of the scan: the cone-beam geometry (and its per-view vectors as
    float64 tensors on the device), the box rays are clipped to (mm) and samples per ray."""

    cone: ConeGeometry
    box_min: tuple[float, float, float]
    box_max: tuple[float, float, float]
    n_samples: int
    tensors: dict
    """:func:`geometry_tensors` of ``cone`` (src, det, u, v: (views, 3) float64)."""

    @classmethod
    def make(cls, cone: ConeGeometry, vol_geom: VolumeGeometry, n_samples: int, device=None) -> MarchGeometry:
        box_min = tuple(float(v) for v in vol_geom.box_min)
        box_max = tuple(float(v) for v in vol_geom.box_max)
        return cls(cone, box_min, box_max, int(n_samples), geometry_tensors(cone, device))

    @cached_property
    def vectors(self) -> torch.Tensor:
        """(views, 12) float64: src, det, u, v per view, the kernels' layout."""
        t = self.tensors
        return torch.cat([t["src"], t["det"], t["u"], t["v"]], dim=1).contiguous()


@dataclass(frozen=True)
class NAFMarchField:
    """What a march needs of a NAF field besides its parameters (table, weights, biases)."""

    encoder: HashGridConfig
    skips: tuple[int, ...]
    activation: str
    out_activation: str
    box_min: tuple[float, float, float]
    """Field box, mm: world ``box_min`` maps to unit coordinate 0, ``box_min + box_size`` to 1."""
    box_size: tuple[float, float, float]
    mu_max: float
    """1/mm: the field is ``mu_max * MLP output``."""


def march_points(
    geom: MarchGeometry, rays: torch.Tensor, offsets: torch.Tensor | None, box_min, box_size, dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit-cube coordinates (R, N, 3) of the samples of ``rays`` on the field box ``box_min``,
    ``box_size`` (mm), and the bin lengths dt (R, 1) mm; offsets (R, N) in [0, 1) or None."""
    o, d = pixel_rays(geom.cone, rays, geom.tensors, dtype=dtype)
    t_near, t_far = ray_box(o, d, geom.box_min, geom.box_max)
    t, dt = stratified_samples(t_near, t_far, geom.n_samples, jitter=False, offsets=offsets)
    points = o[:, None, :] + t[..., None] * d[:, None, :]
    lo = torch.tensor(box_min, dtype=torch.float64, device=points.device).to(points.dtype)
    size = torch.tensor(box_size, dtype=torch.float64, device=points.device).to(points.dtype)
    return (points - lo) / size, dt


def naf_march_reference(
    geom: MarchGeometry,
    field: NAFMarchField,
    rays: torch.Tensor,
    offsets: torch.Tensor | None,
    table: torch.Tensor,
    weights: list[torch.Tensor],
    biases: list[torch.Tensor],
) -> torch.Tensor:
    """Predicted line integrals (R,) of rays (R,) flat indices; offsets (R, N) in [0, 1) or None."""
    u, dt = march_points(geom, rays, offsets, field.box_min, field.box_size, table.dtype)
    feat = hashgrid_reference(u, table, field.encoder)
    out = mlp_forward(feat, weights, biases, field.skips, field.activation, field.out_activation)
    mu = out[..., 0] * torch.tensor(field.mu_max, dtype=torch.float64)
    return (mu * dt).sum(dim=-1)
