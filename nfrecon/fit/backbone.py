"""The file format of a pretrained CondCBNT backbone (``backbone.pt``).

Written by ``nfrecon pretrain``, read by ``nfrecon fit --method condcbnt``: a checkpoint dict
(:mod:`nfrecon.fit.checkpoint`, weights only, checksummed) with ``kind: "backbone"``, the
backbone and modulation configs, ``mu_max`` (1/mm), the backbone's state dict, the
pretraining step, the number of training scans, the real CTs behind them
(``training_cts``: name, sha256, number of scans) and the CTs held out of them
(``held_out_cts``: name, sha256, scans left out; see :mod:`nfrecon.data.sources`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nfrecon
from nfrecon.configio import from_dict, to_dict
from nfrecon.errors import InputError
from nfrecon.fields.conditioned import Backbone, BackboneConfig, ModulationConfig
from nfrecon.fit.checkpoint import (
    CHECKPOINT_FORMAT,
    load_checkpoint,
    require_kind,
    require_same_config,
    save_checkpoint,
    state_must_fit,
)

BACKBONE_KIND = "backbone"


@dataclass
class BackboneFile:
    """The contents of a backbone.pt."""

    backbone: BackboneConfig
    modulation: ModulationConfig
    """The modulation sizes used in pretraining (test-time fits default to them)."""
    mu_max: float
    state: dict
    step: int
    n_scans: int
    training_cts: list[dict]
    held_out_cts: list[dict]

    def trained_on(self, sha256: str | None) -> dict | None:
        """The training_cts record of the CT with this digest (None: not among them, or no digest)."""
        return next((c for c in self.training_cts if sha256 is not None and c["sha256"] == sha256), None)


def save_backbone(path: str | Path, backbone: Backbone, modulation: ModulationConfig, step: int, n_scans: int,
                  training_cts: list[dict], held_out_cts: list[dict]) -> None:
    """Write backbone weights, configs and mu_max to ``path`` atomically (weights-only loadable)."""
    save_checkpoint(path, {
        "format": CHECKPOINT_FORMAT,
        "kind": BACKBONE_KIND,
        "software": f"nfrecon {nfrecon.__version__}",
        "config": to_dict(backbone.cfg),
        "modulation_config": to_dict(modulation),
        "mu_max": float(backbone.mu_max),
        "state": {k: v.detach().cpu() for k, v in backbone.state_dict().items()},
        "step": int(step),
        "n_scans": int(n_scans),
        "training_cts": list(training_cts),
        "held_out_cts": list(held_out_cts),
    })


def read_backbone(path: str | Path) -> BackboneFile:
    """Read a backbone.pt; InputError naming the file when it is missing, corrupt or something else."""
    state = load_checkpoint(path)
    require_kind(path, state, BACKBONE_KIND, "a pretrained backbone",
                 "; pass the backbone.pt written by 'nfrecon pretrain'")
    try:
        return BackboneFile(
            backbone=from_dict(BackboneConfig, state["config"], f"{path}: config"),
            modulation=from_dict(ModulationConfig, state["modulation_config"], f"{path}: modulation_config"),
            mu_max=float(state["mu_max"]), state=state["state"], step=int(state["step"]), n_scans=int(state["n_scans"]),
            training_cts=list(state["training_cts"]), held_out_cts=list(state["held_out_cts"]),
        )
    except KeyError as exc:
        raise InputError(f"{path}: incomplete backbone file (no {exc.args[0]!r})") from exc


def load_backbone(path: str | Path, expected: BackboneConfig | None = None) -> tuple[Backbone, BackboneFile]:
    """The pretrained backbone in ``path`` and the file's record; with ``expected``, its config
    must equal that one (InputError naming the first differing key, as ``condcbnt.backbone.<key>``)."""
    file = read_backbone(path)
    if expected is not None:
        require_same_config(path, to_dict(file.backbone), to_dict(expected),
                            "the backbone was pretrained with another config", prefix="condcbnt.backbone.")
    backbone = Backbone(file.backbone, file.mu_max)
    with state_must_fit(path, "the weights do not fit the stored config"):
        backbone.load_state_dict(file.state)
    return backbone, file
