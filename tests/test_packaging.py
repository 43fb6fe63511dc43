"""Packaging: a wheel built from this checkout carries the kernel sources and the presets, and an
installed copy of it (not the checkout) finds both and runs ``nfrecon fit --preset``.

The wheel is built once for the module, from a copy of the working tree (so that no stale
``build/`` of the checkout leaks into it), and installed with ``pip install --target`` into a
folder that the subprocesses below put on ``PYTHONPATH``, from a working directory outside the
repository; the dependencies come from this environment.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from nfrecon.ops import extension

REPO = Path(__file__).resolve().parents[1]
PRESETS = sorted(p.stem for p in (REPO / "configs").glob("*.yaml"))
# what a copy of the checkout leaves out: version control, environments, build and run outputs
NOT_SOURCES = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache",
                                     ".ruff_cache", "runs", "out")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    src, dist = tmp_path_factory.mktemp("src") / "nfrecon", tmp_path_factory.mktemp("dist")
    shutil.copytree(REPO, src, ignore=NOT_SOURCES)
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(dist), str(src)], check=False, capture_output=True, text=True)
    assert build.returncode == 0, build.stderr[-2000:]
    return next(dist.glob("nfrecon-*.whl"))


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    target = tmp_path_factory.mktemp("site")
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target),
                           str(wheel)], check=False, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    return target


def _run_installed(target: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """``python ARGS`` with the installed copy first on the path, from a folder outside the checkout."""
    # 120 columns: one column of option boxes (a wider terminal lays them side by side)
    env = {**os.environ, "PYTHONPATH": str(target), "COLUMNS": "120"}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, check=False)


def test_the_kernel_sources_reach_the_wheel(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for src in extension.sources("cpu", REPO / "cuda") + extension.sources("cuda", REPO / "cuda"):
        assert f"nfrecon/cuda/{src.name}" in names
    assert "nfrecon/cuda/include/nfrecon/naf_march.h" in names


def test_the_presets_reach_the_wheel(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    assert PRESETS and all(f"nfrecon/configs/{name}.yaml" in names for name in PRESETS)


_CHECK_INSTALLED = """
import json
from nfrecon.fit import presets
from nfrecon.fit.config import FitConfig, PretrainConfig
from nfrecon.ops import extension
import nfrecon

fit = {n: type(presets.fit_config(n, device="cpu").config).__name__ for n in presets.names()}
pretrain = {n: type(presets.pretrain_config(n, device="cpu").config).__name__ for n in presets.pretraining_names()}
print(json.dumps({"package": nfrecon.__file__, "presets": str(presets.CONFIG_DIR),
                  "kernels": str(extension.source_dir()), "fit": fit, "pretrain": pretrain}))
"""


def test_an_installed_wheel_finds_its_presets_and_kernel_sources(installed, tmp_path):
    done = _run_installed(installed, tmp_path, "-c", _CHECK_INSTALLED)
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.splitlines()[-1])
    assert Path(found["package"]).is_relative_to(installed), found["package"]  # the installed copy, not the checkout
    assert Path(found["presets"]) == installed / "nfrecon" / "configs"
    assert Path(found["kernels"]) == installed / "nfrecon" / "cuda"
    assert found["fit"] == {name: "FitConfig" for name in PRESETS}
    assert found["pretrain"] and set(found["pretrain"].values()) == {"PretrainConfig"}


def test_an_installed_wheel_shows_a_presets_values_in_fit_help(installed, tmp_path):
    done = _run_installed(installed, tmp_path, "-m", "nfrecon", "fit", "--preset", "naf-best", "--help")
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [line.strip("│ ") for line in done.stdout.splitlines()]

    def default(flag: str) -> str:
        """The default shown for ``flag``: on its line of the help or the lines below it, up to the next flag."""
        start = next(i for i, line in enumerate(lines) if line.split(" ")[0] in (flag, f"{flag},"))
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("--")), len(lines))
        return re.search(r"\(default: ([^)]*)\)", " ".join(lines[start:end])).group(1)

    # naf-best: 4000 steps, the Poisson data term, held-out checks every 200 steps (the defaults: 3000, mse, 100)
    assert (default("--steps"), default("--loss.kind"), default("--stop.eval-every")) == ("4000", "poisson", "200")
    assert default("--preset") == "naf-best"
    assert all(f"{name}: " in done.stdout for name in PRESETS)  # the list of presets, with their descriptions
