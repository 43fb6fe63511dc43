"""Which implementation of the fused ops runs: torch, cpp, cuda or tcnn.

- ``torch``: the pure-PyTorch references (any device; the semantics every kernel is tested
  against);
- ``cpp``: the kernels of ``cuda/`` built for the CPU (g++ + OpenMP);
- ``cuda``: the same kernels built with nvcc, on a CUDA device;
- ``tcnn``: tiny-cuda-nn's HashGrid encoding where ``tinycudann`` is importable (a CUDA
  device; its indexing differs from ours, so it is a different field of the same size);
- ``auto``: cuda on a CUDA device, cpp on the CPU, when they build; else torch, with one
  warning that names the cause and the fix.

A backend asked for by name that cannot run is an :class:`InputError` naming the option.
"""

from __future__ import annotations

import importlib.util
import warnings

import torch

from nfrecon.errors import InputError
from nfrecon.ops import extension

BACKENDS = ("auto", "torch", "cpp", "cuda", "tcnn")
KERNEL_BACKENDS = ("cpp", "cuda")

# Limits of the kernels' per-point buffers (cuda/include/nfrecon/common.h).
MAX_LEVELS = 32
MAX_ENCODING = 128
MAX_LAYERS = 8
MAX_WIDTH = 256

_warned: set[str] = set()


def check_kernel_limits(n_levels: int, encoding_width: int, widths: tuple[int, ...] = ()) -> None:
    """InputError when a config exceeds what the fused kernels hold (use --backend torch)."""
    if n_levels > MAX_LEVELS:
        raise InputError(f"encoder.n_levels: the fused kernels support at most {MAX_LEVELS} levels, got {n_levels}; "
                         f"use --backend torch")
    if encoding_width > MAX_ENCODING:
        raise InputError(f"encoder: the fused kernels support an encoding of at most {MAX_ENCODING} features "
                         f"(n_levels x n_features_per_level), got {encoding_width}; use --backend torch")
    if len(widths) + 1 > MAX_LAYERS:
        raise InputError(f"mlp.hidden: the fused kernels support at most {MAX_LAYERS - 1} hidden layers, "
                         f"got {len(widths)}; use --backend torch")
    if widths and max(widths) > MAX_WIDTH:
        raise InputError(f"mlp.hidden: the fused kernels support widths up to {MAX_WIDTH}, got {max(widths)}; "
                         f"use --backend torch")


def require_kernels(backend: str) -> None:
    """Load the library that registers the ops of kernel backend ``backend`` ('cpp' loads the
    CPU library with the schemas; 'cuda' also the CUDA one); InputError when it cannot."""
    for kind in ("cpu", "cuda") if backend == "cuda" else ("cpu",):
        result = extension.load(kind)
        if not result.ok:
            raise InputError(f"--backend {backend}: {result.reason}")


def tcnn_status() -> tuple[bool, str]:
    """Whether tiny-cuda-nn can run here, and why not."""
    if importlib.util.find_spec("tinycudann") is None:
        return False, ("tinycudann is not installed "
                       "(pip install git+https://github.com/NVlabs/tiny-cuda-nn/#subdirectory=bindings/torch)")
    if not torch.cuda.is_available():
        return False, "tinycudann needs a CUDA device"
    return True, ""


def availability() -> dict[str, tuple[bool, str]]:
    """Each backend: (available, reason when not). Builds the kernels if needed."""
    cpu, cuda = extension.load("cpu"), extension.load("cuda")
    return {
        "torch": (True, ""),
        "cpp": (cpu.ok, cpu.reason),
        "cuda": (cuda.ok, cuda.reason),
        "tcnn": tcnn_status(),
    }


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        warnings.warn(message, stacklevel=3)


def resolve_backend(name: str, device: torch.device, option: str = "--backend") -> str:
    """The backend that runs for ``name`` on ``device`` ('torch', 'cpp', 'cuda' or 'tcnn')."""
    if name not in BACKENDS:
        raise InputError(f"{option}: unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    device = torch.device(device)
    if name == "torch":
        return "torch"
    if name == "auto":
        kind = "cuda" if device.type == "cuda" else "cpu"
        result = extension.load(kind)
        if result.ok:
            return "cuda" if kind == "cuda" else "cpp"
        _warn_once(f"fused {kind} kernels unavailable ({result.reason}); using the PyTorch path "
                   f"(slower; {option} torch silences this)")
        return "torch"
    if name == "tcnn":
        ok, reason = tcnn_status()
        if not ok:
            raise InputError(f"{option} tcnn: {reason}")
        if device.type != "cuda":
            raise InputError(f"{option} tcnn needs --device cuda, got {device}")
        return "tcnn"
    kind = "cpu" if name == "cpp" else "cuda"
    if (device.type == "cuda") != (name == "cuda"):
        other = "cuda" if name == "cpp" else "cpp"
        raise InputError(f"{option} {name} runs on {'a CUDA device' if name == 'cuda' else 'the CPU'}, "
                         f"the device is {device}; use {option} {other} or auto")
    result = extension.load(kind)
    if not result.ok:
        raise InputError(f"{option} {name}: {result.reason}")
    return name
