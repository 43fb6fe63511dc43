"""Checkpoints: written atomically, verified by a checksum, loaded with ``weights_only=True``.

A checkpoint is a plain dict of tensors, numbers, strings, lists, tuples and dicts: the
step, model and optimiser state, RNG state, and the config that made it (to refuse resuming
a run with a different model). ``checksum`` holds the SHA-256 of everything else, taken over
a canonical encoding of the dict (keys sorted; each tensor as its dtype, shape and raw
bytes), so a file damaged after it was written (flipped bytes that still unpickle) is
refused rather than resumed. Floating-point tensors must be finite both when a checkpoint is
written (a diverged state never replaces a good checkpoint) and when it is read. Files
without a checksum (written by nfrecon before it had one) load with a warning.

Every checkpoint dict carries ``format: CHECKPOINT_FORMAT``; all but a fit's also carry a
``kind`` (``backbone``, ``pretrain``, ``modulation``, ``dump``). Reading one back goes through
the same three checks: :func:`require_kind`, :func:`require_same_config` and
:func:`state_must_fit` (the weights and optimiser states fit the model built now).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import struct
import warnings
from pathlib import Path

import torch

from nfrecon.errors import InputError, first_of
from nfrecon.fsutil import atomic_path

CHECKPOINT_FORMAT = "nfrecon-checkpoint"
"""The ``format`` tag of every checkpoint dict (runs, pretraining, modulations, backbones)."""
FIT_KIND = "fit"
"""The kind of a fit's checkpoint.pt, which stores no ``kind`` entry."""
CHECKSUM_KEY = "checksum"
# torch's message on refused pickles advises loading with weights_only=False, which would run
# the file's code: the lines of its message that mention weights_only or torch.load are dropped.
_ADVICE = ("weights only", "weights_only", "torch.load")


def _encode(obj, h, where: str) -> None:
    """Feed a canonical, type-tagged encoding of ``obj`` into the hash ``h``."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous().reshape(-1)
        h.update(f"T{t.dtype}{tuple(obj.shape)}".encode())
        h.update(t.view(torch.uint8).numpy() if t.numel() else b"")
    elif isinstance(obj, dict):
        items = sorted(obj.items(), key=lambda kv: (type(kv[0]).__name__, repr(kv[0])))
        h.update(b"D" + struct.pack("<q", len(items)))
        for key, value in items:
            _encode(key, h, where)
            _encode(value, h, f"{where}.{key}" if where else str(key))
    elif isinstance(obj, (list, tuple)):
        h.update((b"L" if isinstance(obj, list) else b"U") + struct.pack("<q", len(obj)))
        for i, value in enumerate(obj):
            _encode(value, h, f"{where}[{i}]")
    elif isinstance(obj, str):
        data = obj.encode("utf-8", "surrogatepass")
        h.update(b"S" + struct.pack("<q", len(data)) + data)
    elif obj is None or isinstance(obj, (bool, int, float)):
        h.update(f"{type(obj).__name__}:{obj!r};".encode())
    else:
        raise TypeError(f"checkpoint entry {where or '<root>'}: cannot store a {type(obj).__name__}")


def payload_checksum(state: dict) -> str:
    """SHA-256 (hex) of ``state`` without its ``checksum`` entry."""
    h = hashlib.sha256()
    _encode({k: v for k, v in state.items() if k != CHECKSUM_KEY}, h, "")
    return h.hexdigest()


def non_finite_entries(obj, where: str = "") -> list[str]:
    """Dotted names of the floating-point tensors in ``obj`` that hold NaN or Inf."""
    if isinstance(obj, torch.Tensor):
        bad = (obj.is_floating_point() or obj.is_complex()) and not bool(torch.isfinite(obj).all())
        return [where or "<root>"] if bad else []
    if isinstance(obj, dict):
        return [n for k, v in obj.items() for n in non_finite_entries(v, f"{where}.{k}" if where else str(k))]
    if isinstance(obj, (list, tuple)):
        return [n for i, v in enumerate(obj) for n in non_finite_entries(v, f"{where}[{i}]")]
    return []


def save_checkpoint(path: str | os.PathLike, state: dict) -> None:
    """Write ``state`` with its checksum to ``path`` atomically (temporary file, fsync, rename).

    A state with a non-finite tensor is refused (RuntimeError) and ``path`` is left as it was.
    """
    bad = non_finite_entries(state)
    if bad:
        raise RuntimeError(f"{path}: refusing to write a checkpoint with NaN/Inf in {first_of(bad)}; "
                           "the previous one is kept")
    state = {**state, CHECKSUM_KEY: payload_checksum(state)}
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())


def _reason(exc: Exception) -> str:
    """First line of a loader's message, without torch's advice to disable weights_only."""
    lines = [ln.strip() for ln in str(exc).splitlines()]
    kept = [ln for ln in lines if ln and not any(a in ln.lower() for a in _ADVICE)]
    return kept[0][:200] if kept else type(exc).__name__


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Read a checkpoint written by :func:`save_checkpoint`; InputError naming the file when it
    is missing, unreadable, not a checkpoint, damaged (checksum) or holds NaN/Inf."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt files
        if "weights only load failed" in str(exc).lower() and "global" in str(exc).lower():
            raise InputError(f"{path}: refused: the file holds Python objects other than tensors and plain data "
                             f"({_reason(exc)}); nfrecon never loads such files") from exc
        raise InputError(f"{path}: corrupt or unreadable checkpoint ({_reason(exc)})") from exc
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise InputError(f"{path}: not an nfrecon checkpoint")
    stored = state.pop(CHECKSUM_KEY, None)
    if stored is None:
        warnings.warn(f"{path}: the checkpoint has no checksum (written by an older nfrecon); it is not verified",
                      stacklevel=2)
    else:
        try:
            actual = payload_checksum(state)
        except TypeError as exc:
            raise InputError(f"{path}: corrupt checkpoint ({exc})") from exc
        if actual != stored:
            raise InputError(f"{path}: corrupt checkpoint (checksum mismatch: the file changed after it was written)")
    bad = non_finite_entries(state)
    if bad:
        raise InputError(f"{path}: corrupt checkpoint: {first_of(bad, 'tensors')} holds NaN or Inf")
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


def require_same_config(path: str | os.PathLike, saved: dict, current: dict,
                        what: str = "checkpoint was made with another config", prefix: str = "") -> None:
    """InputError ``<path>: <what>: <first differing key> (and N more)`` unless the two config
    dicts agree (see :func:`config_mismatches`)."""
    diff = config_mismatches(saved, current, prefix)
    if diff:
        raise InputError(f"{path}: {what}: {first_of(diff)}")


def require_kind(path: str | os.PathLike, state: dict, kind: str, what: str, advice: str = "") -> None:
    """InputError ``<path>: not <what> (kind ...)<advice>`` unless the checkpoint is of ``kind``."""
    found = state.get("kind", FIT_KIND)
    if found != kind:
        raise InputError(f"{path}: not {what} (kind {found!r}){advice}")


@contextlib.contextmanager
def state_must_fit(path: str | os.PathLike, what: str):
    """Around ``load_state_dict`` calls: a state that does not fit (wrong keys or shapes, a
    missing entry) becomes InputError ``<path>: <what> (<first line of the reason>)``."""
    try:
        yield
    except (RuntimeError, ValueError, KeyError) as exc:
        reason = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
        raise InputError(f"{path}: {what} ({reason})") from exc
