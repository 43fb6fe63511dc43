"""The fused conditioned march as an autograd Function (one Function for CPU and CUDA builds).

Forward: ``torch.ops.nfrecon.cond_march_forward`` (one value per ray). Backward:
``cond_march_backward`` recomputes every sample and returns the gradients of the modulation
(table, weights, biases) and, when any backbone parameter requires a gradient, the
backbone's (see ``cuda/include/nfrecon/cond_march.h``).
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from nfrecon.ops.cond_march.reference import CondMarchField, NetSpec
from nfrecon.ops.hashgrid import grid_spec
from nfrecon.ops.mlp import ACTIVATIONS, OUT_ACTIVATIONS
from nfrecon.ops.naf_march.reference import MarchGeometry


def _mlp_spec(net: NetSpec, n_layers: int) -> list[int]:
    return [ACTIVATIONS.index(net.activation), OUT_ACTIVATIONS.index(net.out_activation),
            *(int(i in net.skips) for i in range(n_layers))]


def cond_args(geom: MarchGeometry, field: CondMarchField, n_backbone: int, n_modulation: int) -> dict:
    """The static arguments of both ops (cuda/ops.cpp), plus the layer counts."""
    return {
        "geometry": geom.vectors,
        "bgrid": grid_spec(field.backbone.encoder), "bmlp": _mlp_spec(field.backbone, n_backbone),
        "mgrid": grid_spec(field.modulation.encoder), "mmlp": _mlp_spec(field.modulation, n_modulation),
        "box": [*geom.box_min, *geom.box_max, *field.box_min, *field.box_size],
        "mu_max": float(field.mu_max),
        "march": [geom.cone.det_shape[0], geom.cone.det_shape[1], geom.n_samples],
        "n_backbone": n_backbone, "n_modulation": n_modulation,
    }


def _unpack(a: dict, tensors):
    """(btable, bW, bb, mtable, mW, mb) from the flat tensor list of the Function."""
    nb, nm = a["n_backbone"], a["n_modulation"]
    bt, mt, rest = tensors[0], tensors[1], list(tensors[2:])
    return bt, rest[:nb], rest[nb:2 * nb], mt, rest[2 * nb:2 * nb + nm], rest[2 * nb + nm:]


class CondMarchFunction(torch.autograd.Function):
    """(rays, offsets, args, btable, mtable, *bW, *bb, *mW, *mb) -> line integrals (R,)."""

    @staticmethod
    def forward(ctx, rays, offsets, args: dict, *tensors):
        bt, bw, bb, mt, mw, mb = _unpack(args, tensors)
        ctx.save_for_backward(rays, offsets, *tensors)
        ctx.args = args
        a = args
        return torch.ops.nfrecon.cond_march_forward(
            rays, a["geometry"], offsets, bt, bw, bb, a["bgrid"], a["bmlp"], mt, mw, mb, a["mgrid"], a["mmlp"],
            a["box"], a["mu_max"], a["march"],
        )

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        rays, offsets, *tensors = ctx.saved_tensors
        a = ctx.args
        bt, bw, bb, mt, mw, mb = _unpack(a, tensors)
        nb = a["n_backbone"]
        need = ctx.needs_input_grad[3:]  # btable, mtable, bW..., bb..., mW..., mb...
        backbone_grad = bool(need[0] or any(need[2:2 + 2 * nb]))
        grads = torch.ops.nfrecon.cond_march_backward(
            grad.contiguous(), rays, a["geometry"], offsets, bt, bw, bb, a["bgrid"], a["bmlp"], mt, mw, mb,
            a["mgrid"], a["mmlp"], a["box"], a["mu_max"], a["march"], backbone_grad,
        )
        # kernel order: btable, bW..., bb..., mtable, mW..., mb...; ours: btable, mtable, bW..., bb..., mW..., mb...
        b_part, m_part = grads[: 1 + 2 * nb], grads[1 + 2 * nb:]
        ordered = [b_part[0], m_part[0], *b_part[1:], *m_part[1:]]
        ordered = [g if g.numel() else None for g in ordered]
        return (None, None, None, *ordered)
