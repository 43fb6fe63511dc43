"""The fused NAF ray march as an autograd Function (one Function for the CPU and CUDA builds).

Forward: ``torch.ops.nfrecon.naf_march_forward`` (one value per ray, nothing per sample is
kept). Backward: ``naf_march_backward`` recomputes every sample and returns the gradients of
the table and of every MLP weight and bias (see ``cuda/include/nfrecon/naf_march.h``).
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from nfrecon.ops.hashgrid import grid_spec
from nfrecon.ops.mlp import ACTIVATIONS, OUT_ACTIVATIONS
from nfrecon.ops.naf_march.reference import MarchGeometry, NAFMarchField


def march_args(geom: MarchGeometry, field: NAFMarchField, n_layers: int) -> dict:
    """The static (non-tensor) arguments of both ops, packed as cuda/ops.cpp describes."""
    return {
        "geometry": geom.vectors,
        "grid": grid_spec(field.encoder),
        "mlp": [ACTIVATIONS.index(field.activation), OUT_ACTIVATIONS.index(field.out_activation),
                *(int(i in field.skips) for i in range(n_layers))],
        "box": [*geom.box_min, *geom.box_max, *field.box_min, *field.box_size],
        "mu_max": float(field.mu_max),
        "march": [geom.cone.det_shape[0], geom.cone.det_shape[1], geom.n_samples],
    }


class NAFMarchFunction(torch.autograd.Function):
    """(rays (R,) int64, offsets (R, N) or empty, table, args, *weights, *biases) -> (R,)."""

    @staticmethod
    def forward(ctx, rays, offsets, table, args: dict, *params):
        n = len(params) // 2
        weights, biases = list(params[:n]), list(params[n:])
        ctx.save_for_backward(rays, offsets, table, *params)
        ctx.args = args
        a = args
        return torch.ops.nfrecon.naf_march_forward(
            rays, a["geometry"], offsets, table, weights, biases, a["grid"], a["mlp"], a["box"], a["mu_max"], a["march"]
        )

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        rays, offsets, table, *params = ctx.saved_tensors
        n = len(params) // 2
        a = ctx.args
        grads = torch.ops.nfrecon.naf_march_backward(
            grad.contiguous(), rays, a["geometry"], offsets, table, params[:n], params[n:],
            a["grid"], a["mlp"], a["box"], a["mu_max"], a["march"],
        )
        return (None, None, grads[0], None, *grads[1:])
