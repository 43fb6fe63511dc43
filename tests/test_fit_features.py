"""Headline features of fitting, end to end: automatic stopping exports the best held-out state,
the README's first command, ``--config run/config.yaml`` repeats a run, the learning-rate
schedules, one-view ray sampling, and pretraining on voxels refusing scans without ground truth."""

import json
import math

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from nfrecon.data.phantom import EllipsoidPhantom
from nfrecon.data.scan import save_scan
from nfrecon.fields.hashgrid import HashGridConfig
from nfrecon.fields.mlp import MLPConfig
from nfrecon.fields.naf import NAFFieldConfig
from nfrecon.fit import loop as fit_loop
from nfrecon.fit.config import FitConfig, OptimConfig, OutputConfig, SamplingConfig, StopConfig
from nfrecon.fit.run import run_fit
from nfrecon.fit.schedule import lr_factor
from nfrecon.fit.stopping import split_views
from nfrecon.geometry.protocols import get_protocol
from nfrecon.simulate import phantom_scan

TINY_FIELD = NAFFieldConfig(
    encoder=HashGridConfig(n_levels=4, log2_hashmap_size=12, base_resolution=4, per_level_scale=1.6),
    mlp=MLPConfig(hidden=(16, 16), skips=(1,)),
)
PIXELS = 16 * 16  # detector of the tiny scan


@pytest.fixture(scope="module")
def scan_file(tmp_path_factory):
    """10 noisy views of a 16^3 Shepp-Logan phantom (2 of them held out at fraction 0.2)."""
    protocol = get_protocol("small").scaled(16).with_views(10)
    scan = phantom_scan(protocol.cone_geometry(), protocol.volume_geometry(), radius_mm=150, photons=1e5, seed=0)
    path = tmp_path_factory.mktemp("scan") / "tiny.h5"
    save_scan(scan, path)
    return path


def _cfg(scan_file, out, **kw) -> FitConfig:
    base = {
        "scan": scan_file, "out": out, "steps": 24, "seed": 5, "device": "cpu", "field": TINY_FIELD,
        "sampling": SamplingConfig(rays_per_step=64, mode="all", n_samples=12),
        "stop": StopConfig(holdout_fraction=0.2, eval_every=4, patience=0),
        "output": OutputConfig(checkpoint_every=8, preview_every=0, tensorboard=False, progress=False),
    }
    return FitConfig(**{**base, **kw})


def _zyx(path) -> np.ndarray:
    return np.asarray(nib.load(path).dataobj).transpose(2, 1, 0)


# ---------------------------------------------------------------------------- automatic stopping


def _expected_stop(history: list, patience: int, min_improvement: float) -> int:
    """The step at which the rule stops: ``patience`` evaluations in a row that do not improve
    by ``min_improvement`` on the error of the last evaluation that did."""
    reference, bad = math.inf, 0
    for step, error in history:
        if error < reference * (1 - min_improvement):
            reference, bad = error, 0
        else:
            bad += 1
        if bad >= patience:
            return step
    return -1


def test_automatic_stopping_ends_the_fit_and_exports_the_best_held_out_state(scan_file, tmp_path):
    # A constant, high rate makes the held-out error bounce, so that the best state is not the last one.
    stop = StopConfig(holdout_fraction=0.2, eval_every=4, patience=2, min_improvement=0.02)
    cfg = _cfg(scan_file, tmp_path / "run", steps=400, stop=stop, optim=OptimConfig(lr=1e-2, schedule="constant"))
    states = {}

    def record(run):
        if run.step % stop.eval_every == 0:
            states[run.step] = run.volume()

    result = run_fit(cfg, on_step=record)
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    history = m["holdout_history"]
    assert [s for s, _ in history] == list(range(4, m["steps_run"] + 1, 4))
    assert m["stopped_early"] and result.stopped_early and m["steps_run"] < cfg.steps
    assert m["steps_run"] == _expected_stop(history, stop.patience, stop.min_improvement)
    best_step, best_error = min(history, key=lambda h: h[1])
    assert m["exported_step"] == best_step < m["steps_run"]  # restored: the last state is worse
    exported = _zyx(tmp_path / "run" / "volume.nii.gz")
    assert np.array_equal(exported, states[best_step]) and np.array_equal(result.volume, states[best_step])
    assert not np.array_equal(exported, states[m["steps_run"]])
    assert m["holdout_rmse"] == best_error  # the held-out error re-measured on the exported field


