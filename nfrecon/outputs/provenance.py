"""Where a number came from: machine, software versions, git commit, command line."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import torch


def git_commit(repo: str | os.PathLike | None = None) -> str:
    """``git describe``-style commit of the repository holding nfrecon ('unknown' outside git)."""
    repo = Path(repo) if repo is not None else Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                               capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return sha.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: torch.device | None = None) -> dict:
    """CPU, cores, torch threads, Python/torch versions and the GPU if one is used."""
    info = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
    }
    if device is not None and torch.device(device).type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def provenance(device: torch.device | None = None) -> dict:
    """Machine, commit and the command line of this process."""
    return {"machine": machine_info(device), "commit": git_commit(), "command": " ".join([sys.executable, *sys.argv])}
