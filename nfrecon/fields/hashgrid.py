"""The hash-grid encoding as a module: the table parameter and the backend that evaluates it.

The indexing, hash, interpolation, initialisation and memory are specified in
:mod:`nfrecon.ops.hashgrid.reference` (the torch reference that the fused kernels are
tested against); :class:`HashGridConfig` is defined there and re-exported here.
"""

from __future__ import annotations

import torch
from torch import nn

from nfrecon.ops.hashgrid import HashGridConfig, hashgrid
from nfrecon.ops.hashgrid.tcnn import tcnn_encoding

__all__ = ["HashGridConfig", "HashGridEncoding"]


class HashGridEncoding(nn.Module):
    """Unit-cube points (..., 3) in (z, y, x) order -> features (..., L * F).

    ``table`` is the single (rows, F) parameter of all levels; ``cfg.offsets`` locates each
    level in it. ``backend`` ('torch', 'cpp', 'cuda' or 'tcnn', see :mod:`nfrecon.ops.backend`)
    chooses the implementation. 'tcnn' adds tiny-cuda-nn's own encoding (submodule ``tcnn``,
    its own parameters and indexing) and uses it instead of ``table``.
    """

    def __init__(self, cfg: HashGridConfig, backend: str = "torch"):
        super().__init__()
        self.cfg = cfg
        self.table = nn.Parameter(torch.empty(cfg.offsets[-1], cfg.n_features_per_level))
        self.reset_parameters()
        self.backend = backend

    @property
    def backend(self) -> str:
        return self._backend

    @backend.setter
    def backend(self, name: str) -> None:
        if name == "tcnn" and not hasattr(self, "tcnn"):
            self.tcnn = tcnn_encoding(self.cfg).to(self.table.device)
        self._backend = name

    def reset_parameters(self):
        with torch.no_grad():
            self.table.uniform_(-self.cfg.init_scale, self.cfg.init_scale)

    @property
    def n_output_dims(self) -> int:
        return self.cfg.n_output_dims

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        if self.backend == "tcnn":
            out = self.tcnn(points.reshape(-1, 3).clamp(0.0, 1.0)).to(self.table.dtype)
            return out.reshape(*points.shape[:-1], self.cfg.n_output_dims)
        return hashgrid(points, self.table, self.cfg, self.backend)
