"""Neural fields: hash-grid encoding, MLPs, the NAF field and a voxel field (pure PyTorch).

A field is a module called as ``field(points) -> mu`` with world points (..., 3) in mm,
(z, y, x) order, and mu (...) in 1/mm. These modules define the semantics that the CUDA
kernels reproduce.
"""

from nfrecon.fields.hashgrid import HashGridConfig, HashGridEncoding
from nfrecon.fields.mlp import MLP, MLPConfig
from nfrecon.fields.naf import NAFField, NAFFieldConfig, VoxelField, evaluate_grid, field_device_dtype

__all__ = [
    "HashGridConfig",
    "HashGridEncoding",
    "MLP",
    "MLPConfig",
    "NAFField",
    "NAFFieldConfig",
    "VoxelField",
    "evaluate_grid",
    "field_device_dtype",
]
