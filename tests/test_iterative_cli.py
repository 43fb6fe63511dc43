"""``nfrecon iterative`` end to end at a tiny size, the relative TV weight, and bad input."""

import json
from itertools import pairwise

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml

from nfrecon.bench.iterative import IterativeSettings, tv_scale
from nfrecon.cli import main
from nfrecon.data.volumes import read_mu_volume
from nfrecon.geometry.cone import ConeGeometry
from nfrecon.geometry.protocols import get_protocol
from nfrecon.geometry.volume import VolumeGeometry
from nfrecon.ops.projector import VoxelProjector


@pytest.fixture(scope="module")
def scan_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("iterative")
    assert main(["simulate", "--volume", "phantom", "--protocol", "small", "--size", "16", "--views", "12",
                 "--out", str(d / "scan.h5")]) == 0
    return d


def _nifti_zyx(path) -> np.ndarray:
    return np.asarray(nib.load(path).dataobj, dtype=np.float64).transpose(2, 1, 0)


@pytest.mark.parametrize("method", ["cgls", "sirt", "os-sart", "tv"])
def test_every_method_writes_the_fdk_outputs_with_its_history(scan_dir, cli, method):
    out = scan_dir / method
    code, text, _ = cli("iterative", "--scan", scan_dir / "scan.h5", "--out", out, "--method", method,
                        "--iters", 4, "--subsets", 3)
    assert code == 0 and "PSNR" in text
    for name in ("volume.nii.gz", "preview.png", "metrics.json", "config.yaml"):
        assert (out / name).is_file()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["method"] == method and metrics["iterations_run"] == 4 and metrics["seconds"] > 0
    history = metrics["residual_history"]
    assert len(history) == 5 and history[0] == pytest.approx(1.0)  # from x0 = 0: ||p|| / ||p||
    if method == "cgls":  # CGLS minimises the residual over growing Krylov spaces: it never increases
        assert all(b <= a * (1 + 1e-6) for a, b in pairwise(history))
    assert history[-1] < 0.75
    # the reported quality is that of the written volume (independent PSNR with numpy)
    x, gt = _nifti_zyx(out / "volume.nii.gz"), _nifti_zyx(scan_dir / "scan_gt.nii.gz")
    psnr = 10 * np.log10(gt.max() ** 2 / np.mean((x - gt) ** 2))
    assert metrics["vs_ground_truth"]["psnr_db"] == pytest.approx(psnr, abs=1e-4)
    if method != "cgls":
        assert x.min() >= 0  # --nonneg is on by default
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["method"] == method and config["iters"] == 4


def test_format_mha_writes_volume_mha_with_the_reported_quality(scan_dir, cli):
    pytest.importorskip("SimpleITK")  # reading the .mha back; writing it needs nothing
    out = scan_dir / "cgls-mha"
    code, text, _ = cli("iterative", "--scan", scan_dir / "scan.h5", "--out", out, "--method", "cgls", "--iters", 2,
                        "--format", "mha", "--backend", "torch")
    assert code == 0 and "volume.mha" in text
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "metrics.json", "preview.png", "volume.mha"]
    x, geom = read_mu_volume(out / "volume.mha", keep_position=True)
    gt = _nifti_zyx(scan_dir / "scan_gt.nii.gz")
    psnr = 10 * np.log10(gt.max() ** 2 / np.mean((x - gt) ** 2))
    assert json.loads((out / "metrics.json").read_text())["vs_ground_truth"]["psnr_db"] == pytest.approx(psnr, abs=1e-4)
    assert geom.shape == gt.shape and yaml.safe_load((out / "config.yaml").read_text())["format"] == "mha"


def test_tv_reports_its_weight_and_beats_the_noise_of_cgls(scan_dir, cli):
    """At 12 noisy views TV's PSNR is above the unregularised least-squares solution's."""
    for method, extra in (("cgls", ["--iters", 30]), ("tv", ["--lam", "3e-4"])):
        code, _, _ = cli("iterative", "--scan", scan_dir / "scan.h5", "--out", scan_dir / f"cmp-{method}",
                         "--method", method, *extra)
        assert code == 0
    tv = json.loads((scan_dir / "cmp-tv" / "metrics.json").read_text())
    ls = json.loads((scan_dir / "cmp-cgls" / "metrics.json").read_text())
    assert tv["lam"] == 3e-4 and tv["lam_abs"] == pytest.approx(3e-4 * tv["lam_scale"]["scale"])
    assert tv["iterations_run"] == IterativeSettings("tv").n_iter
    assert tv["vs_ground_truth"]["psnr_db"] > ls["vs_ground_truth"]["psnr_db"] + 1.0


