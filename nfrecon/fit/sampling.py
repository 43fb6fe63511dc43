"""Which detector rays a training step uses, and which are held out.

A ray is named by its flat index into the projection stack ``[view, v, u]``:
``(view * nv + v) * nu + u``. Draws come from a CPU ``torch.Generator`` that the caller
owns (and seeds, saves and restores), so a run's rays are reproducible and resumable.
"""

from __future__ import annotations

import numpy as np
import torch

from nfrecon.data.scan import Scan
from nfrecon.fit.config import SamplingConfig

# offset of the held-out subset's generator from the run's seed (any fixed number would do)
HOLDOUT_SEED_OFFSET = 7919


class RaySource:
    """Draws training ray indices (flat into the projection stack) from a CPU generator."""

    def __init__(self, scan: Scan, train_views: np.ndarray, sampling: SamplingConfig, generator: torch.Generator):
        nv, nu = scan.geom.det_shape
        self.per_view = nv * nu
        self.views = torch.as_tensor(train_views, dtype=torch.long)
        self.cfg = sampling
        self.gen = generator

    def draw(self) -> torch.Tensor:
        n = self.cfg.rays_per_step
        if self.cfg.mode == "view":
            view = self.views[torch.randint(len(self.views), (1,), generator=self.gen)]
            pix = torch.randint(self.per_view, (n,), generator=self.gen)
            return view * self.per_view + pix
        views = self.views[torch.randint(len(self.views), (n,), generator=self.gen)]
        return views * self.per_view + torch.randint(self.per_view, (n,), generator=self.gen)


def holdout_rays(scan: Scan, hold_views: np.ndarray, n_rays: int, seed: int) -> torch.Tensor:
    """The held-out rays evaluated for stopping: every ray of ``hold_views``, or a fixed random
    subset of ``n_rays`` of them (sorted; drawn from ``seed``) when there are more."""
    nv, nu = scan.geom.det_shape
    all_rays = (torch.as_tensor(hold_views)[:, None] * (nv * nu) + torch.arange(nv * nu)[None]).reshape(-1)
    if n_rays <= 0 or len(all_rays) <= n_rays:
        return all_rays
    pick = torch.randperm(len(all_rays), generator=torch.Generator().manual_seed(seed + HOLDOUT_SEED_OFFSET))[:n_rays]
    return all_rays[pick.sort().values]
