"""The fresh model of a per-scan fit, and Adam's parameter groups for it.

Method 'naf': a NAF field (hash grid + MLP) on the scan's recon grid, its sigmoid range
``[0, mu_max]`` 1/mm, starting near the scan's mean attenuation. Method 'condcbnt': a
fresh modulation field over the pretrained backbone of ``--backbone`` (its config must be
``condcbnt.backbone``, its mu_max is the range; a warning when the scan's CT was among the
backbone's training CTs); the backbone is frozen, or fitted at
``condcbnt.backbone_lr`` from step ``condcbnt.unfreeze_after`` on (a ``start_step`` group,
see :class:`~nfrecon.fit.loop.FitRun`). Both map the scan's box to the field's unit cube.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from nfrecon.data.scan import Scan
from nfrecon.data.sources import source_sha256
from nfrecon.errors import InputError
from nfrecon.fields.conditioned import ConditionedField, ModulationField
from nfrecon.fields.naf import NAFField
from nfrecon.fit.backbone import load_backbone
from nfrecon.fit.config import FitConfig
from nfrecon.fit.scan_stats import estimate_mu_max, mean_attenuation


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
    cc = cfg.condcbnt
    backbone, file = load_backbone(cfg.require_backbone(), expected=cc.backbone)
    seen = file.trained_on(source_sha256(scan.metadata))
    if seen is not None:
        warnings.warn(f"--backbone {cfg.backbone}: it was pretrained on {seen['scans']} scan(s) made from this "
                      f"scan's CT ({seen['name']}), so this fit is not a held-out test (pretrain with "
                      f"--exclude-ct for one)", stacklevel=2)
    if cfg.mu_max > 0 and not np.isclose(cfg.mu_max, float(backbone.mu_max), rtol=1e-6):
        raise InputError(f"--mu-max: condcbnt uses the backbone's range {float(backbone.mu_max):.6g}/mm, "
                         f"got {cfg.mu_max}; leave it at 0")
    modulation = ModulationField(cc.modulation, backbone.film_widths)
    groups = [{"params": list(modulation.parameters()), "lr": cfg.optim.lr}]
    backbone.requires_grad_(False)
    if cc.unfreeze_after > 0:
        groups.append({"params": list(backbone.parameters()), "lr": cc.backbone_lr, "start_step": cc.unfreeze_after})
    return ConditionedField(backbone, modulation, scan.recon_geom), groups


def build_model(cfg: FitConfig, scan: Scan) -> tuple[torch.nn.Module, list[dict] | None]:
    """The model of ``cfg.method`` for ``scan`` and its parameter groups (None: all parameters
    at --optim.lr); a NAF field's range is --mu-max, or estimated from the scan when 0."""
    if cfg.method == "condcbnt":
        return build_conditioned(cfg, scan)
    return build_field(cfg, scan, cfg.mu_max if cfg.mu_max > 0 else estimate_mu_max(scan)), None