def test_with_restore_best_off_the_last_state_is_exported(scan_file, tmp_path):
    stop = StopConfig(holdout_fraction=0.2, eval_every=4, patience=2, min_improvement=0.02, restore_best=False)
    cfg = _cfg(scan_file, tmp_path / "run", steps=400, stop=stop, optim=OptimConfig(lr=1e-2, schedule="constant"))
    last = {}
    result = run_fit(cfg, on_step=lambda run: last.update(volume=run.volume()))
    m = result.metrics
    assert m["stopped_early"] and m["exported_step"] == m["steps_run"] < cfg.steps
    assert np.array_equal(_zyx(tmp_path / "run" / "volume.nii.gz"), last["volume"])
    assert m["holdout_rmse"] == m["holdout_history"][-1][1]


# ---------------------------------------------------------------------------- the README's commands


def test_readme_first_command_on_the_built_in_phantom(cli, tmp_path):
    """``nfrecon fit --out runs/demo``, at 3 steps: every file the README names, and the PSNR
    against the phantom recomputed from volume.nii.gz."""
    out = tmp_path / "runs" / "demo"
    code, stdout, err = cli("fit", "--out", out, "--steps", 3)
    assert code == 0, err
    assert "scan built-in phantom" in stdout and f"outputs in {out}/" in stdout
    for name in ("volume.nii.gz", "preview.png", "metrics.json", "config.yaml", "checkpoint.pt"):
        assert (out / name).stat().st_size > 0, name
    assert list((out / "tb").glob("events.out.tfevents.*"))
    with Image.open(out / "preview.png") as img:
        assert img.format == "PNG"
    m = json.loads((out / "metrics.json").read_text())
    assert m["steps_run"] == m["exported_step"] == 3 and len(m["holdout_views"]) == 5  # 10% of 50 views
    # the README's phantom: 3D Shepp-Logan of radius 150 mm on the 'small' protocol's 64^3 grid
    protocol = get_protocol("small")
    gt = EllipsoidPhantom.shepp_logan(radius_mm=150.0, mu_water=protocol.mu_water).voxelize(
        protocol.volume_geometry(), supersample=2)
    vol = _zyx(out / "volume.nii.gz").astype(np.float64)
    assert vol.shape == gt.shape == (64, 64, 64) and protocol.n_views == 50
    r = float(gt.max())
    psnr = 10 * np.log10(r**2 / np.mean((vol - gt) ** 2))
    g = m["vs_ground_truth"]
    assert g["data_range"] == pytest.approx(r, rel=1e-6) and g["psnr_db"] == pytest.approx(psnr, abs=1e-4)
    assert f"PSNR {g['psnr_db']:.2f} dB" in stdout


def test_fit_with_the_config_of_a_run_repeats_it_bit_for_bit(cli, tmp_path):
    """Options that differ from the defaults reach the repeat through config.yaml alone (on the
    CPU, where fitting is deterministic; GPU atomics are not)."""
    first = tmp_path / "first"
    assert cli("fit", "--out", first, "--device", "cpu", "--steps", 3, "--seed", 7, "--sampling.rays-per-step", 256,
               "--optim.lr", 3e-3, "--output.no-tensorboard")[0] == 0
    default = tmp_path / "default"
    assert cli("fit", "--out", default, "--device", "cpu", "--steps", 3, "--output.no-tensorboard")[0] == 0
    again = tmp_path / "again"
    code, _, err = cli("fit", "--config", first / "config.yaml", "--out", again)
    assert code == 0, err
    assert np.array_equal(_zyx(again / "volume.nii.gz"), _zyx(first / "volume.nii.gz"))
    assert not np.array_equal(_zyx(default / "volume.nii.gz"), _zyx(first / "volume.nii.gz"))
    same = (again / "config.yaml").read_text().replace(str(again), str(first))
    assert same == (first / "config.yaml").read_text()
    assert not (again / "tb").exists()  # --output.no-tensorboard came from the config too


# ---------------------------------------------------------------------------- schedules, sampling


@pytest.mark.parametrize(
    "schedule, expected",
    [
        # final ratio r = 0.01 over 100 steps, at steps 0, 25, 50, 100 and 150 (past the end)
        ("exp", [1.0, 0.01**0.25, 0.1, 0.01, 0.01]),
        ("cosine", [1.0, 0.01 + 0.99 * 0.5 * (1 + math.sqrt(0.5)), 0.505, 0.01, 0.01]),
        ("constant", [1.0, 1.0, 1.0, 1.0, 1.0]),
    ],
)
def test_learning_rate_factor_closed_forms(schedule, expected):
    factor = lr_factor(100, schedule, 0.01)
    assert [factor(s) for s in (0, 25, 50, 100, 150)] == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("schedule", ["exp", "cosine", "constant"])
