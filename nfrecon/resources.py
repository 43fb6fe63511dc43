"""Package data: the folders of files that nfrecon reads at run time besides its modules.

Two folders live at the top of the source checkout, beside ``nfrecon/``: ``cuda/`` (the kernel
sources, compiled at first use) and ``configs/`` (the presets, ``*.yaml``). A wheel carries
them inside the package, as ``nfrecon/cuda`` and ``nfrecon/configs`` (``setup.py`` copies them
at build time). :func:`package_data` finds either: the copy inside the installed package
first, else the checkout's (an editable install, or the checkout on ``PYTHONPATH``).
"""

from __future__ import annotations

from pathlib import Path

PACKAGE = Path(__file__).resolve().parent


def package_data(name: str, marker: str) -> Path:
    """The folder ``name`` of package data: ``nfrecon/<name>`` in an installed wheel, else
    ``<checkout>/<name>``. A candidate counts when it holds a file matching the glob
    ``marker`` (e.g. ``ops.cpp``, ``*.yaml``); with neither, the package's (absent) path."""
    for candidate in (PACKAGE / name, PACKAGE.parent / name):
        if any(candidate.glob(marker)):
            return candidate
    return PACKAGE / name
