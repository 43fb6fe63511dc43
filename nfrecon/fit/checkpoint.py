"""Checkpoints: written atomically, loaded with ``weights_only=True`` (no arbitrary code).

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts: the step,
model and optimiser state, RNG state, and the config that made it (to refuse resuming a
run with a different model).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from nfrecon.errors import InputError
from nfrecon.fsutil import atomic_path


def save_checkpoint(path: str | os.PathLike, state: dict) -> None:
    """Write ``state`` to ``path`` atomically (temporary file, fsync, rename)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Read a checkpoint written by :func:`save_checkpoint`; clear errors for bad files."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt files
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{path}: corrupt or unreadable checkpoint ({reason[:200]})") from exc
    if not isinstance(state, dict) or state.get("format") != "nfrecon-checkpoint":
        raise InputError(f"{path}: not an nfrecon checkpoint")
    return state


def config_mismatches(saved: dict, current: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested config dicts."""
    out = []
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key, "<missing>"), current.get(key, "<missing>")
        name = f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_mismatches(a, b, name + ".")
        elif a != b:
            out.append(f"{name}={a!r} in the checkpoint, {b!r} now")
    return out
