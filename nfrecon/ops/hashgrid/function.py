"""The hash-grid kernel as an autograd Function (one Function for the CPU and CUDA builds).

``torch.ops.nfrecon.hashgrid_forward`` / ``hashgrid_backward`` dispatch on the device of
their tensors; the library that registers them is loaded by :mod:`nfrecon.ops.backend`.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from nfrecon.ops.hashgrid.reference import HashGridConfig


def grid_spec(cfg: HashGridConfig) -> list[int]:
    """The kernels' packing of a hash grid: [T, F, L, resolutions..., dense flags..., offsets...]."""
    return [
        cfg.log2_hashmap_size, cfg.n_features_per_level, cfg.n_levels,
        *cfg.resolutions, *(int(d) for d in cfg.dense), *cfg.offsets[:-1],
    ]


class HashGridFunction(torch.autograd.Function):
    """points (M, 3) contiguous, table (rows, F) of the same dtype -> features (M, L * F)."""

    @staticmethod
    def forward(ctx, points: torch.Tensor, table: torch.Tensor, spec: list[int]) -> torch.Tensor:
        ctx.save_for_backward(points, table)
        ctx.spec = spec
        return torch.ops.nfrecon.hashgrid_forward(points, table, spec)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        points, table = ctx.saved_tensors
        grad_table, grad_points = torch.ops.nfrecon.hashgrid_backward(
            grad.contiguous(), points, table, ctx.spec, bool(ctx.needs_input_grad[0])
        )
        return (grad_points if ctx.needs_input_grad[0] else None), grad_table, None
