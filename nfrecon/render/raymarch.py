"""Differentiable ray marching: predicted line integrals of a field along detector rays.

A field is any callable mapping world points (..., 3), (z, y, x) mm, to mu (...) in
1/mm. For each selected detector pixel the ray from the source through the pixel centre
is clipped to the volume box and cut into ``n_samples`` equal bins; the predicted line
integral is ``sum(mu(t_k) * dt)`` with one sample per bin, at a uniformly random position
in its bin when jittered (stratified sampling: an unbiased estimate of the integral) or
at the bin midpoint otherwise.

A field whose ``fused_march`` is a callable ``(geometry, rays, offsets) -> (R,)`` (the NAF
field) renders itself in one op; it receives the same jitter draws the generic path would use, so both paths
give the same line integrals for the same generator state.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from nfrecon.geometry.cone import ConeGeometry
from nfrecon.geometry.rays import pixel_rays, ray_box, stratified_offsets, stratified_samples
from nfrecon.geometry.volume import VolumeGeometry
from nfrecon.ops.naf_march import MarchGeometry

Field = Callable[[torch.Tensor], torch.Tensor]


class RayMarcher:
    """Line integrals of a field for rays addressed by flat index into a [view, v, u] stack."""

    def __init__(self, geom: ConeGeometry, vol_geom: VolumeGeometry, n_samples: int, device=None):
        if int(n_samples) < 1:
            raise ValueError("n_samples must be >= 1")
        self.geom = geom
        self.vol_geom = vol_geom
        self.n_samples = int(n_samples)
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.march_geom = MarchGeometry.make(geom, vol_geom, self.n_samples, self.device)

    def samples(
        self, flat_index: torch.Tensor, jitter: bool = True, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sample points (R, N, 3) world mm and bin lengths dt (R, 1) mm for the given rays."""
        o, d = pixel_rays(self.geom, flat_index.to(self.device), self.march_geom.tensors, dtype=torch.float32)
        t_near, t_far = ray_box(o, d, self.vol_geom.box_min, self.vol_geom.box_max)
        t, dt = stratified_samples(t_near, t_far, self.n_samples, jitter=jitter, generator=generator)
        return o[:, None, :] + t[..., None] * d[:, None, :], dt

    def __call__(
        self,
        field: Field,
        flat_index: torch.Tensor,
        jitter: bool = True,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Predicted line integrals (R,) of ``field`` along the rays ``flat_index`` (R,)."""
        march = getattr(field, "fused_march", None)
        if march is not None:
            rays = flat_index.to(self.device)
            offsets = None
            if jitter:
                offsets = stratified_offsets(len(rays), self.n_samples, True, generator, self.device, torch.float32)
            return march(self.march_geom, rays, offsets)
        points, dt = self.samples(flat_index, jitter, generator)
        mu = field(points)
        return (mu * dt).sum(dim=-1)
