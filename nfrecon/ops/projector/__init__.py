"""Voxel projector ``A`` and its exact adjoint ``A^T``: torch reference and fused kernels.

:class:`VoxelProjector` maps a volume of mu (1/mm), indexed [z, y, x] on a
:class:`~nfrecon.geometry.volume.VolumeGeometry`, to line integrals [view, v, u] of a
:class:`~nfrecon.geometry.cone.ConeGeometry`, and back. The map (see
:mod:`nfrecon.ops.projector.reference` for the full statement): the trilinear interpolant of
the voxel centres, constant to the box faces and zero outside, integrated with the midpoint
rule over ``ceil(length / step)`` equal bins per chord (step in mm, default half the smallest
voxel); rays in float64, per-sample arithmetic in the volume's dtype. ``A.T`` is its exact
transpose (same samples, same weights), so ``<A x, y> == <x, A^T y>`` to rounding.

``backend`` picks the implementation when a tensor arrives (on that tensor's device):

- ``torch``: :class:`~nfrecon.ops.projector.reference.ReferenceProjector` (grid_sample; any
  device and floating dtype);
- ``cpp``: the kernels of ``cuda/include/nfrecon/projector.h`` on the CPU, float32/float64.
  Deterministic: the backprojection scatters into one volume buffer per thread and adds the
  buffers in a fixed order (bitwise repeatable for a given thread count);
- ``cuda``: the same kernels on a CUDA device; the backprojection adds with atomics, so its
  rounding varies from run to run;
- ``auto`` (default): cuda on a CUDA device, cpp on the CPU, when they build (else torch, with
  one warning); torch for dtypes the kernels do not take (e.g. float16).

The kernels carry positions in voxel-index coordinates from each ray's entry point (computed
in double per ray), so in float32 they differ from the reference by rounding only (~1e-6
relative of the largest value); grids of 2^31 voxels or more need the torch backend.
"""

from __future__ import annotations

import torch

from nfrecon.errors import InputError
from nfrecon.geometry.cone import ConeGeometry
from nfrecon.geometry.rays import geometry_tensors
from nfrecon.geometry.volume import VolumeGeometry
from nfrecon.ops.backend import resolve_backend
from nfrecon.ops.projector.function import ProjectorAdjointFunction, ProjectorArgs, ProjectorFunction
from nfrecon.ops.projector.reference import ReferenceProjector

__all__ = ["PROJECTOR_BACKENDS", "ProjectorArgs", "ReferenceProjector", "VoxelProjector"]

# What --backend may name for the projector (tcnn has no projector).
PROJECTOR_BACKENDS = ("auto", "torch", "cpp", "cuda")
_KERNEL_DTYPES = (torch.float32, torch.float64)