def test_adam_runs_each_step_at_the_scheduled_rate(scan_file, tmp_path, schedule):
    """Step k (0-based) is taken at lr * factor(k) of the closed form, over a 12-step budget."""
    cfg = _cfg(scan_file, tmp_path / "run", steps=12, optim=OptimConfig(lr=2e-3, schedule=schedule, final_lr_ratio=0.2))
    rates = []
    run_fit(cfg, on_step=lambda run: rates.append(run.opt.param_groups[0]["lr"]))
    t = np.arange(12) / 12
    closed = {"exp": 0.2**t, "cosine": 0.2 + 0.8 * 0.5 * (1 + np.cos(np.pi * t)), "constant": np.ones(12)}[schedule]
    np.testing.assert_allclose(rates, 2e-3 * closed, rtol=1e-12)


def test_view_mode_draws_every_ray_of_a_step_from_one_training_view(scan_file, tmp_path, monkeypatch):
    drawn = []
    original = fit_loop.FitRun._loss

    def spy(self, idx):
        drawn.append(idx.clone())
        return original(self, idx)

    monkeypatch.setattr(fit_loop.FitRun, "_loss", spy)
    sampling = SamplingConfig(rays_per_step=64, mode="view", n_samples=12)
    run_fit(_cfg(scan_file, tmp_path / "view", steps=40, sampling=sampling))
    train, hold = split_views(10, 0.2)
    assert len(drawn) == 40 and len(hold) == 2
    views = [torch.unique(idx // PIXELS).tolist() for idx in drawn]
    assert all(len(v) == 1 for v in views)  # one view per step
    used = {v[0] for v in views}
    assert used <= set(train.tolist()) and not used & set(hold.tolist())
    assert used == set(train.tolist())  # and, over 40 steps, every training view
    assert all(len(torch.unique(idx % PIXELS)) > 32 for idx in drawn)  # pixels spread over the view

    drawn.clear()
    run_fit(_cfg(scan_file, tmp_path / "all", steps=4))  # mode 'all', for contrast
    assert all(len(torch.unique(idx // PIXELS)) > 1 for idx in drawn)
    assert not {int(v) for idx in drawn for v in idx // PIXELS} & set(hold.tolist())


# ---------------------------------------------------------------------------- pretraining on voxels


PRETRAIN_MODEL_YAML = """model:
  backbone:
    encoder: {n_levels: 4, log2_hashmap_size: 12, base_resolution: 4, per_level_scale: 1.6}
    mlp: {hidden: [16, 16], skips: []}
  modulation:
    encoder: {n_levels: 2, log2_hashmap_size: 10, base_resolution: 4}
    mlp: {hidden: [8], skips: [], out_activation: none}
"""


def test_pretraining_on_voxels_refuses_a_scan_without_ground_truth(cli, tmp_path):
    protocol = get_protocol("small").scaled(10).with_views(8)

    def scan(seed):
        return phantom_scan(protocol.cone_geometry(), protocol.volume_geometry(), photons=1e5, seed=seed)

    data = tmp_path / "data"
    data.mkdir()
    save_scan(scan(0), data / "with_gt.h5")
    no_gt = scan(1)
    no_gt.gt = no_gt.gt_geom = None
    save_scan(no_gt, data / "no_gt.h5")
    (tmp_path / "model.yaml").write_text(PRETRAIN_MODEL_YAML)
    argv = ["pretrain", "--scans", data, "--data", "voxels", "--steps", 2, "--device", "cpu",
            "--config", tmp_path / "model.yaml", "--output.no-tensorboard"]
    code, _, err = cli(*argv, "--out", tmp_path / "refused")
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(lines) == 1, err
    assert f"{data / 'no_gt.h5'}: --data voxels needs a ground truth" in lines[0]
    assert "--data projections" in lines[0] and "Traceback" not in err
    assert not (tmp_path / "refused" / "checkpoint.pt").exists()
    # with --skip-bad it trains on the other scan, and says which one it left out
    code, _, err = cli(*argv, "--out", tmp_path / "skipped", "--skip-bad")
    assert code == 0 and "skipping" in err and "no_gt.h5" in err
    summary = json.loads((tmp_path / "skipped" / "summary.json").read_text())
    assert summary["scans"] == 1 and "no_gt.h5" in summary["skipped"][0]
