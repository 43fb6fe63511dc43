"""Entry point of per-scan fitting: load (or simulate) the scan, build the field, run the loop."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from nfrecon.configio import dump_yaml
from nfrecon.data.naf_pickle import load_naf_pickle
from nfrecon.data.scan import Scan, load_scan
from nfrecon.devices import resolve_device
from nfrecon.errors import InputError
from nfrecon.fields.naf import NAFField
from nfrecon.fit.config import FitConfig
from nfrecon.fit.loop import FitResult, FitRun
from nfrecon.geometry.protocols import get_protocol
from nfrecon.recon.fdk import fdk
from nfrecon.simulate import phantom_scan

PHANTOM_PROTOCOL = "small"


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
    if Path(path).suffix.lower() in (".pickle", ".pkl"):
        return load_naf_pickle(path)
    return load_scan(path)


def estimate_mu_max(scan: Scan, margin: float = 1.25) -> float:
    """Upper end of the attenuation range (1/mm) for the field's sigmoid output.

    From an FDK of the scan on a coarse (<= 64^3) version of the recon grid: ``margin``
    times its 99.9th percentile. For non-circular geometries: ``margin`` times the
    largest line integral divided by the shortest chord through the box that carries it.
    """
    grid = scan.recon_geom
    if scan.geom.is_circular():
        coarse = grid.with_shape(tuple(min(n, 64) for n in grid.shape))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            vol = fdk(scan.projections, scan.geom, coarse).numpy()
        value = float(np.percentile(vol, 99.9))
    else:
        value = float(scan.projections.max()) / float(min(grid.size))
    if not np.isfinite(value) or value <= 0:
        raise InputError("cannot estimate the attenuation range of this scan; pass --mu-max")
    return margin * value


def build_field(cfg: FitConfig, scan: Scan, mu_max: float) -> torch.nn.Module:
    return NAFField(cfg.field, scan.recon_geom, mu_max)


def prepare_run_folder(out: Path, resume: bool, overwrite: bool) -> None:
    """Refuse to clobber an earlier run unless asked to resume it or start over."""
    ckpt = out / "checkpoint.pt"
    if resume and not ckpt.is_file():
        raise InputError(f"{ckpt}: nothing to resume (no checkpoint in {out})")
    if not resume and ckpt.is_file() and not overwrite:
        raise InputError(f"{out}: holds a run already (checkpoint.pt); use --resume to continue it or --overwrite to start over")


def run_fit(cfg: FitConfig, resume: bool = False, overwrite: bool = False) -> tuple[FitResult, Scan]:
    """Fit the field of ``cfg`` to its scan; outputs land in ``cfg.out``."""
    if cfg.steps < 1:
        raise InputError(f"--steps must be >= 1, got {cfg.steps}")
    out = Path(cfg.out)
    prepare_run_folder(out, resume, overwrite)
    device = resolve_device(cfg.device)
    scan = read_scan(cfg.scan, cfg.seed)
    if scan.recon_geom is None:
        raise InputError(f"{cfg.scan}: the scan has no reconstruction grid (recon_geometry); add one to the file")
    mu_max = cfg.mu_max if cfg.mu_max > 0 else estimate_mu_max(scan)
    torch.manual_seed(cfg.seed)
    model = build_field(cfg, scan, mu_max)
    run = FitRun(model, scan, cfg, device)
    out.mkdir(parents=True, exist_ok=True)
    dump_yaml(cfg, out / "config.yaml")
    return run.run(resume=resume), scan
