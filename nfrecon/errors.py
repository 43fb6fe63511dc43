"""The one error type that users see: a one-line message about their input."""

from __future__ import annotations

import contextlib
from contextvars import ContextVar

_recorded: ContextVar[list | None] = ContextVar("nfrecon_input_errors", default=None)


class InputError(ValueError):
    """Bad input (file, shape, value, config). The CLI prints ``error: <message>`` and exits 2.

    Messages are one line and name the offending file or field.
    """

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))
        recorded = _recorded.get()
        if recorded is not None:
            recorded.append(self)


def first_of(items, noun: str = "") -> str:
    """``items[0]``, followed by " (and N more <noun>)" when there are others: how a message
    names the first of several problems."""
    rest = len(items) - 1
    return f"{items[0]}" + (f" (and {rest} more{' ' + noun if noun else ''})" if rest > 0 else "")


@contextlib.contextmanager
def recording_input_errors():
    """Yield a list that receives every InputError created inside the block (the CLI uses it
    to report a config's own check in one line when the argument parser caught it)."""
    token = _recorded.set([])
    try:
        yield _recorded.get()
    finally:
        _recorded.reset(token)
