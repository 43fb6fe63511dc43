"""``nfrecon doctor``: which backends (torch, cpp, cuda, tcnn) run on this machine, and why not."""

from __future__ import annotations

import platform
from dataclasses import dataclass

import torch

from nfrecon.cli.common import parse
from nfrecon.ops import extension
from nfrecon.ops.backend import availability, resolve_backend

DESCRIPTION = """Report the machine (Python, torch, CPU threads, CUDA), where the kernel sources are, and
for every --backend whether it runs here, with the reason and the fix when it does not. Builds
the fused kernels if they are not built yet (a few minutes the first time)."""


@dataclass
class DoctorArgs:
    """No options."""


def main(argv: list[str], prog: str) -> int:
    parse(DoctorArgs, argv, prog, DESCRIPTION)
    cuda = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "not available"
    print(f"python {platform.python_version()}, torch {torch.__version__} (CUDA build: {torch.version.cuda or 'no'})")
    print(f"CPU: {platform.machine()}, {torch.get_num_threads()} torch threads; CUDA device: {cuda}")
    print(f"kernel sources: {extension.source_dir()}")
    status = availability()
    width = max(map(len, status))
    for name, (ok, reason) in status.items():
        print(f"  {name:<{width}}  {'yes' if ok else 'no '}  {reason}".rstrip())
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(f"--backend auto on {device.type}: {resolve_backend('auto', device)}")
    return 0
