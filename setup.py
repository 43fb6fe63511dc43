"""Packaging hook: ship the kernel sources of ``cuda/`` inside the package (``nfrecon/cuda``).

The kernels are compiled on the user's machine at first use (``nfrecon/ops/extension.py``),
so a wheel carries their sources, not binaries. Everything else is in pyproject.toml.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

KERNEL_PATTERNS = ("*.cpp", "*.cu", "*.cuh", "*.h")


class BuildPyWithKernels(build_py):
    """build_py that also copies cuda/ (sources and headers) to <build>/nfrecon/cuda."""

    def run(self):
        super().run()
        src = Path(__file__).parent / "cuda"
        dst = Path(self.build_lib) / "nfrecon" / "cuda"
        for pattern in KERNEL_PATTERNS:
            for path in src.rglob(pattern):
                target = dst / path.relative_to(src)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, target)


setup(cmdclass={"build_py": BuildPyWithKernels})
