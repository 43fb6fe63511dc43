"""Small fully connected networks for neural fields (NAF style, with an input skip).

The module holds the parameters; :func:`nfrecon.ops.mlp.mlp_forward` is the computation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from nfrecon.errors import InputError
from nfrecon.ops.mlp import ACTIVATIONS, OUT_ACTIVATIONS, mlp_forward


@dataclass(frozen=True)
class MLPConfig:
    """hidden: output widths of the hidden layers (len(hidden) + 1 linear layers in all);
    skips: indices of the linear layers whose input is ``cat([x_in, h])`` (the network
    input concatenated before the previous layer's output, as NAF), 1 <= skip <= len(hidden);
    activation: after each hidden layer ("leaky_relu", slope 0.01, or "relu");
    out_activation: on the output ("sigmoid", "softplus" or "none").
    """

    hidden: tuple[int, ...] = (32, 32, 32)
    skips: tuple[int, ...] = (2,)
    activation: str = "leaky_relu"
    out_activation: str = "sigmoid"

    def __post_init__(self):
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))
        object.__setattr__(self, "skips", tuple(sorted({int(s) for s in self.skips})))
        if not self.hidden or min(self.hidden) < 1:
            raise InputError(f"mlp: hidden must be one or more positive widths, got {self.hidden}")
        if any(not 1 <= s <= len(self.hidden) for s in self.skips):
            raise InputError(f"mlp: skips must lie in [1, {len(self.hidden)}], got {self.skips}")
        if self.activation not in ACTIVATIONS:
            raise InputError(f"mlp: activation must be one of {sorted(ACTIVATIONS)}, got {self.activation!r}")
        if self.out_activation not in OUT_ACTIVATIONS:
            raise InputError(f"mlp: out_activation must be one of {sorted(OUT_ACTIVATIONS)}, "
                             f"got {self.out_activation!r}")

    def layer_shapes(self, in_dim: int, out_dim: int) -> list[tuple[int, int]]:
        """(fan_in, fan_out) of each linear layer."""
        outs = [*self.hidden, out_dim]
        ins = [in_dim, *self.hidden]
        return [(fi + (in_dim if i in self.skips else 0), fo) for i, (fi, fo) in enumerate(zip(ins, outs))]

    def n_params(self, in_dim: int, out_dim: int) -> int:
        return sum((fi + 1) * fo for fi, fo in self.layer_shapes(in_dim, out_dim))


class MLP(nn.Module):
    """(..., in_dim) -> (..., out_dim); PyTorch's default Linear initialisation."""

    def __init__(self, in_dim: int, out_dim: int, cfg: MLPConfig):
        super().__init__()
        self.cfg = cfg
        self.layers = nn.ModuleList(nn.Linear(fi, fo) for fi, fo in cfg.layer_shapes(in_dim, out_dim))

    @property
    def weights(self) -> list[torch.Tensor]:
        return [layer.weight for layer in self.layers]

    @property
    def biases(self) -> list[torch.Tensor]:
        return [layer.bias for layer in self.layers]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.cfg
        return mlp_forward(x, self.weights, self.biases, c.skips, c.activation, c.out_activation)


def mu_range(mu_max: float, owner: str) -> torch.Tensor:
    """The checked attenuation range ``mu_max`` (1/mm) of a field's scaled output, as a
    float64 scalar for ``register_buffer`` (so that it travels in the state dict)."""
    if not math.isfinite(mu_max) or mu_max <= 0:
        raise InputError(f"{owner}: mu_max must be a positive number (1/mm), got {mu_max}")
    return torch.tensor(float(mu_max), dtype=torch.float64)


@torch.no_grad()
def start_output_at(mlp: MLP, fraction: float, owner: str) -> None:
    """Set the bias of a sigmoid-output MLP's last layer so that it outputs about ``fraction``
    (clamped to [1e-4, 1 - 1e-4]) wherever its last hidden layer is small."""
    if mlp.cfg.out_activation != "sigmoid":
        raise InputError(f"{owner}: start_near needs the sigmoid output")
    frac = min(max(float(fraction), 1e-4), 1 - 1e-4)
    mlp.layers[-1].bias.fill_(math.log(frac / (1 - frac)))
