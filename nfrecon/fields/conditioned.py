"""Conditioned fields (CondCBNT): a shared backbone modulated per scan by a neural modulation field.

CondCBNT (Papa et al., "Neural Modulation Fields for Conditional Cone Beam Neural
Tomography", ICML 2023 SynS & ML workshop, arXiv 2307.08351; repository
samuelepapa/cond-cbnt) fits one *backbone* field across many patients and gives every
patient a small field of its own, the neural modulation field (NMF), whose output at a
point modulates the backbone's hidden activations there (FiLM). At test time the backbone
is frozen and only a fresh modulation field is fitted to the new scan's projections.

Here:

- :class:`Backbone` maps unit-cube coordinates ``u`` (..., 3), (z, y, x) order, to mu
  (...) in 1/mm: hash grid -> MLP -> ``out_activation * mu_max`` (sigmoid, as NAF). Each
  scan's reconstruction box maps onto the unit cube, so one backbone serves scans with
  different grids. Its hidden layer ``i`` (width ``w_i``) computes
  ``h_i = act(FiLM_i(W_i h_{i-1} + b_i))`` with ``FiLM_i(z) = z * (1 + dgamma_i) + beta_i``.
- :class:`ModulationField` maps ``u`` to the FiLM parameters of every hidden layer, a
  vector of ``2 * sum(w_i)`` values laid out ``[dgamma_0, beta_0, dgamma_1, beta_1, ...]``.
  Its last linear layer starts at zero, so a fresh modulation is exactly the identity.
  Per-scan modulations are free parameters fitted by auto-decoding (no encoder).
- :class:`ConditionedField` binds a backbone and a modulation to one scan's box: the field
  interface ``field(points (..., 3) world mm, zyx) -> mu (...) 1/mm``.

Published sizes (samuelepapa/cond-cbnt: README training command, ``nef/conditional/``):
backbone hash grid 16 levels x 2 features, base resolution 16, growth 2, 2**19 rows per
level, MLP of three hidden layers of width 128 with LeakyReLU; modulation field hash grid
12 levels x 2, base 16, 2**19, MLP of three hidden layers of width 128. Differences by
design: the output is NAF's ``sigmoid * mu_max`` (the repository ends in a leaky ReLU);
each hidden layer gets its own (dgamma, beta) (the repository shares one pair across
layers) and the scale is ``1 + dgamma`` so that zero means identity.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from nfrecon.errors import InputError
from nfrecon.fields.base import BoxField
from nfrecon.fields.hashgrid import HashGridConfig, HashGridEncoding
from nfrecon.fields.mlp import MLP, MLPConfig, mu_range, start_output_at
from nfrecon.geometry.volume import VolumeGeometry
from nfrecon.ops.backend import KERNEL_BACKENDS
from nfrecon.ops.cond_march import CondMarchField, NetParams, NetSpec, cond_march
from nfrecon.ops.mlp import mlp_forward
from nfrecon.ops.naf_march import MarchGeometry


@dataclass(frozen=True)
class BackboneConfig:
    """Hash grid and MLP of the shared backbone (defaults: CondCBNT's published sizes)."""

    encoder: HashGridConfig = field(default_factory=HashGridConfig)
    mlp: MLPConfig = field(default_factory=lambda: MLPConfig(hidden=(128, 128, 128), skips=()))

    @property
    def film_widths(self) -> tuple[int, ...]:
        """Widths of the modulated hidden layers."""
        return self.mlp.hidden

    def n_params(self) -> int:
        return self.encoder.n_params + self.mlp.n_params(self.encoder.n_output_dims, 1)


@dataclass(frozen=True)
class ModulationConfig:
    """Hash grid and MLP of a per-scan modulation field (defaults: CondCBNT's published NMF).

    The MLP's output width is set by the backbone (two values per hidden unit); its
    out_activation must be "none".
    """

    encoder: HashGridConfig = field(default_factory=lambda: HashGridConfig(n_levels=12))
    mlp: MLPConfig = field(default_factory=lambda: MLPConfig(hidden=(128, 128, 128), skips=(), out_activation="none"))

    def __post_init__(self):
        if self.mlp.out_activation != "none":
            raise InputError(f"modulation: mlp.out_activation must be 'none' (FiLM parameters are unbounded), "
                             f"got {self.mlp.out_activation!r}")

    def n_params(self, film_widths: tuple[int, ...]) -> int:
        return self.encoder.n_params + self.mlp.n_params(self.encoder.n_output_dims, 2 * sum(film_widths))


class Backbone(nn.Module):
    """Unit-cube points u (..., 3) zyx -> mu (...) in (0, mu_max) 1/mm, optionally FiLM-modulated.

    ``mu_max`` (1/mm) is stored in the state dict. ``film`` (..., 2 * sum(widths)) holds
    (dgamma, beta) of each hidden layer in the layout of the module docstring; None is the
    unmodulated backbone (the same as all zeros).
    """

    def __init__(self, cfg: BackboneConfig, mu_max: float):
        super().__init__()
        self.cfg = cfg
        self.encoder = HashGridEncoding(cfg.encoder)
        self.mlp = MLP(cfg.encoder.n_output_dims, 1, cfg.mlp)
        self.register_buffer("mu_max", mu_range(mu_max, "backbone"))

    @property
    def film_widths(self) -> tuple[int, ...]:
        return self.cfg.film_widths

    def forward(self, u: torch.Tensor, film: torch.Tensor | None = None) -> torch.Tensor:
        widths = self.cfg.film_widths
        if film is not None:
            if film.shape[-1] != 2 * sum(widths):
                raise InputError(f"backbone: film must have {2 * sum(widths)} values per point "
                                 f"(2 x hidden widths {widths}), got {film.shape[-1]}")
            film = film.split([w for w in widths for _ in range(2)], dim=-1)
        c = self.mlp.cfg
        h = mlp_forward(self.encoder(u), self.mlp.weights, self.mlp.biases, c.skips, c.activation, c.out_activation,
                        film=film)
        return h[..., 0] * self.mu_max

    @torch.no_grad()
    def start_near(self, mu0: float) -> None:
        """Set the output bias so that the unmodulated backbone is about ``mu0`` (1/mm) everywhere."""
        start_output_at(self.mlp, float(mu0) / float(self.mu_max), "backbone")


class ModulationField(nn.Module):
    """Unit-cube points u (..., 3) zyx -> FiLM parameters (..., 2 * sum(film_widths)).

    ``film_widths`` are the backbone's hidden widths. The last linear layer is zero, so the
    fresh field outputs zeros: the identity modulation.
    """

    def __init__(self, cfg: ModulationConfig, film_widths: tuple[int, ...]):
        super().__init__()
        self.cfg = cfg
        self.film_widths = tuple(int(w) for w in film_widths)
        if not self.film_widths or min(self.film_widths) < 1:
            raise InputError(f"modulation: film_widths must be positive widths, got {film_widths}")
        self.encoder = HashGridEncoding(cfg.encoder)
        self.mlp = MLP(cfg.encoder.n_output_dims, 2 * sum(self.film_widths), cfg.mlp)
        with torch.no_grad():
            self.mlp.layers[-1].weight.zero_()
            self.mlp.layers[-1].bias.zero_()

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.encoder(u))