def test_tv_scale_parts_against_analytic_chords_and_its_invariances():
    """One central ray through a 40 mm cube: chord 40 mm. Doubling every view doubles the
    factor (the data term doubles); scaling mu by c scales it by c; a finer grid of the
    same box divides it by the voxel-count ratio."""
    vg = VolumeGeometry.cube(8, 5.0)
    geom = ConeGeometry.circular(sod=200, sdd=300, det_shape=(1, 1), pixel_size=0.01, n_views=1)
    A = VoxelProjector(vg, geom)
    mu = 0.02
    s = tv_scale(A(torch.full(vg.shape, mu)), A)
    assert s["rays"] == 1 and s["voxels"] == 512
    assert s["mean_chord_mm"] == pytest.approx(40.0, rel=1e-5)
    assert s["x_ref_per_mm"] == pytest.approx(mu, rel=1e-5)
    assert s["scale"] == pytest.approx(1 / 512 * mu * 40.0**3, rel=1e-4)

    p = get_protocol("small").scaled(12).with_views(6)
    vg, geom = p.volume_geometry(), p.cone_geometry()
    x = torch.rand(vg.shape, generator=torch.Generator().manual_seed(0)) * 0.02
    A = VoxelProjector(vg, geom)
    base = tv_scale(A(x), A)
    twice = ConeGeometry(geom.det_shape, *(np.concatenate([getattr(geom, k)] * 2) for k in ("src", "det", "u", "v")))
    A2 = VoxelProjector(vg, twice)
    assert tv_scale(A2(x), A2)["scale"] == pytest.approx(2 * base["scale"], rel=1e-6)
    assert tv_scale(3 * A(x), A)["scale"] == pytest.approx(3 * base["scale"], rel=1e-6)
    fine = vg.with_shape((24, 24, 24))
    Af = VoxelProjector(fine, geom)
    assert tv_scale(A(x), Af)["scale"] == pytest.approx(base["scale"] / 8, rel=1e-3)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--scan", "{d}/missing.h5"], "missing.h5"),
        (["--scan", "{d}/text.h5"], "not an HDF5"),
        (["--scan", "{s}", "--method", "os-sart", "--subsets", "50"], "--subsets"),
        (["--scan", "{s}", "--iters", "0"], "--iters"),
        (["--scan", "{s}", "--lam", "-1"], "--lam"),
        (["--scan", "{s}", "--tol", "0"], "--tol"),
        (["--scan", "{s}", "--device", "nope"], "--device"),
    ],
)
def test_bad_input_one_line_error_exit_2_no_output(scan_dir, tmp_path, cli, argv, message):
    (tmp_path / "text.h5").write_text("this is not HDF5\n")
    before = sorted(p.name for p in tmp_path.iterdir())
    args = [a.format(d=tmp_path, s=scan_dir / "scan.h5") for a in argv]
    code, _, err = cli("iterative", *args, "--out", tmp_path / "out")
    assert code == 2
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and message in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written


def test_projector_cache_repeats_the_uncached_numbers_exactly():
    """The solvers' repeated A / A^T reuse cached sample grids: same numbers as recomputing them."""
    p = get_protocol("small").scaled(12).with_views(5)
    vg, geom = p.volume_geometry(), p.cone_geometry()
    x = torch.rand(vg.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    y = torch.rand(geom.proj_shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    cached = VoxelProjector(vg, geom, chunk_samples=4096, backend="torch")  # the cache is the torch path's
    plain = VoxelProjector(vg, geom, chunk_samples=4096, cache_bytes=0, backend="torch")
    for _ in range(2):  # the first call fills the cache, the second reads it
        assert torch.equal(cached(x), plain(x)) and torch.equal(cached.T(y), plain.T(y))
    assert cached._cache and not plain._cache
