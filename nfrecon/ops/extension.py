"""Building and loading the fused kernels of ``cuda/`` (JIT, ninja, cached per machine).

Two libraries are built from the one source tree with ``torch.utils.cpp_extension.load``:

- ``cpu``: ``cuda/ops.cpp`` (the op schemas, ``torch.ops.nfrecon.*``) and the CPU launchers
  ``cuda/*_cpu.cpp``, compiled by the host C++ compiler (``$CXX``, else ``c++``) with OpenMP;
- ``cuda``: the CUDA launchers ``cuda/*_cuda.cu``, compiled by ``nvcc``; it only adds CUDA
  implementations to the schemas of ``cpu``, so it is loaded after it.

Each library is named after a hash of its sources, flags, torch and Python versions, so
an edited kernel builds anew and a stale build is never loaded; builds land in torch's
extension folder (``$TORCH_EXTENSIONS_DIR``, default ``~/.cache/torch_extensions``). The first build takes
3-6 minutes on 2 cores; later processes load the cached library in milliseconds.

A build that cannot happen (no compiler, no ninja, no CUDA toolkit) or fails is recorded
with a one-line reason and the fix; :func:`load` returns it instead of raising, so callers
decide whether that is a warning (``--backend auto``) or an error (a backend asked for by
name).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from nfrecon.resources import package_data

# Host compiler flags: optimise for this machine (the build is per machine), OpenMP loops
# and SIMD pragmas. torch adds -std=c++20 and -fPIC itself.
CPU_FLAGS = ("-O3", "-march=native", "-fopenmp")
CPU_LDFLAGS = ("-fopenmp",)
CUDA_FLAGS = ("-O3", "--expt-relaxed-constexpr", "--use_fast_math")


def source_dir() -> Path:
    """The kernel sources: ``nfrecon/cuda`` in an installed wheel, ``cuda/`` in a checkout."""
    return package_data("cuda", "ops.cpp")


def sources(kind: str, root: Path | None = None) -> list[Path]:
    """The translation units of library ``kind`` ('cpu' or 'cuda')."""
    root = root or source_dir()
    if kind == "cpu":
        return [root / "ops.cpp", *sorted(root.glob("*_cpu.cpp"))]
    return sorted(root.glob("*_cuda.cu"))


def _digest(kind: str, root: Path, flags: tuple[str, ...]) -> str:
    # the library depends on the flags, this torch and this Python's ABI as well as the sources
    h = hashlib.sha256(" ".join(flags).encode() + torch.__version__.encode() + sys.version.encode())
    headers = sorted(root.glob("*.h")) + sorted(root.glob("*.cuh")) + sorted((root / "include").rglob("*.h"))
    for path in [*sources(kind, root), *headers]:
        h.update(path.name.encode() + path.read_bytes())
    return h.hexdigest()[:12]


@dataclass(frozen=True)
class BuildResult:
    """Outcome of building and loading one library: ``ok``, else ``reason`` (one line + fix)."""

    ok: bool
    reason: str = ""
    path: str = ""


_RESULTS: dict[str, BuildResult] = {}


def build_root() -> Path:
    """Where builds land: ``$TORCH_EXTENSIONS_DIR``, else torch's per-user cache folder."""
    from torch.utils.cpp_extension import get_default_build_root

    return Path(os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root())


def _missing_tools(kind: str) -> str:
    from torch.utils.cpp_extension import CUDA_HOME, is_ninja_available

    if not is_ninja_available():
        return "ninja is not installed; fix: pip install ninja"
    cxx = os.environ.get("CXX", "c++")
    if shutil.which(cxx) is None:
        return (f"no C++ compiler: {cxx!r} (from $CXX, default c++) is not on PATH; fix: install g++ "
                f"(Debian/Ubuntu: apt install g++) or point $CXX at one")
    if kind == "cuda":
        if not torch.cuda.is_available():
            return "no CUDA device visible to torch (torch.cuda.is_available() is False)"
        if torch.version.cuda is None:
            return f"this torch ({torch.__version__}) is a CPU-only build; install a CUDA build of torch"
        nvcc = Path(CUDA_HOME or "", "bin", "nvcc")
        if CUDA_HOME is None or not nvcc.is_file():
            return "nvcc not found (no CUDA toolkit at $CUDA_HOME or on PATH); fix: install the CUDA toolkit"
    return ""


def _first_error(text: str) -> str:
    """The first compiler error line of a failed build's log (or its last line)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in lines:
        if "error" in line.lower() and "error building extension" not in line.lower():
            return line[:300]
    return lines[-1][:300] if lines else "unknown error"


def load(kind: str) -> BuildResult:
    """Build (if needed) and load library ``kind`` ('cpu' or 'cuda') once per process."""
    if kind in _RESULTS:
        return _RESULTS[kind]
    if kind == "cuda":
        base = load("cpu")
        if not base.ok:
            _RESULTS[kind] = BuildResult(False, f"the CPU library (op schemas) is unavailable: {base.reason}")
            return _RESULTS[kind]
    root = source_dir()
    if not (root / "ops.cpp").is_file():
        result = BuildResult(False, f"kernel sources not found (looked for {root}/ops.cpp); reinstall nfrecon")
    elif missing := _missing_tools(kind):
        result = BuildResult(False, missing)
    else:
        result = _build(kind, root)
    _RESULTS[kind] = result
    return result


def _build(kind: str, root: Path) -> BuildResult:
    from torch.utils.cpp_extension import load as jit_load

    flags = CPU_FLAGS if kind == "cpu" else CUDA_FLAGS
    name = f"nfrecon_{kind}_{_digest(kind, root, flags)}"
    include = [str(root), str(root / "include")]
    build = build_root() / name
    if not (build / f"{name}.so").is_file():
        sys.stderr.write(f"nfrecon: building the fused {kind} kernels in {build} (once per machine; a few minutes)\n")
    build.mkdir(parents=True, exist_ok=True)
    try:
        path = jit_load(
            name=name,
            sources=[str(p) for p in sources(kind, root)],
            extra_cflags=list(CPU_FLAGS),
            extra_cuda_cflags=list(CUDA_FLAGS) if kind == "cuda" else None,
            extra_ldflags=list(CPU_LDFLAGS),
            extra_include_paths=include,
            build_directory=str(build),
            is_python_module=False,
            verbose=False,
        )
    except (RuntimeError, OSError, ImportError, subprocess.CalledProcessError) as exc:  # build or load failed
        log = str(exc)
        if hasattr(exc, "output") and exc.output:
            log = exc.output.decode(errors="replace") if isinstance(exc.output, bytes) else str(exc.output)
        return BuildResult(False, f"building the {kind} kernels failed: {_first_error(log)}")
    return BuildResult(True, path=str(path))
