"""Multiresolution hash-grid encoding (Instant-NGP, as used by NAF): the torch reference.

This module is the reference semantics of the fused kernels (``cuda/include/nfrecon/
hashgrid.h``, built for the CPU and for CUDA); every rule below is part of that contract.

Input: points ``(..., 3)`` in the unit cube, in nfrecon's (z, y, x) order. Coordinates
outside [0, 1] are clamped to it (the field is constant beyond the faces; the gradient
with respect to a clamped coordinate is zero). Output: ``(..., L * F)`` features, level
``l`` in columns ``[l * F, (l + 1) * F)``.

Levels. ``N_l = floor(N_min * b**l)`` for ``l = 0 .. L-1``, with ``b = per_level_scale``,
or, when ``finest_resolution`` is given, ``b = exp((ln N_max - ln N_min) / (L - 1))``;
the product is evaluated in float64 with a relative slack of 1e-9 so that exact powers
such as 16 * 2**3 are not lost to rounding. ``N_l`` counts *cells* per axis: level ``l``
has ``N_l + 1`` vertices per axis, vertex ``i`` at unit coordinate ``i / N_l`` (vertices
sit on both faces, 0 and 1, of the cube).

Interpolation. ``p = u * N_l``; the cell is ``c = min(floor(p), N_l - 1)`` per axis and
the fraction ``f = p - c`` (in [0, 1]; a point on a cell boundary has ``f = 0`` except
at u = 1, which is ``f = 1`` in the last cell). The features are the trilinear blend of
the 8 corner vertices ``c + (bz, by, bx)``, ``b* in {0, 1}``, with weights
``prod_d (f_d if b_d else 1 - f_d)``.

Table rows. One parameter ``table`` of shape ``(sum_l R_l, F)`` holds all levels; level
``l`` owns rows ``[offsets[l], offsets[l+1])``. A level is *dense* when its vertex count
``(N_l + 1)**3 <= 2**T``: it then owns exactly ``(N_l + 1)**3`` rows (no padding) and
vertex ``(k, j, i)`` (z, y, x) is row ``i + j * (N_l + 1) + k * (N_l + 1)**2``.
Otherwise the level is *hashed*: it owns ``2**T`` rows and vertex ``(k, j, i)`` is row
``(i * 1) xor (j * 2654435761) xor (k * 805459861)`` modulo ``2**T`` (unsigned integer
products; only their low T bits matter, so the result is the same in 32-bit or exact
arithmetic). x, the fastest-varying axis, gets the prime 1 (memory coherence), as in
Instant-NGP.

Initialisation: uniform in ``[-init_scale, init_scale]`` (Instant-NGP: 1e-4). The table
is float32 by default; the output has the table's dtype, while ``u * N_l`` is computed in
the dtype of the points (float32 points at fine levels localise to about 2**-24 * N_l of
a cell).

Memory: the corner rows (int32) and weights of all levels, ``L * 8 * (4 + 2 * itemsize)``
bytes per point (1.5 kB for L = 16 in float32), plus one level's temporaries; autograd
keeps about the same amount for backward.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from nfrecon.errors import InputError

PRIMES_ZYX = (805459861, 2654435761, 1)  # hash primes for the z, y and x vertex indices
_SLACK = 1e-9


@dataclass(frozen=True)
class HashGridConfig:
    """Hash-grid hyper-parameters (defaults: NAF's published encoder, see ``naf.py``).

    n_levels: L; n_features_per_level: F; log2_hashmap_size: T (rows per hashed level
    = 2**T); base_resolution: N_min cells per axis at level 0; per_level_scale: growth b
    between levels; finest_resolution: N_max cells at level L-1 (when set, b is derived
    from it and per_level_scale is ignored); init_scale: half-width of the uniform init.
    """

    n_levels: int = 16
    n_features_per_level: int = 2
    log2_hashmap_size: int = 19
    base_resolution: int = 16
    per_level_scale: float = 2.0
    finest_resolution: int | None = None
    init_scale: float = 1e-4

    def __post_init__(self):
        def need(ok: bool, field: str, what: str):
            if not ok:
                raise InputError(f"hash grid: {field} {what}, got {getattr(self, field)}")

        need(self.n_levels >= 1, "n_levels", "must be >= 1")
        need(self.n_features_per_level >= 1, "n_features_per_level", "must be >= 1")
        need(1 <= self.log2_hashmap_size <= 30, "log2_hashmap_size", "must be in [1, 30]")
        need(self.base_resolution >= 1, "base_resolution", "must be >= 1")
        need(math.isfinite(self.per_level_scale) and self.per_level_scale >= 1, "per_level_scale", "must be >= 1")
        if self.finest_resolution is not None:
            need(self.finest_resolution >= self.base_resolution, "finest_resolution", "must be >= base_resolution")
        need(self.init_scale >= 0, "init_scale", "must be >= 0")
        need(self.resolutions[-1] < 2**30, "base_resolution", "and per_level_scale give a level finer than 2**30 cells")
        need(sum(self.level_rows) < 2**31, "log2_hashmap_size", "and n_levels give a table of 2**31 rows or more")

    @property
    def growth(self) -> float:
        """The per-level scale b actually used."""
        if self.finest_resolution is None or self.n_levels == 1:
            return float(self.per_level_scale)
        return math.exp((math.log(self.finest_resolution) - math.log(self.base_resolution)) / (self.n_levels - 1))

    @property
    def resolutions(self) -> tuple[int, ...]:
        """Cells per axis N_l of each level (N_l + 1 vertices)."""
        b = self.growth
        return tuple(math.floor(self.base_resolution * b**level * (1 + _SLACK)) for level in range(self.n_levels))

    @property
    def dense(self) -> tuple[bool, ...]:
        """Whether each level is indexed densely (True) or hashed (False)."""
        return tuple((n + 1) ** 3 <= 2**self.log2_hashmap_size for n in self.resolutions)

    @property
    def level_rows(self) -> tuple[int, ...]:
        """Table rows owned by each level: (N_l + 1)**3 if dense, else 2**T."""
        return tuple((n + 1) ** 3 if d else 2**self.log2_hashmap_size for n, d in zip(self.resolutions, self.dense))

    @property
    def offsets(self) -> tuple[int, ...]:
        """First table row of each level, plus the total row count (L + 1 values)."""
        out = [0]
        for rows in self.level_rows:
            out.append(out[-1] + rows)
        return tuple(out)

    @property
    def n_output_dims(self) -> int:
        return self.n_levels * self.n_features_per_level

    @property
    def n_params(self) -> int:
        return self.offsets[-1] * self.n_features_per_level


def hashgrid_reference(points: torch.Tensor, table: torch.Tensor, cfg: HashGridConfig) -> torch.Tensor:
    """Unit-cube points (..., 3), (z, y, x) -> features (..., L * F), differentiable with
    respect to ``table`` (rows, F) and ``points``."""
    u = points.reshape(-1, 3).clamp(0.0, 1.0).T  # (3, M): per-axis rows vectorise well
    rows = torch.empty(cfg.n_levels, u.shape[1], 8, dtype=torch.int32, device=u.device)
    weights = []
    for level, (n, dense, offset) in enumerate(zip(cfg.resolutions, cfg.dense, cfg.offsets)):
        r, w = corner_rows_and_weights(u, n, dense, cfg.log2_hashmap_size)
        rows[level] = r.T + offset
        weights.append(w.T.to(table.dtype))
    # one gather over all levels (its backward builds a single dense table gradient);
    # bags are level-major: (L * M, 8) -> (L, M, F) -> (M, L * F)
    out = _WeightedGather.apply(table, rows.reshape(-1, 8), torch.stack(weights).reshape(-1, 8))
    out = out.reshape(cfg.n_levels, -1, cfg.n_features_per_level).transpose(0, 1)
    return out.reshape(*points.shape[:-1], cfg.n_output_dims)


def corner_rows_and_weights(u: torch.Tensor, n: int, dense: bool, log2_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Level-local table rows (8, M) int32 and trilinear weights (8, M) for unit points u (3, M).

    ``u`` rows are z, y, x; corner ``c = 4 * bz + 2 * by + bx``. The weights are
    differentiable with respect to ``u``.
    """
    pos = u * n
    cell = pos.detach().floor().clamp_(max=n - 1)
    frac = pos - cell  # (3, M); d frac / d u = n
    wz, wy, wx = torch.stack((1 - frac, frac), dim=1)  # each (2, M): weights of corner b = 0, 1
    weights = wz[:, None, None] * wy[None, :, None] * wx[None, None, :]
    vertex = cell.to(torch.int64)
    if dense:
        stride = torch.tensor([[(n + 1) ** 2], [n + 1], [1]], device=u.device)
        term = vertex * stride
        tz, ty, tx = torch.stack((term, term + stride), dim=1).to(torch.int32)  # each (2, M)
        rows = tz[:, None, None] + ty[None, :, None] + tx[None, None, :]
    else:
        mask = 2**log2_size - 1
        primes = torch.tensor([[p & mask] for p in PRIMES_ZYX], device=u.device)
        # low T bits of each product: all that survives the final modulo
        term = torch.stack((vertex * primes, (vertex + 1) * primes), dim=1) & mask
        tz, ty, tx = term.to(torch.int32)
        rows = tz[:, None, None] ^ ty[None, :, None] ^ tx[None, None, :]
    return rows.reshape(8, -1), weights.reshape(8, -1)


class _WeightedGather(torch.autograd.Function):
    """``out[m] = sum_c weights[m, c] * table[rows[m, c]]`` for rows (B, 8) -> out (B, F).

    Backward: the table gradient scatter-adds ``weights * grad`` into the touched rows
    (a weighted bincount over table elements: the fastest scatter-add on the CPU);
    the weight gradient is ``<table[rows], grad>`` (only when the weights need it).
    """

    @staticmethod
    def forward(ctx, table: torch.Tensor, rows: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(table, rows, weights)
        return F.embedding_bag(rows, table, mode="sum", per_sample_weights=weights)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        table, rows, weights = ctx.saved_tensors
        n_rows, n_feat = table.shape
        flat = rows.reshape(-1).long()
        grad_table = grad_weights = None
        if ctx.needs_input_grad[0]:
            contrib = weights[..., None] * grad[:, None, :]  # (B, 8, F)
            element = (flat[:, None] * n_feat + torch.arange(n_feat, device=flat.device)).reshape(-1)
            grad_table = torch.bincount(element, contrib.reshape(-1), minlength=n_rows * n_feat)
            grad_table = grad_table.reshape(n_rows, n_feat).to(table.dtype)
        if ctx.needs_input_grad[2]:
            grad_weights = (table.index_select(0, flat).reshape(*rows.shape, -1) * grad[:, None, :]).sum(-1)
        return grad_table, None, grad_weights
