"""Fused NAF ray march: torch reference, kernel (CPU/CUDA) and the public function.

:func:`naf_march` is what :class:`nfrecon.fields.naf.NAFField` calls when a
:class:`~nfrecon.render.raymarch.RayMarcher` renders it: ``backend`` 'torch' runs
:func:`naf_march_reference`, 'cpp' and 'cuda' the kernel of ``cuda/include/nfrecon/
naf_march.h`` on the tensors' device (float32 or float64).
"""

from __future__ import annotations

import torch

from nfrecon.errors import InputError
from nfrecon.ops.backend import KERNEL_BACKENDS, check_kernel_limits, require_kernels
from nfrecon.ops.hashgrid import check_table
from nfrecon.ops.naf_march.function import NAFMarchFunction, march_args
from nfrecon.ops.naf_march.reference import MarchGeometry, NAFMarchField, naf_march_reference

__all__ = ["MarchGeometry", "NAFMarchField", "naf_march", "naf_march_reference"]


def _check(geom: MarchGeometry, field: NAFMarchField, rays, offsets, table, weights, biases) -> None:
    if rays.dim() != 1 or rays.dtype not in (torch.int32, torch.int64):
        raise InputError(f"naf march: rays must be a 1-D integer tensor of flat indices, got {rays.dtype} "
                         f"{tuple(rays.shape)}")
    if rays.numel() and (int(rays.min()) < 0 or int(rays.max()) >= geom.cone.n_rays):
        raise InputError(f"naf march: ray indices must lie in [0, {geom.cone.n_rays}), got "
                         f"[{int(rays.min())}, {int(rays.max())}]")
    check_table(table, field.encoder, "naf march")
    widths = tuple(w.shape[0] for w in weights[:-1])
    check_kernel_limits(field.encoder.n_levels, field.encoder.n_output_dims, widths)
    for name, t in [("rays", rays), *((f"layer {i}", w) for i, w in enumerate(weights))]:
        if t.device != table.device:
            raise InputError(f"naf march: {name} is on {t.device}, the table on {table.device}")
    if any(w.dtype != table.dtype for w in [*weights, *biases]):
        raise InputError(f"naf march: the MLP parameters must have the table's dtype {table.dtype}")
    if offsets is not None and tuple(offsets.shape) != (rays.shape[0], geom.n_samples):
        raise InputError(f"naf march: offsets must have shape {(rays.shape[0], geom.n_samples)}, "
                         f"got {tuple(offsets.shape)}")
    if weights[-1].shape[0] != 1:
        raise InputError(f"naf march: the field's MLP must have one output, got {weights[-1].shape[0]}")


def naf_march(
    geom: MarchGeometry,
    field: NAFMarchField,
    rays: torch.Tensor,
    offsets: torch.Tensor | None,
    table: torch.Tensor,
    weights: list[torch.Tensor],
    biases: list[torch.Tensor],
    backend: str = "torch",
) -> torch.Tensor:
    """Predicted line integrals (R,) of the NAF field along rays (R,) (flat [view, v, u] indices).

    ``offsets`` (R, N): each sample's position within its bin (jitter); None: midpoints.
    Differentiable with respect to ``table``, ``weights`` and ``biases``.
    """
    if backend not in KERNEL_BACKENDS:
        return naf_march_reference(geom, field, rays, offsets, table, weights, biases)
    _check(geom, field, rays, offsets, table, weights, biases)
    require_kernels(backend)
    empty = torch.empty(0, dtype=table.dtype, device=table.device)
    offsets = empty if offsets is None else offsets.to(table.dtype).contiguous()
    args = march_args(geom, field, len(weights))
    params = [p.contiguous() for p in (*weights, *biases)]
    return NAFMarchFunction.apply(rays.long().contiguous(), offsets, table, args, *params)
