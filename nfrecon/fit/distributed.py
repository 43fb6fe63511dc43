"""Process groups for data-parallel pretraining, and launching them through torchrun.

A process started by torchrun (``python -m torch.distributed.run``) finds ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous address in its environment;
:func:`init_distributed` joins the group (``env://``): NCCL with one GPU per process
(``cuda:LOCAL_RANK``) when CUDA is used, gloo on CPUs. Without torchrun (or with one
process) nothing is initialised and every collective is a no-op, so the same code runs
in a single process.
"""

from __future__ import annotations

import datetime
import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist

from nfrecon.devices import resolve_device
from nfrecon.errors import InputError

TIMEOUT = datetime.timedelta(minutes=30)  # a collective waits this long for a slow or dead peer


def launched_by_torchrun() -> bool:
    """Whether this process is one rank of a torchrun job."""
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))


@dataclass
class Dist:
    """This process's place in the job and the collectives pretraining needs.

    ``device`` is where this rank computes; collectives on tensors use ``comm_device``
    (the GPU with NCCL, the CPU with gloo).
    """

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str | None  # None: a single process, no group

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def comm_device(self) -> torch.device:
        return self.device if self.backend == "nccl" else torch.device("cpu")

    def all_reduce(self, tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
        """In-place sum or max over ranks of a tensor on ``comm_device``; returns it."""
        if self.backend is not None:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
        return tensor

    def all_gather_object(self, obj) -> list:
        """Every rank's ``obj`` (picklable), in rank order."""
        if self.backend is None:
            return [obj]
        out = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.backend is not None:
            dist.barrier()

    def together(self, fn):
        """Run ``fn()`` on every rank and return its result; an InputError on any rank is
        raised on all of them (the first rank's message), so that all stop alike."""
        try:
            result, err = fn(), None
        except InputError as exc:
            result, err = None, str(exc)
        errors = [e for e in self.all_gather_object(err) if e]
        if errors:
            raise InputError(errors[0])
        return result

    def close(self) -> None:
        if self.backend is not None and dist.is_initialized():
            dist.destroy_process_group()


def init_distributed(device: str) -> Dist:
    """Join the torchrun job this process belongs to (if any) and choose its device.

    device: 'auto' or 'cuda' (one GPU per process, ``cuda:LOCAL_RANK``, NCCL, when CUDA is
    available; else the CPU with gloo), 'cpu' (gloo), or 'cuda:N' (single process only).
    """
    if not launched_by_torchrun() or int(os.environ["WORLD_SIZE"]) == 1:
        return Dist(0, 1, 0, resolve_device(device), None)
    rank, world, local = (int(os.environ[k]) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    if device.startswith("cuda:"):
        raise InputError(f"--device {device}: with several processes each one uses cuda:LOCAL_RANK; pass --device cuda")
    use_cuda = device in ("auto", "cuda") and torch.cuda.is_available()
    if device == "cuda" and not use_cuda:
        raise InputError("--device cuda: CUDA is not available on this machine")
    if device not in ("auto", "cuda", "cpu"):
        resolve_device(device)  # raises for unknown names
    if use_cuda:
        if local >= torch.cuda.device_count():
            raise InputError(f"LOCAL_RANK {local}: this node has only {torch.cuda.device_count()} GPUs; "
                             f"start at most that many processes per node")
        torch.cuda.set_device(local)
        dev, backend = torch.device("cuda", local), "nccl"
    else:
        dev, backend = torch.device("cpu"), "gloo"
    dist.init_process_group(backend, timeout=TIMEOUT, **({"device_id": dev} if backend == "nccl" else {}))
    return Dist(rank, world, local, dev, backend)


def torchrun_command(nproc: int, argv: list[str]) -> list[str]:
    """The command that runs ``nfrecon <argv>`` as ``nproc`` processes on this machine."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(int(nproc)),
            "-m", "nfrecon", *argv]