class VoxelProjector(ReferenceProjector):
    """Forward projector ``A`` and backprojector ``A^T`` for one volume grid and geometry.

    ``A(volume)`` maps a (nz, ny, nx) tensor of mu (1/mm) to line integrals
    (views, rows, cols); ``A.T(proj)`` maps back; both are differentiable (each the other's
    backward). ``project_rays`` / ``adjoint_rays`` do the same for a subset of rays given by
    flat indices ``view * rows * cols + row * cols + col``. Tensors may live on any device;
    ``backend`` is resolved on it at every call (see the module docstring).
    ``chunk_samples`` and ``cache_bytes`` bound the torch path's memory and cache.
    """

    def __init__(
        self,
        vol_geom: VolumeGeometry,
        geom: ConeGeometry,
        step_mm: float | None = None,
        chunk_samples: int = 2**22,
        cache_bytes: int = 2**26,
        backend: str = "auto",
    ):
        if backend not in PROJECTOR_BACKENDS:
            raise InputError(f"--backend: the projector runs on one of {', '.join(PROJECTOR_BACKENDS)}, "
                             f"got {backend!r}")
        super().__init__(vol_geom, geom, step_mm, chunk_samples, cache_bytes)
        self.backend = backend
        self._args: dict[torch.device, ProjectorArgs] = {}

    # ------------------------------------------------------------------ public API
    def forward(self, volume: torch.Tensor) -> torch.Tensor:
        """Line integrals (views, rows, cols) of ``volume`` (nz, ny, nx), differentiable."""
        self._check_volume(volume)
        if self.backend_for(volume) == "torch":
            return super().forward(volume)
        out = ProjectorFunction.apply(volume.contiguous(), self.kernel_args(volume.device), None)
        return out.reshape(self.geom.proj_shape)

    def adjoint(self, proj: torch.Tensor) -> torch.Tensor:
        """Backprojection ``A^T proj`` -> (nz, ny, nx), the exact transpose of ``forward``."""
        if tuple(proj.shape) != self.geom.proj_shape:
            raise InputError(f"backprojection: projections have shape {tuple(proj.shape)}, "
                             f"geometry expects {self.geom.proj_shape}")
        if self.backend_for(proj) == "torch":
            return super().adjoint(proj)
        return ProjectorAdjointFunction.apply(proj.reshape(-1).contiguous(), self.kernel_args(proj.device), None)

    def project_rays(self, volume: torch.Tensor, flat_index: torch.Tensor) -> torch.Tensor:
        """Line integrals (R,) of the rays with the given flat indices (differentiable on the
        kernel backends, through :meth:`adjoint_rays`)."""
        self._check_volume(volume)
        rays = self._check_rays(flat_index, volume.device)
        if self.backend_for(volume) == "torch":
            return self._project_rays(volume, rays)
        return ProjectorFunction.apply(volume.contiguous(), self.kernel_args(volume.device), rays)

    def adjoint_rays(self, values: torch.Tensor, flat_index: torch.Tensor) -> torch.Tensor:
        """The transpose of :meth:`project_rays`: values (R,) of those rays -> (nz, ny, nx)."""
        rays = self._check_rays(flat_index, values.device)
        if values.dim() != 1 or values.shape[0] != rays.shape[0]:
            raise InputError(f"backprojection: values must have shape ({rays.shape[0]},) like the ray indices, "
                             f"got {tuple(values.shape)}")
        if self.backend_for(values) == "torch":
            return self._adjoint_rays(values, rays)
        return ProjectorAdjointFunction.apply(values.contiguous(), self.kernel_args(values.device), rays)

    def backend_for(self, tensor: torch.Tensor) -> str:
        """The implementation that runs for ``tensor`` ('torch', 'cpp' or 'cuda')."""
        name = resolve_backend(self.backend, tensor.device)
        if name in ("cpp", "cuda") and tensor.dtype not in _KERNEL_DTYPES:
            if self.backend == "auto":
                return "torch"
            raise InputError(f"--backend {name}: the projector kernels take float32 or float64, got {tensor.dtype}; "
                             f"use --backend torch")
        return name

    def kernel_args(self, device) -> ProjectorArgs:
        """The kernels' packing of this projector, with its geometry on ``device`` (cached)."""
        device = torch.device(device)
        if self.vol_geom.n_voxels >= 2**31:
            raise InputError(f"--backend: the projector kernels index at most 2^31 - 1 voxels, the grid has "
                             f"{self.vol_geom.n_voxels}; use --backend torch")
        if device not in self._args:
            t = geometry_tensors(self.geom, device)
            vectors = torch.cat([t["src"], t["det"], t["u"], t["v"]], dim=1).contiguous()
            box = [float(v) for v in (*self.vol_geom.box_min, *self.vol_geom.size)]
            self._args[device] = ProjectorArgs(vectors, list(self.geom.det_shape), box, self.step,
                                               list(self.vol_geom.shape))
        return self._args[device]

    # ------------------------------------------------------------------ internals
    def _check_volume(self, volume: torch.Tensor):
        super()._check_volume(volume)
        if not volume.is_floating_point():
            raise InputError(f"projection: volume must be floating point, got {volume.dtype}")

    def _check_rays(self, flat_index: torch.Tensor, device) -> torch.Tensor:
        """Flat ray indices as a contiguous int64 tensor on ``device``; InputError when out of range."""
        flat_index = torch.as_tensor(flat_index)
        if flat_index.dim() != 1 or flat_index.is_floating_point() or flat_index.is_complex():
            raise InputError(f"projection: ray indices must be a 1-D integer tensor, got {flat_index.dtype} "
                             f"{tuple(flat_index.shape)}")
        n = self.geom.n_rays
        if flat_index.numel() and (int(flat_index.min()) < 0 or int(flat_index.max()) >= n):
            raise InputError(f"projection: ray indices must lie in [0, {n}), got "
                             f"[{int(flat_index.min())}, {int(flat_index.max())}]")
        return flat_index.to(device=device, dtype=torch.long).contiguous()
