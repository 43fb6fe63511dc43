"""File output: checked before any work, written to a temporary name, then renamed.

A crash or a bad-input error never leaves a half-written file at the final path, and
:func:`atomic_paths` renames the files of one command together (all of them or none).
:func:`check_output_dir` / :func:`check_output_file` refuse an output location that cannot
be written (an existing file where a folder goes or the reverse, a file among the parents,
a read-only folder) with an InputError naming the option, before a command reads its input.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from nfrecon.errors import InputError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None):
    """Yield a temporary path next to ``path``; on success rename it onto ``path``.

    ``suffix`` defaults to the final path's suffixes (e.g. ``.nii.gz``) so that writers
    that pick a format by extension behave. On error the temporary file is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes) if suffix is None else suffix
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


@contextlib.contextmanager
def atomic_paths(*paths: str | os.PathLike):
    """Yield one temporary path per final path (as :func:`atomic_path`); when the block
    succeeds, rename them all onto their final paths; otherwise remove them all."""
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(atomic_path(p)) for p in paths]


def _check_parent(path: Path, start: Path, option: str) -> None:
    """The nearest existing folder at or above ``start`` must be a writable folder."""
    base = Path(os.path.abspath(start))
    while not base.exists() and base != base.parent:
        base = base.parent
    if not base.is_dir():
        raise InputError(f"{option} {path}: {base} is a file, not a folder")
    if not os.access(base, os.W_OK | os.X_OK):
        raise InputError(f"{option} {path}: {base} is not writable")


def check_output_dir(path: str | os.PathLike, option: str = "--out") -> None:
    """Refuse (InputError) a folder that cannot be created or written: an existing non-folder,
    a file among its parents, or a nearest existing folder that is read-only."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError(f"{option} {path}: exists and is not a folder")
    _check_parent(path, path, option)


def check_output_file(path: str | os.PathLike, option: str = "--out") -> None:
    """Refuse (InputError) a file that cannot be written (atomically, by a rename in its
    folder): an existing folder, a file among its parents, a read-only folder."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{option} {path}: is a folder, expected a file name")
    _check_parent(path, path.parent, option)
