"""Presets: named YAML files in ``configs/`` that set fit and pretraining options.

Options are applied in order: the dataclass defaults, then the preset, then a ``--config``
YAML (e.g. an earlier run's ``config.yaml``), then command-line flags. The preset ``auto``
is the published configuration of a method on a GPU and its ``-fast`` variant on a CPU;
``none`` keeps the defaults.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from nfrecon.configio import load_yaml
from nfrecon.errors import InputError

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"


def names() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def resolve(name: str, device: str, method: str) -> str | None:
    """The preset file that ``name`` stands for (None for 'none')."""
    if name == "none":
        return None
    if name == "auto":
        cuda = torch.cuda.is_available() and device != "cpu"
        return method + ("" if cuda else "-fast")
    return name


def overlay(base: dict, data: dict) -> dict:
    """``base`` with the keys of ``data`` replaced, recursing into mappings."""
    out = dict(base)
    for key, value in data.items():
        out[key] = overlay(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def load(name: str, _chain: tuple[str, ...] = ()) -> dict:
    """The YAML mapping of preset ``name``; a preset with ``extends: OTHER`` is OTHER's
    mapping with its own keys laid over it."""
    path = CONFIG_DIR / f"{name}.yaml"
    if not path.is_file():
        raise InputError(f"--preset: unknown preset {name!r}; known: auto, none, {', '.join(names())}")
    data = load_yaml(path)
    parent = data.pop("extends", None)
    if parent is None:
        return data
    if parent in (*_chain, name):
        raise InputError(f"{path}: 'extends: {parent}' makes a cycle ({' -> '.join((*_chain, name, parent))})")
    return overlay(load(str(parent), (*_chain, name)), data)


@dataclass
class RunOptions:
    """How a run starts: preset, extra config, resume or start over."""

    preset: str = "auto"
    """Preset from configs/ (see above), or 'none' for the built-in defaults."""
    config: Optional[Path] = None
    """YAML config (e.g. an earlier run's config.yaml) applied over the preset."""
    resume: bool = False
    """Continue the run in --out from its checkpoint (bit for bit)."""
    overwrite: bool = False
    """Start over in an --out that holds an earlier run."""
