"""The voxel projector's kernels as a pair of autograd Functions (CPU and CUDA builds alike).

``torch.ops.nfrecon.projector_forward`` computes ``A x`` for every ray of the stack (rays
None) or for the rays with the given flat indices; ``projector_adjoint`` computes ``A^T y``
for the same rays. Each Function is the other's backward, so the pair can be differentiated
any number of times. The library that registers the ops is loaded by
:func:`nfrecon.ops.backend.require_kernels`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ProjectorArgs:
    """The static arguments of both ops, packed as ``cuda/ops.cpp`` describes.

    geometry: (views, 12) float64 on the tensors' device (src, det, u, v per view, mm, z y x);
    det: [rows, cols]; box: [lo(3), size(3)] mm (z, y, x); step: bin length bound (mm);
    shape: the volume's [nz, ny, nx].
    """

    geometry: torch.Tensor
    det: list[int]
    box: list[float]
    step: float
    shape: list[int]

    def project(self, volume: torch.Tensor, rays: torch.Tensor | None) -> torch.Tensor:
        return torch.ops.nfrecon.projector_forward(volume, self.geometry, rays, self.det, self.box, self.step)

    def backproject(self, values: torch.Tensor, rays: torch.Tensor | None) -> torch.Tensor:
        return torch.ops.nfrecon.projector_adjoint(values, self.geometry, rays, self.det, self.box, self.step,
                                                   self.shape)


class ProjectorFunction(torch.autograd.Function):
    """volume (nz, ny, nx) contiguous -> line integrals (R,) of ``rays`` (None: every ray)."""

    @staticmethod
    def forward(ctx, volume: torch.Tensor, args: ProjectorArgs, rays: torch.Tensor | None) -> torch.Tensor:
        ctx.args, ctx.rays = args, rays
        return args.project(volume.detach(), rays)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return ProjectorAdjointFunction.apply(grad.contiguous(), ctx.args, ctx.rays), None, None


class ProjectorAdjointFunction(torch.autograd.Function):
    """values (R,) of ``rays`` (None: every ray) -> backprojection (nz, ny, nx)."""

    @staticmethod
    def forward(ctx, values: torch.Tensor, args: ProjectorArgs, rays: torch.Tensor | None) -> torch.Tensor:
        ctx.args, ctx.rays = args, rays
        return args.backproject(values.detach(), rays)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return ProjectorFunction.apply(grad.contiguous(), ctx.args, ctx.rays), None, None
