"""The projector as the learned methods see it: dimensionless, the same for every grid of a protocol.

A network takes volumes in units of ``MU_SCALE`` (1/mm, water at about 60 keV: a volume of
water is 1) and projections in units of ``MU_SCALE * extent`` (extent: the largest side of
the reconstruction box, mm), so that a chord through water across the box is about 1:

- ``A_n(x) = A(x * MU_SCALE) / (MU_SCALE * extent)``: projections of a normalised volume,
  the same numbers whatever the voxel size of the grid;
- ``A_n^T(y) = A^T(y) / (extent * c)``, with ``c`` chosen once per scan so that
  ``A_n^T A_n 1`` averages 1 over the voxels the views see: the exact adjoint of ``A_n``
  up to that positive constant, which keeps the backprojected dual variables of order one
  for any number of views and voxels.

Volumes are [z, y, x], projections [view, v, u] (DESIGN.md §2).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from nfrecon.data.scan import Scan
from nfrecon.errors import InputError
from nfrecon.geometry.cone import ConeGeometry
from nfrecon.geometry.volume import VolumeGeometry
from nfrecon.ops.projector import VoxelProjector
from nfrecon.recon.fdk import fdk

MU_SCALE = 0.0206
"""1/mm: the unit of the networks' volumes (mu of water at about 60 keV)."""


@dataclass
class ScanOperator:
    """``A_n``, ``A_n^T`` (module docstring) of one scan on ``device``, its normalised measured
    line integrals ``g`` (views, v, u) and its normalised FDK volume ``fdk`` (nz, ny, nx)."""

    projector: VoxelProjector
    proj_scale: float
    back_scale: float
    g: torch.Tensor
    fdk: torch.Tensor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """A_n x: (nz, ny, nx) normalised volume -> (views, v, u) normalised line integrals."""
        return self.projector(x) * (MU_SCALE / self.proj_scale)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """The scaled adjoint A_n^T y: (views, v, u) -> (nz, ny, nx)."""
        return self.projector.adjoint(y) * self.back_scale


def scan_operator(geom: ConeGeometry, vol_geom: VolumeGeometry, projections, device: torch.device,
                  backend: str = "auto") -> ScanOperator:
    """The normalised operator of a scan with line integrals ``projections`` (views, v, u)."""
    projector = VoxelProjector(vol_geom, geom, backend=backend)
    extent = float(np.max(vol_geom.size))
    proj_scale = MU_SCALE * extent
    proj = torch.as_tensor(np.asarray(projections, dtype=np.float32), device=device)
    with torch.no_grad():
        ones = torch.ones(vol_geom.shape, dtype=torch.float32, device=device)
        normal = projector.adjoint(projector(ones) * (MU_SCALE / proj_scale)) / extent
        seen = normal > 1e-3 * float(normal.max())
        if not bool(seen.any()):
            raise InputError("learned reconstruction: no voxel of the grid is seen by the views")
        back_scale = 1.0 / (extent * float(normal[seen].mean()))
        volume = fdk(proj, geom, vol_geom, backend=backend) / MU_SCALE
    return ScanOperator(projector, proj_scale, back_scale, proj / proj_scale, volume.float())


def operator_of_scan(scan: Scan, device: torch.device, backend: str = "auto") -> ScanOperator:
    """:func:`scan_operator` of a scan on its reconstruction grid."""
    return scan_operator(scan.geom, scan.recon_geom, scan.projections, device, backend)
