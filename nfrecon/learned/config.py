"""Configuration of training a learned reconstructor (``nfrecon train-learned``; dataclasses).

Each config checks its own fields in ``__post_init__`` (InputError naming the option).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from nfrecon.errors import InputError

Method = Literal["lpd", "unet"]
METHODS: tuple[str, ...] = Method.__args__


def _positive_int(value, option: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(f"--{option}: must be a positive integer, got {value!r}")


@dataclass
class LpdConfig:
    """Sizes of the learned primal-dual network (nfrecon.learned.networks)."""

    iterations: int = 8
    """Unrolled primal-dual iterations K."""
    primal_channels: int = 6
    """Channels of the primal memory (even; channel 0 is the image)."""
    dual_channels: int = 4
    """Channels of the dual memory (even)."""
    width: int = 8
    """Hidden channels of every primal and dual CNN."""
    memory_saving: bool = True
    """Reversible training: activations recomputed in the backward pass (memory independent of K)."""

    def __post_init__(self):
        for name in ("iterations", "primal_channels", "dual_channels", "width"):
            _positive_int(getattr(self, name), f"lpd.{name.replace('_', '-')}")
        for name in ("primal_channels", "dual_channels"):
            if getattr(self, name) % 2:
                raise InputError(f"--lpd.{name.replace('_', '-')}: must be even (the memory is split in halves), "
                                 f"got {getattr(self, name)}")


@dataclass
class UNetConfig:
    """Sizes of the FDK + 3D U-Net network."""

    widths: tuple[int, ...] = (8, 16, 32)
    """Channels per level, finest first (levels = len(widths))."""

    def __post_init__(self):
        if not self.widths:
            raise InputError("--unet.widths: give one or more channel counts")
        for w in self.widths:
            _positive_int(w, "unet.widths")


@dataclass
class LearnedConfig:
    """Training of a learned reconstructor on pairs (scan, ground truth) of one protocol."""

    method: Method = "lpd"
    """lpd: learned primal-dual (reversible, LIRE-style); unet: FDK + 3D U-Net post-processing."""
    scans: tuple[Path, ...] = ()
    """Training scans with ground truths: files, folders (their scan files) or .txt lists."""
    exclude_ct: tuple[Path, ...] = ()
    """CT volumes to hold out: every scan made from one of them is left out (leave-one-out)."""
    out: Path = Path("runs/learned")
    """Run folder: model.pt, checkpoint.pt, config.yaml, history.csv, summary.json, preview.png, tb/."""
    val_count: int = 2
    """Scans held out for validation, evenly spaced through the list (0: none; the last model is kept)."""
    steps: int = 500
    """Optimisation steps (one training scan per step and process)."""
    lr: float = 1e-3
    """Adam learning rate (cosine decay to 1/10 of it over the steps)."""
    seed: int = 0
    """Seed of the initial weights and of the order of the training scans."""
    val_every: int = 50
    """Validate every this many steps (and at the end); model.pt keeps the best validated weights."""
    checkpoint_every: int = 100
    """Write checkpoint.pt every this many steps (and at the end, and on Ctrl-C/SIGTERM)."""
    device: str = "auto"
    """'auto', 'cpu' or 'cuda'."""
    backend: Literal["auto", "torch", "cpp", "cuda"] = "auto"
    """Implementation of the projector and FDK (see 'nfrecon fdk --help')."""
    progress: bool = True
    """Progress bar with rate and ETA on stderr."""
    tensorboard: bool = True
    """TensorBoard logs in <out>/tb."""
    lpd: LpdConfig = field(default_factory=LpdConfig)
    unet: UNetConfig = field(default_factory=UNetConfig)

    def __post_init__(self):
        if self.method not in METHODS:
            raise InputError(f"--method: one of {', '.join(METHODS)}, got {self.method!r}")
        for name in ("steps", "val_every", "checkpoint_every"):
            _positive_int(getattr(self, name), name.replace("_", "-"))
        if isinstance(self.val_count, bool) or not isinstance(self.val_count, int) or self.val_count < 0:
            raise InputError(f"--val-count: must be an integer >= 0, got {self.val_count!r}")
        if not (isinstance(self.lr, (int, float)) and 0 < self.lr < float("inf")):
            raise InputError(f"--lr: must be a finite number > 0, got {self.lr!r}")
