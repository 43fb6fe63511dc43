"""tiny-cuda-nn's HashGrid encoding behind our hash-grid config (the optional 'tcnn' backend).

Unverified on our machines: ``tinycudann`` cannot be installed here (it needs a CUDA
toolkit and GPU at build time). Its encoding has the same levels, features, table size,
base resolution and growth as ours, but not our indexing: tcnn offsets vertices by half a
cell, uses its own hash and dense-level rule, and keeps its own parameters (float16 by
default), so a 'tcnn' field is a different field of the same size, not a faster copy of
the reference. Its parity test (tests/test_backend.py) runs where it is importable.
"""

from __future__ import annotations

import torch
from torch import nn

from nfrecon.ops.hashgrid.reference import HashGridConfig


def tcnn_config(cfg: HashGridConfig) -> dict:
    """The tcnn encoding config of our hash-grid config."""
    return {
        "otype": "HashGrid",
        "n_levels": cfg.n_levels,
        "n_features_per_level": cfg.n_features_per_level,
        "log2_hashmap_size": cfg.log2_hashmap_size,
        "base_resolution": cfg.base_resolution,
        "per_level_scale": cfg.growth,
    }


def tcnn_encoding(cfg: HashGridConfig) -> nn.Module:
    """A tcnn HashGrid module: unit-cube points (M, 3) -> (M, L * F) features (tcnn's dtype)."""
    import tinycudann

    return tinycudann.Encoding(3, tcnn_config(cfg), dtype=torch.float32)
