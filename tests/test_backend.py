"""Backends: the choice, the build-failure path, nvcc compilation of every .cu file, and a fit
with the cpp kernels against the same fit in torch (packaging of the sources: test_packaging.py)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nfrecon.cli import main
from nfrecon.data.scan import save_scan
from nfrecon.errors import InputError
from nfrecon.fields.hashgrid import HashGridConfig
from nfrecon.fields.mlp import MLPConfig
from nfrecon.fields.naf import NAFFieldConfig
from nfrecon.fit.config import FitConfig, OutputConfig, SamplingConfig, StopConfig
from nfrecon.fit.run import run_fit
from nfrecon.geometry.protocols import get_protocol
from nfrecon.ops import extension
from nfrecon.ops.backend import resolve_backend
from nfrecon.simulate import phantom_scan

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def scan_file(tmp_path_factory):
    protocol = get_protocol("small").scaled(24).with_views(16)
    scan = phantom_scan(protocol.cone_geometry(), protocol.volume_geometry(), radius_mm=150, photons=1e5, seed=0)
    path = tmp_path_factory.mktemp("scan") / "phantom24.h5"
    save_scan(scan, path)
    return path


def test_backend_choice_and_its_errors():
    cpu = torch.device("cpu")
    assert resolve_backend("torch", cpu) == "torch"
    assert resolve_backend("auto", cpu) == "cpp"  # g++ is on every machine of this project
    assert resolve_backend("cpp", cpu) == "cpp"
    with pytest.raises(InputError, match="unknown backend 'fast'"):
        resolve_backend("fast", cpu)
    with pytest.raises(InputError, match="--backend cuda runs on a CUDA device"):
        resolve_backend("cuda", cpu)
    with pytest.raises(InputError, match="--backend cpp runs on the CPU"):
        resolve_backend("cpp", torch.device("cuda"))
    if importlib_missing("tinycudann"):
        with pytest.raises(InputError, match="--backend tcnn: tinycudann is not installed"):
            resolve_backend("tcnn", cpu)


def importlib_missing(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is None


def _fit_command(scan_file, out, backend):
    return [sys.executable, "-m", "nfrecon", "fit", "--scan", str(scan_file), "--out", str(out), "--steps", "2",
            "--backend", backend, "--device", "cpu", "--output.no-tensorboard", "--output.no-progress"]


def test_without_a_compiler_auto_warns_once_and_falls_back_and_cpp_fails_in_one_line(scan_file, tmp_path):
    env = dict(os.environ, CXX=str(tmp_path / "no-such-compiler"), TORCH_EXTENSIONS_DIR=str(tmp_path / "ext"))
    cpp = subprocess.run(_fit_command(scan_file, tmp_path / "cpp", "cpp"), env=env, check=False,
                         capture_output=True, text=True)
    assert cpp.returncode == 2, cpp.stderr
    lines = cpp.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --backend cpp: no C++ compiler"), cpp.stderr
    assert "apt install g++" in lines[0] and "Traceback" not in cpp.stderr
    assert not (tmp_path / "cpp").exists()  # refused before any work
    auto = subprocess.run(_fit_command(scan_file, tmp_path / "auto", "auto"), env=env, check=False,
                          capture_output=True, text=True)
    assert auto.returncode == 0, auto.stderr
    warnings = [line for line in auto.stderr.splitlines() if "kernels unavailable" in line]
    assert len(warnings) == 1 and "no C++ compiler" in warnings[0] and "PyTorch path" in warnings[0]
    assert (tmp_path / "auto" / "volume.nii.gz").is_file()


def test_a_cpp_fit_reaches_the_psnr_of_the_torch_fit(scan_file, tmp_path):
    field = NAFFieldConfig(
        encoder=HashGridConfig(n_levels=6, log2_hashmap_size=14, base_resolution=4, per_level_scale=1.5),
        mlp=MLPConfig(hidden=(32, 32, 32), skips=(2,)),
    )
    psnr = {}
    for backend in ("torch", "cpp"):
        cfg = FitConfig(scan=scan_file, out=tmp_path / backend, steps=150, seed=3, device="cpu", backend=backend,
                        field=field, sampling=SamplingConfig(rays_per_step=512, mode="all", n_samples=32),
                        stop=StopConfig(holdout_fraction=0.1, eval_every=50, patience=0),
                        output=OutputConfig(checkpoint_every=0, preview_every=0, tensorboard=False, progress=False))
        result = run_fit(cfg)
        psnr[backend] = result.metrics["vs_ground_truth"]["psnr_db"]
    assert psnr["torch"] > 20  # the fit did learn the phantom
    assert abs(psnr["cpp"] - psnr["torch"]) < 0.1, psnr


def test_doctor_lists_every_backend_with_a_reason(capsys):
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    for name in ("torch", "cpp", "cuda", "tcnn"):
        assert any(line.split()[:1] == [name] for line in out.splitlines()), out
    if not torch.cuda.is_available():
        assert "--backend auto on cpu: cpp" in out


CUDA_SOURCES = extension.sources("cuda", REPO / "cuda")


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed")
@pytest.mark.parametrize("source", CUDA_SOURCES, ids=[p.name for p in CUDA_SOURCES])
def test_every_cuda_file_compiles_with_nvcc_against_the_installed_torch(source, tmp_path):
    include = Path(torch.__file__).parent / "include"
    cmd = ["nvcc", "-std=c++20", "-c", "-arch=sm_90", "--expt-relaxed-constexpr", "-Xcompiler", "-fPIC",
           f"-I{REPO / 'cuda'}", f"-I{REPO / 'cuda' / 'include'}", f"-I{include}",
           f"-I{include / 'torch' / 'csrc' / 'api' / 'include'}", str(source), "-o", str(tmp_path / "out.o")]
    result = subprocess.run(cmd, check=False, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "out.o").stat().st_size > 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_kernels_match_the_cpu_kernels():
    from nfrecon.ops.hashgrid import hashgrid

    cfg = HashGridConfig(n_levels=8, log2_hashmap_size=16, base_resolution=8, per_level_scale=1.5, init_scale=1.0)
    table = torch.rand(cfg.offsets[-1], 2)
    points = torch.rand(10000, 3)
    cpu = hashgrid(points, table, cfg, "cpp")
    gpu = hashgrid(points.cuda(), table.cuda(), cfg, "cuda").cpu()
    torch.testing.assert_close(gpu, cpu, rtol=1e-5, atol=1e-6)
    assert json.dumps(resolve_backend("auto", torch.device("cuda"))) == '"cuda"'
