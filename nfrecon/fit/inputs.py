"""The scan a fit or a pretraining run reads: a scan file, or the built-in phantom.

A scan file is nfrecon's HDF5 (docs/scan-format.md, :func:`nfrecon.data.scan.load_scan`) or
a NAF ``.pickle``; without a file the built-in 3D Shepp-Logan phantom is simulated on the
protocol 'small' (64^3 voxels, 50 noisy views over 205 deg). Volumes are ``[z, y, x]`` mu
in 1/mm.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from nfrecon.data.naf_pickle import load_naf_pickle
from nfrecon.data.resample import resample
from nfrecon.data.scan import Scan, load_scan
from nfrecon.geometry.protocols import get_protocol
from nfrecon.simulate import phantom_scan

PHANTOM_PROTOCOL = "small"
NAF_SUFFIXES = (".pickle", ".pkl")


def builtin_phantom_scan(seed: int = 0) -> Scan:
    """The default scan: 3D Shepp-Logan, protocol 'small' (64^3, 50 noisy views over 205 deg)."""
    protocol = get_protocol(PHANTOM_PROTOCOL)
    return phantom_scan(
        protocol.cone_geometry(),
        protocol.volume_geometry(),
        radius_mm=150.0,
        mu_water=protocol.mu_water,
        photons=protocol.photons,
        seed=seed,
        metadata={"source": "built-in Shepp-Logan phantom", "protocol": protocol.to_dict()},
    )


def read_scan(path: Path | None, seed: int = 0) -> Scan:
    """A scan file (nfrecon HDF5 or NAF .pickle), or the built-in phantom when ``path`` is None."""
    if path is None:
        return builtin_phantom_scan(seed)
    if Path(path).suffix.lower() in NAF_SUFFIXES:
        return load_naf_pickle(path)
    return load_scan(path)


def recon_ground_truth(scan: Scan) -> np.ndarray | None:
    """The scan's ground truth on its recon grid ([z, y, x] mu, 1/mm; resampled when it lives
    on another grid), or None when the scan has none."""
    if scan.gt is None:
        return None
    if scan.gt_geom == scan.recon_geom:
        return scan.gt
    return resample(scan.gt, scan.gt_geom, scan.recon_geom)
