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
from nfrecon.fields.base import use_backend
from nfrecon.fields.conditioned import ConditionedField, ModulationField
from nfrecon.fields.naf import NAFField
from nfrecon.fit.backbone import load_backbone
from nfrecon.fit.config import FitConfig
from nfrecon.fit.loop import FitResult, FitRun
from nfrecon.fsutil import check_output_dir
from nfrecon.geometry.protocols import get_protocol
from nfrecon.geometry.rays import pixel_rays, ray_box
from nfrecon.ops.backend import resolve_backend
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


def mean_attenuation(scan: Scan, max_rays: int = 65536) -> float:
    """Mean mu (1/mm) along the rays: sum of line integrals / sum of chord lengths in the box."""
    step = max(1, scan.geom.n_rays // max_rays)
    idx = torch.arange(0, scan.geom.n_rays, step)
    o, d = pixel_rays(scan.geom, idx, dtype=torch.float64)
    t_near, t_far = ray_box(o, d, scan.recon_geom.box_min, scan.recon_geom.box_max)
    chord = float((t_far - t_near).clamp(min=0).sum())
    total = float(np.clip(scan.projections.reshape(-1)[idx.numpy()], 0, None).sum())
    return total / chord if chord > 0 else 0.0


def build_field(cfg: FitConfig, scan: Scan, mu_max: float) -> torch.nn.Module:
    """A fresh NAF field on the scan's grid, starting near the scan's mean attenuation."""
    field = NAFField(cfg.field, scan.recon_geom, mu_max)
    if cfg.field.mlp.out_activation == "sigmoid":
        field.start_near(mean_attenuation(scan))
    return field


def build_conditioned(cfg: FitConfig, scan: Scan) -> tuple[ConditionedField, list[dict]]:
    """A fresh modulation field over the pretrained backbone of ``cfg.backbone``, and Adam's
    parameter groups: the modulation at --optim.lr, the backbone (frozen unless
    condcbnt.unfreeze_after > 0) at condcbnt.backbone_lr from that step on."""
    if cfg.backbone is None:
        raise InputError("--backbone: method condcbnt needs a pretrained backbone (backbone.pt from 'nfrecon pretrain')")
    cc = cfg.condcbnt
    backbone = load_backbone(cfg.backbone, expected=cc.backbone)
    if cfg.mu_max > 0 and not np.isclose(cfg.mu_max, float(backbone.mu_max), rtol=1e-6):
        raise InputError(f"--mu-max: condcbnt uses the backbone's range {float(backbone.mu_max):.6g}/mm, got {cfg.mu_max}; "
                         f"leave it at 0")
    modulation = ModulationField(cc.modulation, backbone.film_widths)
    groups = [{"params": list(modulation.parameters()), "lr": cfg.optim.lr}]
    backbone.requires_grad_(False)
    if cc.unfreeze_after > 0:
        groups.append({"params": list(backbone.parameters()), "lr": cc.backbone_lr, "start_step": cc.unfreeze_after})
    return ConditionedField(backbone, modulation, scan.recon_geom), groups


def prepare_run_folder(out: Path, resume: bool, overwrite: bool) -> None:
    """Refuse an output folder that cannot be written, or that holds an earlier run unless
    asked to resume it or start over (before any work)."""
    check_output_dir(out)
    ckpt = out / "checkpoint.pt"
    if resume and not ckpt.is_file():
        raise InputError(f"{ckpt}: nothing to resume (no checkpoint in {out})")
    if not resume and ckpt.is_file() and not overwrite:
        raise InputError(f"{out}: holds a run already (checkpoint.pt); use --resume to continue it or --overwrite to start over")


def run_fit(cfg: FitConfig, scan: Scan | None = None, *, resume: bool = False, overwrite: bool = False,
            on_step=None) -> FitResult:
    """Fit the field of ``cfg`` to ``scan`` (default: read ``cfg.scan``, or simulate the
    built-in phantom); outputs land in ``cfg.out``.

    ``on_step(run)`` is called after every step with the :class:`FitRun` (e.g. to record
    quality over time in benchmarks).
    """
    if cfg.method == "condcbnt" and cfg.backbone is None:
        raise InputError("--backbone: method condcbnt needs a pretrained backbone (backbone.pt from 'nfrecon pretrain')")
    out = Path(cfg.out)
    prepare_run_folder(out, resume, overwrite)
    device = resolve_device(cfg.device)
    backend = resolve_backend(cfg.backend, device)
    if scan is None:
        scan = read_scan(cfg.scan, cfg.seed)
    scan.require_recon_grid(cfg.scan or "built-in phantom")
    torch.manual_seed(cfg.seed)
    if cfg.method == "condcbnt":
        model, groups = build_conditioned(cfg, scan)
    else:
        model, groups = build_field(cfg, scan, cfg.mu_max if cfg.mu_max > 0 else estimate_mu_max(scan)), None
    use_backend(model, backend)
    run = FitRun(model, scan, cfg, device, param_groups=groups)
    out.mkdir(parents=True, exist_ok=True)
    dump_yaml(cfg, out / "config.yaml")
    return run.run(resume=resume, on_step=on_step)
