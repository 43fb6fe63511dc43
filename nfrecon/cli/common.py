"""Helpers shared by the subcommands: tyro parsing and device choice."""

from __future__ import annotations

import contextlib
import io
import sys

import tyro

from nfrecon.devices import resolve_device
from nfrecon.errors import InputError, recording_input_errors

__all__ = ["parse", "resolve_device"]


def parse(cls, argv: list[str], prog: str, description: str, default=None):
    """Parse ``argv`` into dataclass ``cls`` with tyro (``--help`` prints and exits 0).

    A config's own check (``__post_init__``) that refuses a value raises its InputError
    (one line, exit 2 in the CLI) instead of tyro's boxed report of it.
    """
    kwargs = {"default": default} if default is not None else {}
    errors, replaced = io.StringIO(), False
    with recording_input_errors() as refused:
        try:
            with contextlib.redirect_stderr(errors):
                return tyro.cli(cls, args=argv, prog=prog, description=description, **kwargs)
        except SystemExit as exc:
            replaced = exc.code == 2 and bool(refused)
            if replaced:
                raise InputError(str(refused[-1])) from None
            raise
        finally:
            if not replaced:
                sys.stderr.write(errors.getvalue())
