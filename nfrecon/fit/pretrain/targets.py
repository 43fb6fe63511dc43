"""The two training targets of pretraining: one object per scan, giving the loss of a step.

- :class:`ProjectionTarget` (``--data projections``, the paper's setting): ``rays_per_step``
  detector rays of the scan drawn by :class:`~nfrecon.fit.sampling.RaySource` (all views are
  training views), rendered through the conditioned field by
  :class:`~nfrecon.render.raymarch.RayMarcher` (``n_samples`` jittered samples per ray);
  the loss is the MSE between predicted and measured line integrals (dimensionless).
- :class:`VoxelTarget` (``--data voxels``): ``points_per_step`` voxels of the scan's recon
  grid drawn uniformly with replacement; the loss is the MSE between the field's mu at
  their centres and the ground truth (resampled onto the recon grid), in (1/mm)^2.

Measured values (flat projections ``[view, v, u]`` or flat ground truth ``[z, y, x]``,
float32) stay on the CPU; only a step's draws go to the device. Random draws use the
trainer's generators (``gen`` on the CPU, ``jitter_gen`` on the device), which it reseeds
every step.
"""

from __future__ import annotations

import numpy as np
import torch

from nfrecon.data.scan import Scan
from nfrecon.fit.config import PretrainConfig, SamplingConfig
from nfrecon.fit.inputs import recon_ground_truth
from nfrecon.fit.sampling import RaySource
from nfrecon.render.raymarch import RayMarcher


class ProjectionTarget:
    """Rays through one scan's views; MSE on line integrals."""

    def __init__(self, scan: Scan, sampling: SamplingConfig, device: torch.device, gen: torch.Generator,
                 jitter_gen: torch.Generator):
        self.device, self.jitter_gen = device, jitter_gen
        self.marcher = RayMarcher(scan.geom, scan.recon_geom, sampling.n_samples, device)
        self.rays = RaySource(scan, np.arange(scan.geom.n_views), sampling, gen)
        self.values = torch.as_tensor(scan.projections, dtype=torch.float32).reshape(-1)

    def loss(self, field: torch.nn.Module) -> torch.Tensor:
        idx = self.rays.draw()
        pred = self.marcher(field, idx.to(self.device), jitter=True, generator=self.jitter_gen)
        return ((pred - self.values[idx].to(self.device)) ** 2).mean()


class VoxelTarget:
    """Random voxel centres of one scan's recon grid; MSE on mu against the ground truth."""

    def __init__(self, scan: Scan, points_per_step: int, device: torch.device, gen: torch.Generator):
        self.geom, self.n, self.device, self.gen = scan.recon_geom, points_per_step, device, gen
        self.values = torch.as_tensor(np.asarray(recon_ground_truth(scan)), dtype=torch.float32).reshape(-1)

    def loss(self, field: torch.nn.Module) -> torch.Tensor:
        idx = torch.randint(self.geom.n_voxels, (self.n,), generator=self.gen)
        pred = field(self.geom.voxel_centers_at(idx).to(device=self.device, dtype=torch.float32))
        return ((pred - self.values[idx].to(self.device)) ** 2).mean()


def make_target(cfg: PretrainConfig, scan: Scan, device: torch.device, gen: torch.Generator,
                jitter_gen: torch.Generator) -> ProjectionTarget | VoxelTarget:
    """The target of ``cfg.data`` for ``scan``."""
    if cfg.data == "projections":
        return ProjectionTarget(scan, cfg.sampling, device, gen, jitter_gen)
    return VoxelTarget(scan, cfg.points_per_step, device, gen)


def per_step(cfg: PretrainConfig) -> tuple[str, int]:
    """What a step draws per process, and how many: ('rays', rays_per_step) or ('points', points_per_step)."""
    if cfg.data == "projections":
        return "rays", cfg.sampling.rays_per_step
    return "points", cfg.points_per_step