class ConditionedField(BoxField):
    """mu(p) = backbone(unit(p), modulation(unit(p))) on one scan's box (world mm zyx -> 1/mm).

    ``backbone`` may be a :class:`Backbone` or a wrapper that forwards ``(u, film)`` to one
    (e.g. DistributedDataParallel); both modules are registered as submodules.
    """

    def __init__(self, backbone: nn.Module, modulation: ModulationField, vol_geom: VolumeGeometry):
        super().__init__(vol_geom)
        inner = getattr(backbone, "module", backbone)
        if tuple(inner.film_widths) != modulation.film_widths:
            raise InputError(f"conditioned field: the modulation is made for hidden widths {modulation.film_widths}, "
                             f"the backbone has {tuple(inner.film_widths)}")
        self.backbone = backbone
        self.modulation = modulation

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        u = self.to_unit(points)
        return self.backbone(u, self.modulation(u))

    @property
    def fused_march(self):
        """:meth:`march` for the renderer when both encoders use a kernel backend ('cpp' or
        'cuda') and the backbone is not wrapped (DDP's gradient hooks need its own forward);
        else None (the renderer samples points and calls the field)."""
        if self.backbone is not getattr(self.backbone, "module", self.backbone):
            return None
        backends = {self.backbone.encoder.backend, self.modulation.encoder.backend}
        return self.march if len(backends) == 1 and backends <= set(KERNEL_BACKENDS) else None

    def march(self, geom: MarchGeometry, rays: torch.Tensor, offsets: torch.Tensor | None) -> torch.Tensor:
        """Line integrals (R,) along ``rays`` in one fused op (:func:`nfrecon.ops.cond_march.cond_march`)."""
        b, m = self.backbone, self.modulation
        spec = CondMarchField(
            NetSpec(b.cfg.encoder, b.cfg.mlp.skips, b.cfg.mlp.activation, b.cfg.mlp.out_activation),
            NetSpec(m.cfg.encoder, m.cfg.mlp.skips, m.cfg.mlp.activation, m.cfg.mlp.out_activation),
            tuple(b.film_widths), tuple(self.vol_geom.box_min), tuple(self.vol_geom.size), float(b.mu_max),
        )
        return cond_march(
            geom, spec, rays, offsets,
            NetParams(b.encoder.table, b.mlp.weights, b.mlp.biases),
            NetParams(m.encoder.table, m.mlp.weights, m.mlp.biases),
            b.encoder.backend,
        )
