"""The small MLP of a neural field as a function of its parameters (the kernels' semantics).

``mlp_forward(x, weights, biases, skips, activation, out_activation)``: layer ``i`` computes
``z_i = in_i @ W_i.T + b_i`` with ``in_0 = x`` and ``in_i = cat([x, h_{i-1}])`` for a skip
layer ``i`` (NAF's input skip), else ``h_{i-1}``; hidden layers apply ``activation``
(leaky ReLU with slope 0.01, or ReLU), the last one ``out_activation`` (sigmoid; softplus
with beta 1 and threshold 20; none). ``W_i`` is (out, fan_in) as in ``torch.nn.Linear``.
The kernels (``cuda/include/nfrecon/mlp.h``) take the activations by their index in
:data:`ACTIVATIONS` and :data:`OUT_ACTIVATIONS`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

LEAKY_SLOPE = 0.01  # torch's default negative slope, as NAF
ACTIVATIONS = ("leaky_relu", "relu")
OUT_ACTIVATIONS = ("sigmoid", "softplus", "none")


def hidden_activation(name: str, z: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(z, LEAKY_SLOPE) if name == "leaky_relu" else F.relu(z)


def output_activation(name: str, z: torch.Tensor) -> torch.Tensor:
    if name == "sigmoid":
        return torch.sigmoid(z)
    if name == "softplus":
        return F.softplus(z)
    return z


def mlp_forward(
    x: torch.Tensor,
    weights: Sequence[torch.Tensor],
    biases: Sequence[torch.Tensor],
    skips: Sequence[int],
    activation: str,
    out_activation: str,
    film: Sequence[torch.Tensor] | None = None,
) -> torch.Tensor:
    """(..., in_dim) -> (..., out_dim) with the layers ``weights``/``biases`` (see the module).

    ``film``: (dgamma_0, beta_0, dgamma_1, beta_1, ...), each (..., width_i): hidden layer
    ``i`` then computes ``act(z_i * (1 + dgamma_i) + beta_i)`` (FiLM, CondCBNT's modulation).
    """
    h = x
    last = len(weights) - 1
    for i, (w, b) in enumerate(zip(weights, biases)):
        if i in skips:
            h = torch.cat([x, h], dim=-1)
        h = F.linear(h, w, b)
        if i == last:
            return output_activation(out_activation, h)
        if film is not None:
            h = h * (1 + film[2 * i]) + film[2 * i + 1]
        h = hidden_activation(activation, h)
    return h
