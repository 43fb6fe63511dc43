"""Hash-grid encoding: torch reference, fused kernel (CPU/CUDA) and the public function.

:func:`hashgrid` is what fields call; ``backend`` 'torch' runs :func:`hashgrid_reference`,
'cpp' and 'cuda' the kernel of ``cuda/include/nfrecon/hashgrid.h`` on the tensors' device.
"""

from __future__ import annotations

import torch

from nfrecon.errors import InputError
from nfrecon.ops.backend import KERNEL_BACKENDS, check_kernel_limits, require_kernels
from nfrecon.ops.hashgrid.function import HashGridFunction, grid_spec
from nfrecon.ops.hashgrid.reference import PRIMES_ZYX, HashGridConfig, corner_rows_and_weights, hashgrid_reference

__all__ = ["PRIMES_ZYX", "HashGridConfig", "corner_rows_and_weights", "grid_spec", "hashgrid", "hashgrid_reference"]


def check_table(table: torch.Tensor, cfg: HashGridConfig, owner: str = "hash grid") -> None:
    """InputError unless ``table`` is a contiguous float32/float64 (rows, F) table of ``cfg``."""
    want = (cfg.offsets[-1], cfg.n_features_per_level)
    if tuple(table.shape) != want:
        raise InputError(f"{owner}: table has shape {tuple(table.shape)}, the config needs {want}")
    if table.dtype not in (torch.float32, torch.float64):
        raise InputError(f"{owner}: table must be float32 or float64, got {table.dtype}")
    if not table.is_contiguous():
        raise InputError(f"{owner}: table must be contiguous")


def hashgrid(points: torch.Tensor, table: torch.Tensor, cfg: HashGridConfig, backend: str = "torch") -> torch.Tensor:
    """Unit-cube points (..., 3), (z, y, x) -> features (..., L * F) of ``table`` (rows, F).

    The kernel backends compute in the table's dtype (points are cast to it) and need
    finite points on the table's device.
    """
    if points.shape[-1:] != (3,):
        raise InputError(f"hash grid: points must have shape (..., 3), got {tuple(points.shape)}")
    if backend not in KERNEL_BACKENDS:
        return hashgrid_reference(points, table, cfg)
    if not points.is_floating_point():
        raise InputError(f"hash grid: points must be floating point, got {points.dtype}")
    if points.device != table.device:
        raise InputError(f"hash grid: points are on {points.device}, the table on {table.device}")
    check_table(table, cfg)
    require_kernels(backend)
    check_kernel_limits(cfg.n_levels, cfg.n_output_dims)
    flat = points.reshape(-1, 3).to(table.dtype).contiguous()
    if not bool(torch.isfinite(flat).all()):
        raise InputError("hash grid: points must be finite (found NaN or Inf)")
    out = HashGridFunction.apply(flat, table, grid_spec(cfg))
    return out.reshape(*points.shape[:-1], cfg.n_output_dims)
