"""Fused conditioned (CondCBNT) ray march: torch reference, kernel (CPU/CUDA), public function.

:func:`cond_march` is what :class:`nfrecon.fields.conditioned.ConditionedField` calls when a
:class:`~nfrecon.render.raymarch.RayMarcher` renders it with a kernel backend ('cpp' or
'cuda'; float32 or float64). 'torch' runs :func:`cond_march_reference`.
"""

from __future__ import annotations

import torch

from nfrecon.errors import InputError
from nfrecon.ops.backend import KERNEL_BACKENDS, check_kernel_limits, require_kernels
from nfrecon.ops.cond_march.function import CondMarchFunction, cond_args
from nfrecon.ops.cond_march.reference import CondMarchField, NetParams, NetSpec, cond_march_reference
from nfrecon.ops.hashgrid import check_table
from nfrecon.ops.naf_march.reference import MarchGeometry

__all__ = ["CondMarchField", "NetParams", "NetSpec", "cond_march", "cond_march_reference"]

MAX_FILM = 1024  # FiLM values per point the kernels hold (cuda/include/nfrecon/common.h)


def _check(geom: MarchGeometry, field: CondMarchField, rays, offsets, backbone: NetParams, modulation: NetParams):
    if rays.dim() != 1 or rays.dtype not in (torch.int32, torch.int64):
        raise InputError(f"conditioned march: rays must be a 1-D integer tensor, got {rays.dtype} {tuple(rays.shape)}")
    if rays.numel() and (int(rays.min()) < 0 or int(rays.max()) >= geom.cone.n_rays):
        raise InputError(f"conditioned march: ray indices must lie in [0, {geom.cone.n_rays})")
    for name, net, params in (("backbone", field.backbone, backbone), ("modulation", field.modulation, modulation)):
        check_table(params.table, net.encoder, f"conditioned march: {name}")
        check_kernel_limits(net.encoder.n_levels, net.encoder.n_output_dims,
                            tuple(w.shape[0] for w in params.weights[:-1]))
        if any(t.dtype != backbone.table.dtype for t in (params.table, *params.weights, *params.biases)):
            raise InputError(f"conditioned march: the {name}'s parameters must have the backbone table's dtype "
                             f"{backbone.table.dtype}")
        if any(t.device != params.table.device for t in (rays, *params.weights, *params.biases)):
            raise InputError(f"conditioned march: the {name}'s tensors and the rays must be on one device")
    if 2 * sum(field.film_widths) > MAX_FILM:
        raise InputError(f"condcbnt.backbone.mlp.hidden: the fused kernels hold at most {MAX_FILM} FiLM values "
                         f"(2 x the sum of the hidden widths), got {2 * sum(field.film_widths)}; use --backend torch")
    if offsets is not None and tuple(offsets.shape) != (rays.shape[0], geom.n_samples):
        raise InputError(f"conditioned march: offsets must have shape {(rays.shape[0], geom.n_samples)}")


def cond_march(
    geom: MarchGeometry,
    field: CondMarchField,
    rays: torch.Tensor,
    offsets: torch.Tensor | None,
    backbone: NetParams,
    modulation: NetParams,
    backend: str = "torch",
) -> torch.Tensor:
    """Predicted line integrals (R,) of the conditioned field along rays (R,) (flat indices).

    ``offsets`` (R, N): each sample's position within its bin; None: midpoints. Differentiable
    with respect to every parameter of both networks.
    """
    if backend not in KERNEL_BACKENDS:
        return cond_march_reference(geom, field, rays, offsets, backbone, modulation)
    _check(geom, field, rays, offsets, backbone, modulation)
    require_kernels(backend)
    empty = torch.empty(0, dtype=backbone.table.dtype, device=backbone.table.device)
    offsets = empty if offsets is None else offsets.to(backbone.table.dtype).contiguous()
    args = cond_args(geom, field, len(backbone.weights), len(modulation.weights))
    tensors = [backbone.table, modulation.table, *backbone.weights, *backbone.biases,
               *modulation.weights, *modulation.biases]
    return CondMarchFunction.apply(rays.long().contiguous(), offsets, args, *(t.contiguous() for t in tensors))
