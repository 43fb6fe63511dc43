"""The file of a trained learned reconstructor (``model.pt``) and the protocol it serves.

A checkpoint dict (:mod:`nfrecon.fit.checkpoint`: weights only, checksummed, finite) with
``kind: "learned-model"``, ``method`` (lpd, unet), ``network`` (the sizes, LpdConfig or
UNetConfig as a dict), ``protocol`` (:func:`protocol_signature` of the training scans),
``state`` (weights), ``step``, ``val_loss``, ``training_cts`` and ``held_out_cts`` (as in a
backbone.pt). A network is trained for one protocol and grid: a scan whose signature differs
(views, detector, distances, arc, grid shape or voxel size, beyond 0.1 %) is refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch import nn

import nfrecon
from nfrecon.configio import from_dict, to_dict
from nfrecon.errors import InputError
from nfrecon.fit.checkpoint import CHECKPOINT_FORMAT, load_checkpoint, require_kind, save_checkpoint, state_must_fit
from nfrecon.geometry.cone import ConeGeometry
from nfrecon.geometry.volume import VolumeGeometry
from nfrecon.learned.config import LpdConfig, UNetConfig
from nfrecon.learned.networks import LearnedPrimalDual, UNet3d

MODEL_KIND = "learned-model"
_RTOL = 1e-3


def protocol_signature(geom: ConeGeometry, vol_geom: VolumeGeometry) -> dict:
    """What a learned network depends on: views, detector shape and pixel size (mm), mean
    source-isocentre and source-detector distances (mm), arc (deg), grid shape, voxel size (mm)."""
    return {"views": int(geom.n_views), "detector": [int(n) for n in geom.det_shape],
            "pixel_mm": [float(p) for p in geom.pixel_size], "sod_mm": float(np.mean(geom.sod_to())),
            "sdd_mm": float(np.mean(geom.sdd)), "arc_deg": float(geom.arc_deg()),
            "grid": [int(n) for n in vol_geom.shape], "voxel_mm": [float(v) for v in vol_geom.voxel_size]}


def signature_difference(expected: dict, found: dict) -> str | None:
    """'<key> <expected> in the model, <found> in the scan' for the first key that differs."""
    for key, want in expected.items():
        got = found.get(key)
        same = got is not None and np.shape(want) == np.shape(got) and np.allclose(want, got, rtol=_RTOL, atol=0)
        if not same:
            return f"{key} {want} in the model, {got} in the scan"
    return None


def build_network(method: str, network: LpdConfig | UNetConfig) -> nn.Module:
    """A fresh network of ``method`` with the given sizes."""
    if method == "lpd":
        return LearnedPrimalDual(network.iterations, network.primal_channels, network.dual_channels, network.width,
                                 network.memory_saving)
    return UNet3d(network.widths)


@dataclass
class ModelFile:
    """A loaded model.pt: the network (weights in place) and the file's record."""

    path: Path
    method: str
    network: nn.Module
    protocol: dict
    record: dict

    def require_protocol(self, geom: ConeGeometry, vol_geom: VolumeGeometry, source) -> None:
        """InputError naming both files when the scan is not of the model's protocol and grid."""
        diff = signature_difference(self.protocol, protocol_signature(geom, vol_geom))
        if diff:
            raise InputError(f"{self.path}: the model was trained for another protocol or grid than {source} ({diff})")


def save_model(path: str | Path, method: str, network_cfg, network: nn.Module, protocol: dict, **record) -> None:
    """Write model.pt atomically (weights-only loadable); ``record``: step, val_loss, CTs, ..."""
    save_checkpoint(path, {
        "format": CHECKPOINT_FORMAT, "kind": MODEL_KIND, "software": f"nfrecon {nfrecon.__version__}",
        "method": method, "network": to_dict(network_cfg), "protocol": protocol,
        "state": {k: v.detach().cpu() for k, v in network.state_dict().items()}, **record,
    })


def load_model(path: str | Path) -> ModelFile:
    """Read and verify a model.pt (``weights_only`` load, checksum); InputError naming the file."""
    state = load_checkpoint(path)
    require_kind(path, state, MODEL_KIND, "a learned model", "; pass the model.pt written by 'nfrecon train-learned'")
    try:
        method = state["method"]
        if method not in ("lpd", "unet"):
            raise InputError(f"{path}: unknown learned method {method!r}")
        cfg = from_dict(LpdConfig if method == "lpd" else UNetConfig, state["network"], f"{path}: network")
        network = build_network(method, cfg)
        with state_must_fit(path, "the weights do not fit the stored network sizes"):
            network.load_state_dict(state["state"])
        record = {k: v for k, v in state.items() if k not in ("state", "format", "kind")}
        return ModelFile(Path(path), method, network.eval(), dict(state["protocol"]), record)
    except KeyError as exc:
        raise InputError(f"{path}: incomplete model file (no {exc.args[0]!r})") from exc
