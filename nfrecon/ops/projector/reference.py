"""Voxel projector, torch reference: cone-beam forward projection and its exact adjoint.

The semantics every backend of :class:`nfrecon.ops.projector.VoxelProjector` is tested
against (the kernels of ``cuda/include/nfrecon/projector.h`` compute the same map).

The volume is read as a continuous function on its box: the trilinear interpolant of the
voxel values at the voxel centres, held constant from the outermost centres to the box
faces, and zero outside the box. A uniform volume is therefore a uniform box, and its
line integrals are exactly mu times the chord length.

The forward projection integrates that function along each pixel's ray with the midpoint
rule: the chord inside the box is cut into ``ceil(length / step)`` equal bins (step in
mm, default half the smallest voxel). The backprojection is the exact transpose of that
linear map (same samples, same weights), so ``<A x, y> == <x, A^T y>`` to rounding.
Both are autograd functions, each the other's backward, so they can be differentiated
any number of times.

Memory: rays are processed in chunks of at most ``chunk_samples`` samples; each sample
costs about 48 bytes of temporaries, so the default 2**22 samples bound the working
memory to about 200 MB on top of the volume and projection arrays.

Repeated calls (iterative solvers) reuse the sample positions and weights of every chunk
when all of them fit in ``cache_bytes`` (16 bytes per sample, per device and dtype; the
default 64 MiB holds 4M samples, e.g. a 32^3 grid seen by 30 views of 32^2 pixels): the
ray geometry is then computed once instead of on every call (30% faster A and A^T at
16^3 and 10 views of 16^2; larger problems recompute it, as before).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from nfrecon.errors import InputError
from nfrecon.geometry.cone import ConeGeometry
from nfrecon.geometry.rays import geometry_tensors, packed_step_samples, pixel_rays, ray_box
from nfrecon.geometry.volume import VolumeGeometry

_BILINEAR, _BORDER = 0, 1  # grid_sampler enum values: interpolation and padding modes


class ReferenceProjector:
    """Forward projector ``A`` and backprojector ``A^T`` for one volume grid and geometry (torch).

    ``A(volume)`` maps a (nz, ny, nx) tensor of mu (1/mm) to line integrals
    (views, rows, cols); ``A.T(proj)`` maps back. Tensors may live on any device.
    """

    def __init__(
        self,
        vol_geom: VolumeGeometry,
        geom: ConeGeometry,
        step_mm: float | None = None,
        chunk_samples: int = 2**22,
        cache_bytes: int = 2**26,
    ):
        self.vol_geom = vol_geom
        self.geom = geom
        self.step = float(step_mm) if step_mm is not None else 0.5 * min(vol_geom.voxel_size)
        if not self.step > 0:
            raise InputError(f"projector: step_mm must be positive, got {step_mm}")
        diag = float(np.linalg.norm(vol_geom.size))
        self._max_samples = math.ceil(diag / self.step) + 1
        self.rays_per_chunk = max(1, int(chunk_samples) // self._max_samples)
        self._tensors: dict[torch.device, dict[str, torch.Tensor]] = {}
        self._cache: dict[tuple, list[tuple[int, torch.Tensor, torch.Tensor]]] = {}
        self.cache_bytes = int(cache_bytes)
        self._box_lo = vol_geom.box_min
        self._box_size = vol_geom.size

    # ------------------------------------------------------------------ public API
    def __call__(self, volume: torch.Tensor) -> torch.Tensor:
        return self.forward(volume)

    def forward(self, volume: torch.Tensor) -> torch.Tensor:
        """Line integrals (views, rows, cols) of ``volume`` (nz, ny, nx), differentiable."""
        self._check_volume(volume)
        return _Project.apply(volume, self)

    def adjoint(self, proj: torch.Tensor) -> torch.Tensor:
        """Backprojection ``A^T proj`` -> (nz, ny, nx), the exact transpose of ``forward``."""
        if tuple(proj.shape) != self.geom.proj_shape:
            raise InputError(f"backprojection: projections have shape {tuple(proj.shape)}, "
                             f"geometry expects {self.geom.proj_shape}")
        return _Backproject.apply(proj, self)

    @property
    def T(self):
        return self.adjoint

    def project_rays(self, volume: torch.Tensor, flat_index: torch.Tensor) -> torch.Tensor:
        """Line integrals (R,) of the rays with the given flat indices into the stack.

        Not hooked into autograd's adjoint; used to compare renderers ray by ray.
        """
        self._check_volume(volume)
        return self._project_rays(volume, flat_index.to(volume.device))

    def adjoint_rays(self, values: torch.Tensor, flat_index: torch.Tensor) -> torch.Tensor:
        """The transpose of :meth:`project_rays`: values (R,) of those rays -> (nz, ny, nx)."""
        return self._adjoint_rays(values, flat_index.to(values.device))

    def _project_rays(self, volume: torch.Tensor, flat_index: torch.Tensor) -> torch.Tensor:
        return self._integrate(volume, self._index_chunks(flat_index, volume.dtype), flat_index.shape[0])

    def _adjoint_rays(self, values: torch.Tensor, flat_index: torch.Tensor) -> torch.Tensor:
        acc = torch.zeros(self.vol_geom.shape, dtype=values.dtype, device=values.device)
        for a, chunk in self._index_chunks(flat_index, values.dtype):
            chunk.spread(values[a : a + chunk.n_rays], acc)
        return acc

    # ------------------------------------------------------------------ internals
    def _check_volume(self, volume: torch.Tensor):
        if tuple(volume.shape) != self.vol_geom.shape:
            raise InputError(f"projection: volume has shape {tuple(volume.shape)}, "
                             f"geometry expects {self.vol_geom.shape}")

    def _geometry(self, device) -> dict[str, torch.Tensor]:
        device = torch.device(device)
        if device not in self._tensors:
            self._tensors[device] = geometry_tensors(self.geom, device)
        return self._tensors[device]

    def _chunk(self, flat_index: torch.Tensor, dtype) -> _Chunk:
        """The samples of the rays ``flat_index``, packed (no padding past a ray's exit).

        Rays and box intersections are computed in float64; the per-sample arithmetic runs
        in ``dtype`` on box-normalised origins and directions.
        """
        device = flat_index.device
        o, d = pixel_rays(self.geom, flat_index, self._geometry(device), dtype=torch.float64)
        t_near, t_far = ray_box(o, d, self._box_lo, self._box_lo + self._box_size)
        ray, t, dt = packed_step_samples(t_near, t_far, self.step)
        lo = torch.as_tensor(self._box_lo, dtype=torch.float64, device=device)
        scale = 2.0 / torch.as_tensor(self._box_size, dtype=torch.float64, device=device)
        o_unit = ((o - lo) * scale - 1).flip(-1).to(dtype)
        d_unit = (d * scale).flip(-1).to(dtype)
        grid = torch.addcmul(o_unit[ray], t.to(dtype)[:, None], d_unit[ray])
        return _Chunk(len(dt), ray, grid, dt.to(dtype)[ray], _batches(device))

    def _index_chunks(self, flat_index: torch.Tensor, dtype):
        step = self.rays_per_chunk
        for a in range(0, flat_index.shape[0], step):
            yield a, self._chunk(flat_index[a : a + step], dtype)

    def _ray_chunks(self, device):
        n = self.geom.n_rays
        for a in range(0, n, self.rays_per_chunk):
            yield a, torch.arange(a, min(a + self.rays_per_chunk, n), device=device)

    def _samples(self, device, dtype):
        """(first ray, chunk) for the whole stack; cached when all chunks fit in ``cache_bytes``."""
        key = (torch.device(device), dtype)
        if key in self._cache:
            yield from self._cache[key]
            return
        kept, size = [], 0
        for a, idx in self._ray_chunks(device):
            chunk = self._chunk(idx, dtype)
            size += chunk.nbytes
            if size <= self.cache_bytes:
                kept.append((a, chunk))
            yield a, chunk
        if size <= self.cache_bytes:
            self._cache[key] = kept

    def _integrate(self, volume: torch.Tensor, chunks, n: int) -> torch.Tensor:
        out = torch.zeros(n, dtype=volume.dtype, device=volume.device)
        for a, chunk in chunks:
            out[a : a + chunk.n_rays] = chunk.integrate(volume)
        return out

    def _forward(self, volume: torch.Tensor) -> torch.Tensor:
        out = self._integrate(volume, self._samples(volume.device, volume.dtype), self.geom.n_rays)
        return out.reshape(self.geom.proj_shape)

    def _adjoint(self, proj: torch.Tensor) -> torch.Tensor:
        flat = proj.reshape(-1)
        acc = torch.zeros(self.vol_geom.shape, dtype=proj.dtype, device=proj.device)
        for a, chunk in self._samples(proj.device, proj.dtype):
            chunk.spread(flat[a : a + chunk.n_rays], acc)
        return acc


def _batches(device: torch.device) -> int:
    """grid_sample parallelises over its batch dimension on the CPU: one batch per thread."""
    return 1 if device.type == "cuda" else max(1, torch.get_num_threads())


class _Chunk:
    """Packed samples of a run of rays: sample ``s`` lies on local ray ``ray[s]`` at grid
    position ``grid[s]`` (grid_sample's [-1, 1], x, y, z) with bin length ``weight[s]`` mm.

    The samples are split into ``batches`` equal parts (zero-weight padding at the end) that
    grid_sample processes in parallel.
    """

    def __init__(self, n_rays: int, ray: torch.Tensor, grid: torch.Tensor, weight: torch.Tensor, batches: int):
        self.n_rays = n_rays
        self.n_samples = len(ray)
        per = -(-max(self.n_samples, 1) // batches)
        self.pad = per * batches - self.n_samples
        self.batches = batches
        self.ray = ray
        self.weight = weight
        self.grid = F.pad(grid, (0, 0, 0, self.pad)).reshape(batches, 1, 1, per, 3)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.ray, self.grid, self.weight))

    def integrate(self, volume: torch.Tensor) -> torch.Tensor:
        """Line integrals (n_rays,) of ``volume``."""
        vol = volume[None, None].expand(self.batches, -1, -1, -1, -1)
        values = F.grid_sample(vol, self.grid, mode="bilinear", padding_mode="border", align_corners=False)
        values = values.reshape(-1)[: self.n_samples] * self.weight
        return torch.zeros(self.n_rays, dtype=volume.dtype, device=volume.device).index_add_(0, self.ray, values)

    def spread(self, values: torch.Tensor, acc: torch.Tensor) -> None:
        """acc += the transpose of :meth:`integrate` applied to ``values`` (n_rays,)."""
        g = F.pad(values[self.ray] * self.weight, (0, self.pad)).reshape(self.batches, 1, 1, 1, -1)
        like = acc[None, None].expand(self.batches, -1, -1, -1, -1)
        grad, _ = torch.ops.aten.grid_sampler_3d_backward(
            g, like, self.grid, _BILINEAR, _BORDER, False, [True, False]
        )
        acc += grad.sum(0)[0]


class _Project(torch.autograd.Function):
    @staticmethod
    def forward(ctx, volume, op):
        ctx.op = op
        return op._forward(volume.detach())

    @staticmethod
    def backward(ctx, grad):
        return _Backproject.apply(grad.contiguous(), ctx.op), None


class _Backproject(torch.autograd.Function):
    @staticmethod
    def forward(ctx, proj, op):
        ctx.op = op
        return op._adjoint(proj.detach())

    @staticmethod
    def backward(ctx, grad):
        return _Project.apply(grad.contiguous(), ctx.op), None
