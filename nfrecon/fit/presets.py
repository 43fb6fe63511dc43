"""Presets: named YAML files in ``configs/`` that set fit and pretraining options.

A preset file is a mapping of FitConfig keys (``method``, ``steps``, ``field``, ``sampling``,
...), plus three keys of its own, all optional:

- ``description``: one line, listed by ``nfrecon fit --help`` and ``nfrecon pretrain --help``;
- ``extends: OTHER``: the preset is OTHER's mapping with its own keys laid over it, recursively;
- ``pretrain``: PretrainConfig keys, read by ``nfrecon pretrain`` only (which also takes the
  model sizes from ``condcbnt.backbone``/``condcbnt.modulation`` and the ``sampling`` section).

Two names are not files: ``auto`` is the published configuration of a method on a GPU and its
``-fast`` variant on a CPU; ``none`` keeps the dataclass defaults.

A config is built in layers, each over the one before: the dataclass defaults, the preset,
(``fit --method condcbnt`` only) the backbone and modulation sizes stored in the backbone file,
a ``--config`` YAML (e.g. an earlier run's ``config.yaml``), then the command-line flags, which
the CLI's parser lays over the result of :func:`fit_config` / :func:`pretrain_config`. The few
options that choose layers are read from the command line first, by :func:`layer_choices`.

The folder is ``nfrecon/configs`` in an installed wheel, ``configs/`` in a checkout (see
``nfrecon/resources.py``).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from nfrecon.configio import load_yaml, merge, to_dict
from nfrecon.errors import InputError
from nfrecon.fit.backbone import read_backbone
from nfrecon.fit.config import FitConfig, PretrainConfig
from nfrecon.resources import package_data

CONFIG_DIR = package_data("configs", "*.yaml")

# the preset a command takes without --preset
DEFAULT_PRESET = "auto"

# the options whose values choose the layers, hence must be known before the parser runs
LAYER_OPTIONS = ("preset", "config", "method", "backbone", "device")


def names() -> list[str]:
    """The preset files, by name (without ``auto`` and ``none``)."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def path(name: str) -> Path:
    return CONFIG_DIR / f"{name}.yaml"


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


def _read(name: str) -> dict:
    if not path(name).is_file():
        raise InputError(f"--preset: unknown preset {name!r}; known: auto, none, {', '.join(names())}")
    return load_yaml(path(name))


def load(name: str, _chain: tuple[str, ...] = ()) -> dict:
    """The option mapping of preset ``name``, ``extends:`` resolved and ``description`` left out."""
    data = _read(name)
    data.pop("description", None)
    parent = data.pop("extends", None)
    if parent is None:
        return data
    if parent in (*_chain, name):
        raise InputError(f"{path(name)}: 'extends: {parent}' makes a cycle ({' -> '.join((*_chain, name, parent))})")
    return overlay(load(str(parent), (*_chain, name)), data)


def description(name: str) -> str:
    """The one-line ``description`` of preset ``name`` ('' when it has none; not inherited)."""
    return " ".join(str(_read(name).get("description", "")).split())


def pretraining_names() -> list[str]:
    """The presets that configure CondCBNT (a ``condcbnt`` or ``pretrain`` section, inherited
    ones included): the ones ``nfrecon pretrain`` lists."""
    return [n for n in names() if {"condcbnt", "pretrain"} & set(load(n))]


def layer_choices(argv: Sequence[str], options: Iterable[str] = LAYER_OPTIONS) -> dict[str, str]:
    """The values that ``argv`` gives the ``options`` that choose layers, as ``--NAME VALUE`` or
    ``--NAME=VALUE`` (the last one wins, as in the parser). Options not given are left out, so
    that the builders below take the dataclass defaults; nothing is checked here (the parser
    checks every option when it reads ``argv`` in full)."""
    flags = {f"--{name}": name for name in options}
    found = {}
    for i, arg in enumerate(argv):
        flag, eq, value = arg.partition("=")
        if flag in flags and (eq or i + 1 < len(argv)):
            found[flags[flag]] = value if eq else argv[i + 1]
    return found


@dataclass(frozen=True)
class Layered:
    """A config built in layers, and the preset file it took (``auto`` resolved; None for 'none')."""

    config: FitConfig | PretrainConfig
    preset: str | None

    @property
    def preset_name(self) -> str:
        """The preset as a run reports it: its file's name, or 'none'."""
        return self.preset or "none"


def fit_config(preset: str = DEFAULT_PRESET, config: str | os.PathLike | None = None, device: str | None = None,
               method: str | None = None, backbone: str | os.PathLike | None = None) -> Layered:
    """The FitConfig of the layers below the command-line flags: defaults < preset < (condcbnt)
    the sizes stored in the backbone file < the ``config`` YAML. ``device``/``method``/``backbone``:
    the command-line values, if given (else the config YAML's, else the defaults); they choose
    what ``auto`` stands for and which backbone file is read."""
    cfg = FitConfig()
    extra = load_yaml(config) if config is not None else {}
    device = device or extra.get("device") or cfg.device
    name = resolve(preset, device, method or extra.get("method") or cfg.method)
    if name is not None:
        data = load(name)
        data.pop("pretrain", None)  # read by 'nfrecon pretrain' only
        cfg = merge(cfg, data, str(path(name)))
    backbone = backbone or extra.get("backbone") or cfg.backbone
    if (method or extra.get("method") or cfg.method) == "condcbnt" and backbone is not None:
        file = read_backbone(backbone)
        sizes = {"condcbnt": {"backbone": to_dict(file.backbone), "modulation": to_dict(file.modulation)}}
        cfg = merge(cfg, sizes, str(backbone))
    if config is not None:
        cfg = merge(cfg, extra, str(config))
    return Layered(cfg, name)


def pretrain_overrides(name: str) -> dict:
    """The pretraining settings of preset ``name``: model and sampling from its fit sections,
    then its ``pretrain`` section."""
    data = load(name)
    cc = data.get("condcbnt", {})
    out = {"model": {k: cc[k] for k in ("backbone", "modulation") if k in cc}}
    if "sampling" in data:
        out["sampling"] = data["sampling"]
    return overlay(out, data.get("pretrain", {}))


def pretrain_config(preset: str = DEFAULT_PRESET, config: str | os.PathLike | None = None,
                    device: str | None = None) -> Layered:
    """The PretrainConfig of the layers below the command-line flags: defaults < preset (see
    :func:`pretrain_overrides`) < the ``config`` YAML. ``device``: the command-line value, if
    given (else the config YAML's, else the default); it chooses what ``auto`` stands for."""
    cfg = PretrainConfig()
    extra = load_yaml(config) if config is not None else {}
    name = resolve(preset, device or extra.get("device") or cfg.device, "condcbnt")
    if name is not None:
        cfg = merge(cfg, pretrain_overrides(name), str(path(name)))
    if config is not None:
        cfg = merge(cfg, extra, str(config))
    return Layered(cfg, name)
