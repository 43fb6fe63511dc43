"""Choosing the torch device from a user-facing name; checking that a job fits in memory."""

from __future__ import annotations

import os

import torch

from nfrecon.errors import InputError


def resolve_device(name: str) -> torch.device:
    """'auto' -> CUDA when available, else CPU; 'cpu', 'cuda', 'cuda:N' are checked."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise InputError(f"--device: unknown device {name!r}") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {name}: CUDA is not available on this machine")
    return device


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation (Linux MemAvailable; else the physical
    memory; None when unknown)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def require_memory(nbytes: float, what: str, hint: str) -> None:
    """InputError when ``nbytes`` (an estimate, before allocating) exceed the available
    memory; ``what`` says what needs it and ``hint`` which option makes it smaller."""
    free = available_memory()
    if free is not None and nbytes > free:
        raise InputError(f"{what} needs about {nbytes / 2**30:.3g} GiB of memory, this machine has "
                         f"{free / 2**30:.3g} GiB available; {hint}")
