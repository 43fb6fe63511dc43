"""CI runs exactly the README's test command, then the linter."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_test_command_verbatim_then_ruff():
    lines = (ROOT / "README.md").read_text().splitlines()
    marker = lines.index("<!-- test-command -->")
    assert lines[marker + 1] == "```bash"
    command = lines[marker + 2]
    assert "pytest" in command and "pip install" in command
    ci = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line and not line.startswith("#")]
    assert ci[-2:] == [command, ".venv/bin/ruff check ."]


def test_missing_real_data_fails_in_ci_and_skips_elsewhere(tmp_path):
    test = "tests/test_projector.py::test_matches_rtk_joseph_on_real_ct"
    env = {**os.environ, "NFRECON_DATA": str(tmp_path / "absent")}
    env.pop("PYTEST_XDIST_WORKER", None)
    outcomes = {}
    for ci in ("true", ""):
        done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist", test],
                              cwd=ROOT, env={**env, "CI": ci}, capture_output=True, text=True, check=False)
        outcomes[ci] = (done.returncode, done.stdout)
    assert outcomes["true"][0] == 1 and "CI=true: real CT data not present" in outcomes["true"][1]
    assert outcomes[""][0] == 0 and "1 skipped" in outcomes[""][1]


def test_missing_rtk_fails_in_ci_and_skips_elsewhere(tmp_path):
    (tmp_path / "itk").mkdir()  # an 'itk' that cannot be imported shadows the installed one
    (tmp_path / "itk" / "__init__.py").write_text("raise ImportError('itk-rtk hidden by the test')\n")
    test = "tests/test_fdk.py::test_matches_rtk_fdk_on_shepp_logan"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))}
    env.pop("PYTEST_XDIST_WORKER", None)
    outcomes = {}
    for ci in ("true", ""):
        done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist", test],
                              cwd=ROOT, env={**env, "CI": ci}, capture_output=True, text=True, check=False)
        outcomes[ci] = (done.returncode, done.stdout)
    assert outcomes["true"][0] == 1 and "CI=true: itk-rtk is not installed" in outcomes["true"][1]
    assert outcomes[""][0] == 0 and "4 skipped" in outcomes[""][1]  # 2 scans x 2 backends
