"""Reconstruction of one scan by a trained learned model (``nfrecon recon``, the bench rows)."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from nfrecon.data.scan import Scan
from nfrecon.learned.modelfile import ModelFile
from nfrecon.learned.operator import MU_SCALE, operator_of_scan


@dataclass
class LearnedRecon:
    """The volume (mu, 1/mm, [z, y, x] on the scan's recon grid) and the seconds it took:
    ``setup_seconds`` (operator scaling and FDK) and ``network_seconds``."""

    volume: np.ndarray
    setup_seconds: float
    network_seconds: float


def reconstruct_learned(model: ModelFile, scan: Scan, device: torch.device, backend: str = "auto",
                        source="the scan") -> LearnedRecon:
    """Run ``model`` on ``scan`` (refused unless the scan is of the model's protocol and grid)."""
    vol_geom = scan.require_recon_grid(source)
    model.require_protocol(scan.geom, vol_geom, source)
    t0 = time.perf_counter()
    op = operator_of_scan(scan, device, backend)
    t1 = time.perf_counter()
    net = model.network.to(device).eval()
    with torch.no_grad():
        volume = (net(op) * MU_SCALE).cpu().numpy()
    return LearnedRecon(volume, t1 - t0, time.perf_counter() - t1)
