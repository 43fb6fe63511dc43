"""Stopping a training loop on Ctrl-C (SIGINT) or SIGTERM at a step boundary.

A signal that arrives in the middle of a step must not interrupt it: the random generators,
the model and the optimiser would be left between two steps, and a checkpoint written then
could not be resumed exactly. :class:`StopRequest` replaces the SIGINT and SIGTERM handlers
by one that only records the signal; the loop checks ``requested`` between steps, writes its
checkpoint and raises :class:`Interrupted`. A second signal gets the previous handler
(Ctrl-C twice stops at once). Handlers can only be installed from the main thread; elsewhere
the context manager does nothing.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path

HANDLED = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """A training loop stopped on a signal after writing ``checkpoint`` at ``step``.

    ``signum`` is the signal (None: a KeyboardInterrupt raised by code); the CLI prints the
    checkpoint and the command that resumes, and exits with 128 + signum.
    """

    def __init__(self, checkpoint: Path | None, step: int, signum: int | None):
        self.checkpoint, self.step, self.signum = checkpoint, step, signum
        name = signal.Signals(signum).name if signum else "interrupt"
        where = f"checkpoint of step {step} in {checkpoint}" if checkpoint else "no checkpoint written"
        super().__init__(f"{name}: stopped; {where}")


class StopRequest:
    """Context manager: SIGINT/SIGTERM set ``requested`` (and ``signum``) instead of stopping."""

    def __init__(self):
        self.requested = False
        self.signum: int | None = None
        self._saved: dict = {}

    def _handler(self, signum, frame):
        self.requested, self.signum = True, signum
        for sig, old in self._saved.items():
            signal.signal(sig, old)

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in HANDLED:
                self._saved[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        for sig, old in self._saved.items():
            signal.signal(sig, old)
        self._saved = {}
