"""Helpers shared by the subcommands: tyro parsing and device choice."""

from __future__ import annotations

import tyro

from nfrecon.devices import resolve_device

__all__ = ["parse", "resolve_device"]


def parse(cls, argv: list[str], prog: str, description: str, default=None):
    """Parse ``argv`` into dataclass ``cls`` with tyro (``--help`` prints and exits 0)."""
    kwargs = {"default": default} if default is not None else {}
    return tyro.cli(cls, args=argv, prog=prog, description=description, **kwargs)
