"""Neural fields: hash-grid encoding, MLPs, NAF and conditioned (CondCBNT) fields, a voxel field.

A field is a module called as ``field(points) -> mu`` with world points (..., 3) in mm,
(z, y, x) order, and mu (...) in 1/mm. These pure-PyTorch modules define the semantics
that GPU kernels must reproduce.
"""

from nfrecon.fields.base import BoxField, VoxelField, evaluate_grid, field_device_dtype
from nfrecon.fields.conditioned import Backbone, BackboneConfig, ConditionedField, ModulationConfig, ModulationField
from nfrecon.fields.hashgrid import HashGridConfig, HashGridEncoding
from nfrecon.fields.mlp import MLP, MLPConfig
from nfrecon.fields.naf import NAFField, NAFFieldConfig

__all__ = [
    "MLP",
    "Backbone",
    "BackboneConfig",
    "BoxField",
    "ConditionedField",
    "HashGridConfig",
    "HashGridEncoding",
    "MLPConfig",
    "ModulationConfig",
    "ModulationField",
    "NAFField",
    "NAFFieldConfig",
    "VoxelField",
    "evaluate_grid",
    "field_device_dtype",
]
