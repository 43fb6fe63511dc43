"""The conditioned (CondCBNT) ray march in torch: the reference semantics of the fused kernel.

Predicted line integrals of a conditioned field along detector rays, exactly as
:class:`nfrecon.render.raymarch.RayMarcher` renders a
:class:`nfrecon.fields.conditioned.ConditionedField`: the samples of
:func:`nfrecon.ops.naf_march.reference.march_points` (unit-cube coordinates u on the scan's
box), the modulation ``film = MLP_m(enc_m(u))`` (FiLM values ``[dgamma_0, beta_0, ...]``),
the backbone ``mu = mu_max * out(MLP_b(enc_b(u); film))`` with hidden layer ``i`` computing
``act(z_i * (1 + dgamma_i) + beta_i)``, and ``sum(mu * dt)``. Units: mm, mu in 1/mm; (z, y, x).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from nfrecon.ops.hashgrid import HashGridConfig, hashgrid_reference
from nfrecon.ops.mlp import mlp_forward
from nfrecon.ops.naf_march.reference import MarchGeometry, march_points


@dataclass(frozen=True)
class NetSpec:
    """One hash grid + MLP: the encoder config and the MLP's skips and activations."""

    encoder: HashGridConfig
    skips: tuple[int, ...]
    activation: str
    out_activation: str


@dataclass(frozen=True)
class CondMarchField:
    """What a march needs of a conditioned field besides its parameters."""

    backbone: NetSpec
    modulation: NetSpec
    film_widths: tuple[int, ...]
    """Hidden widths of the backbone (the modulation outputs 2 x their sum values)."""
    box_min: tuple[float, float, float]
    """Scan box, mm: world ``box_min`` is unit coordinate 0, ``box_min + box_size`` is 1."""
    box_size: tuple[float, float, float]
    mu_max: float
    """1/mm: the backbone's output range."""


@dataclass(frozen=True)
class NetParams:
    """The parameters of one hash grid + MLP: table (rows, F), weights and biases per layer."""

    table: torch.Tensor
    weights: list[torch.Tensor]
    biases: list[torch.Tensor]


def cond_march_reference(
    geom: MarchGeometry,
    field: CondMarchField,
    rays: torch.Tensor,
    offsets: torch.Tensor | None,
    backbone: NetParams,
    modulation: NetParams,
) -> torch.Tensor:
    """Predicted line integrals (R,) of rays (R,) flat indices; offsets (R, N) in [0, 1) or None."""
    u, dt = march_points(geom, rays, offsets, field.box_min, field.box_size, backbone.table.dtype)
    m, b = field.modulation, field.backbone
    film = mlp_forward(hashgrid_reference(u, modulation.table, m.encoder), modulation.weights, modulation.biases,
                       m.skips, m.activation, m.out_activation)
    parts = film.split([w for w in field.film_widths for _ in range(2)], dim=-1)
    out = mlp_forward(hashgrid_reference(u, backbone.table, b.encoder), backbone.weights, backbone.biases,
                      b.skips, b.activation, b.out_activation, film=parts)
    mu = out[..., 0] * torch.tensor(field.mu_max, dtype=torch.float64)
    return (mu * dt).sum(dim=-1)
