"""Shared test fixtures: locations of the optional real data and reference packages."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

if os.environ.get("PYTEST_XDIST_WORKER"):
    # one thread per xdist worker: two workers with two threads each on two cores make
    # every parallel torch op wait for a descheduled thread
    import torch

    torch.set_num_threads(1)


def skip_outside_ci(reason: str) -> None:
    """Skip the test, except in CI (``CI=true``), where a missing reference fails the run."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true: {reason} (CI must run this test)", pytrace=False)
    pytest.skip(reason)


def shared_data_dir() -> Path:
    """The real CT folder: $NFRECON_DATA, else ../shared/data beside the repository."""
    return Path(os.environ.get("NFRECON_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture
def shared_data() -> Path:
    """Path of ../shared/data; the test is skipped when the folder is absent (fails in CI)."""
    d = shared_data_dir()
    if not d.is_dir():
        skip_outside_ci(f"real CT data not present at {d}")
    return d


@pytest.fixture
def rtk():
    """The ``itk`` module with RTK loaded; skipped when itk-rtk is not installed (fails in CI)."""
    try:
        import itk
        from itk import RTK  # noqa: F401
    except ImportError:
        skip_outside_ci("itk-rtk is not installed")
    return itk


@pytest.fixture
def cuda_device():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    return torch.device("cuda")


@pytest.fixture
def cli(capsys):
    """``cli(*argv)`` runs ``nfrecon ARGV`` in this process: (exit code, stdout, stderr)."""
    from nfrecon.cli import main

    def run(*argv):
        code = main(list(map(str, argv)))
        out, err = capsys.readouterr()
        return code, out, err

    return run
