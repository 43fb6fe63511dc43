"""Packaging hook: ship the package data kept at the top of the checkout inside the package.

``cuda/`` (kernel sources and headers) becomes ``nfrecon/cuda`` and ``configs/`` (the presets)
``nfrecon/configs``; ``nfrecon/resources.py`` finds them there in a wheel and at the top of a
checkout otherwise. The kernels are compiled on the user's machine at first use
(``nfrecon/ops/extension.py``), so a wheel carries their sources, not binaries. Everything
else is in pyproject.toml.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

# top-level folder -> the files of it that the wheel carries (as nfrecon/<folder>)
PACKAGE_DATA = {
    "cuda": ("*.cpp", "*.cu", "*.cuh", "*.h"),
    "configs": ("*.yaml",),
}


class BuildPyWithData(build_py):
    """build_py that also copies each folder of PACKAGE_DATA to <build>/nfrecon/<folder>."""

    def run(self):
        super().run()
        for folder, patterns in PACKAGE_DATA.items():
            src = Path(__file__).parent / folder
            dst = Path(self.build_lib) / "nfrecon" / folder
            for pattern in patterns:
                for path in src.rglob(pattern):
                    target = dst / path.relative_to(src)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(path, target)


setup(cmdclass={"build_py": BuildPyWithData})
