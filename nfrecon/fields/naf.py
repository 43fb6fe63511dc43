"""The NAF field: a multiresolution hash grid and a small MLP, mu in (0, mu_max) 1/mm.

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

import torch

from nfrecon.fields.base import BoxField
from nfrecon.fields.hashgrid import HashGridConfig, HashGridEncoding
from nfrecon.fields.mlp import MLP, MLPConfig, mu_range, start_output_at
from nfrecon.geometry.volume import VolumeGeometry
from nfrecon.ops.naf_march import MarchGeometry, NAFMarchField, naf_march


@dataclass(frozen=True)
class NAFFieldConfig:
    """Encoder and MLP of a NAF field (defaults: NAF's published configuration)."""

    encoder: HashGridConfig = field(default_factory=HashGridConfig)
    mlp: MLPConfig = field(default_factory=MLPConfig)

    def n_params(self) -> int:
        return self.encoder.n_params + self.mlp.n_params(self.encoder.n_output_dims, 1)


class NAFField(BoxField):
    """mu(p) = mu_max * MLP(HashGrid(unit(p))): in (0, mu_max) 1/mm with the sigmoid output.

    ``mu_max`` (1/mm) is the attenuation range of the scan; it is stored in the state dict.
    Points outside the box take the value at the nearest box point (the encoding clamps).
    """

    def __init__(self, cfg: NAFFieldConfig, vol_geom: VolumeGeometry, mu_max: float, backend: str = "torch"):
        super().__init__(vol_geom)
        self.cfg = cfg
        self.encoder = HashGridEncoding(cfg.encoder, backend)
        self.mlp = MLP(cfg.encoder.n_output_dims, 1, cfg.mlp)
        self.register_buffer("mu_max", mu_range(mu_max, "NAF field"))

    @property
    def backend(self) -> str:
        """'torch', 'cpp' or 'cuda' (:mod:`nfrecon.ops.backend`): the encoder's, and the march's."""
        return self.encoder.backend

    @backend.setter
    def backend(self, name: str) -> None:
        self.encoder.backend = name

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.encoder(self.to_unit(points)))[..., 0] * self.mu_max

    @property
    def fused_march(self):
        """:meth:`march` for the renderer, or None with the tcnn backend (no fused march: the
        renderer then samples points and calls the field)."""
        return None if self.backend == "tcnn" else self.march

    def march(self, geom: MarchGeometry, rays: torch.Tensor, offsets: torch.Tensor | None) -> torch.Tensor:
        """Line integrals (R,) along ``rays`` in one fused op (see :func:`nfrecon.ops.naf_march.naf_march`)."""
        c = self.cfg.mlp
        spec = NAFMarchField(
            self.cfg.encoder, c.skips, c.activation, c.out_activation,
            tuple(self.vol_geom.box_min), tuple(self.vol_geom.size), float(self.mu_max),
        )
        m = self.mlp
        return naf_march(geom, spec, rays, offsets, self.encoder.table, m.weights, m.biases, self.backend)

    @torch.no_grad()
    def start_near(self, mu0: float) -> None:
        """Set the output bias so that the fresh field is about ``mu0`` (1/mm) everywhere.

        With the sigmoid output a fresh field sits at mu_max / 2, far above the mean
        attenuation of a box that is mostly air; starting near the mean line integral per
        mm keeps the first steps from saturating the sigmoid at 0.
        """
        start_output_at(self.mlp, float(mu0) / float(self.mu_max), "NAF field")
