"""Per-scan fitting: exact resume, divergence roll-back, stopping, bad input, noise weights."""

import math
import os
import shlex
import signal
import subprocess
import sys
import time

import nibabel as nib
import numpy as np
import pytest
import torch

from nfrecon.cli import main
from nfrecon.configio import dump_yaml
from nfrecon.data.scan import save_scan
from nfrecon.errors import InputError
from nfrecon.fields.hashgrid import HashGridConfig
from nfrecon.fields.mlp import MLPConfig
from nfrecon.fields.naf import NAFFieldConfig
from nfrecon.fit import loop as fit_loop
from nfrecon.fit.checkpoint import load_checkpoint, payload_checksum
from nfrecon.fit.config import FitConfig, LossConfig, OptimConfig, OutputConfig, SamplingConfig, StopConfig
from nfrecon.fit.run import run_fit
from nfrecon.fit.stopping import EarlyStopper, split_views
from nfrecon.geometry.protocols import get_protocol
from nfrecon.simulate import phantom_scan

TINY_FIELD = NAFFieldConfig(
    encoder=HashGridConfig(n_levels=4, log2_hashmap_size=12, base_resolution=4, per_level_scale=1.6),
    mlp=MLPConfig(hidden=(16, 16), skips=(1,)),
)


@pytest.fixture(scope="module")
def scan_file(tmp_path_factory):
    protocol = get_protocol("small").scaled(16).with_views(10)
    scan = phantom_scan(protocol.cone_geometry(), protocol.volume_geometry(), radius_mm=150, photons=1e5, seed=0)
    path = tmp_path_factory.mktemp("scan") / "tiny.h5"
    save_scan(scan, path)
    return path


def _cfg(scan_file, out, **kw):
    base = {
        "scan": scan_file, "out": out, "steps": 24, "seed": 5, "device": "cpu", "field": TINY_FIELD,
        "sampling": SamplingConfig(rays_per_step=64, mode="all", n_samples=12),
        "stop": StopConfig(holdout_fraction=0.2, eval_every=4, patience=0),
        "output": OutputConfig(checkpoint_every=8, preview_every=12, tensorboard=False, progress=False),
    }
    base.update(kw)
    return FitConfig(**base)


def test_killed_fit_resumes_bit_for_bit(scan_file, tmp_path, monkeypatch):
    full = run_fit(_cfg(scan_file, tmp_path / "full"))

    def interrupt(run):
        if run.step == 13:  # after the checkpoint at step 8: steps 9-13 are redone on resume
            raise KeyboardInterrupt

    original = fit_loop.FitRun.run
    monkeypatch.setattr(fit_loop.FitRun, "run",
                        lambda self, resume=False, on_step=None: original(self, resume, interrupt))
    with pytest.raises(KeyboardInterrupt):
        run_fit(_cfg(scan_file, tmp_path / "killed"))
    monkeypatch.setattr(fit_loop.FitRun, "run", original)
    state = torch.load(tmp_path / "killed" / "checkpoint.pt", weights_only=True)
    assert state["step"] == 13  # written on the interrupt
    resumed = run_fit(_cfg(scan_file, tmp_path / "killed"), resume=True)
    assert resumed.steps_run == full.steps_run == 24
    assert np.array_equal(resumed.volume, full.volume)
    a = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "killed" / "checkpoint.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.metrics["holdout_rmse"] == full.metrics["holdout_rmse"]


# Runs `nfrecon fit` and holds step AT in the middle (after its rays and jitter were drawn)
# until the parent's signal has been handled, so that the signal lands inside that step.
# With the signal deferred, the handler is replaced after the first signal, which ends the
# wait; without it, SIGINT raises KeyboardInterrupt out of the sleep and SIGTERM kills.
_SIGNAL_MID_STEP = """
import signal, sys, time
from pathlib import Path
import torch
from nfrecon.cli import main
from nfrecon.fit import loop
marker, sig, at = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
torch.set_num_threads(int(sys.argv[4]))
original = loop.FitRun._loss
def held(self, idx):
    value = original(self, idx)
    if self.step == at and not marker.exists():
        handler = signal.getsignal(sig)
        marker.touch()
        while signal.getsignal(sig) is handler:
            time.sleep(0.01)
    return value
loop.FitRun._loss = held
sys.exit(main(sys.argv[5:]))
"""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_mid_step_then_resume_is_bit_for_bit(scan_file, tmp_path, sig):
    full = run_fit(_cfg(scan_file, tmp_path / "full"))
    dump_yaml(_cfg(scan_file, tmp_path / "killed"), tmp_path / "run.yaml")
    argv = ["fit", "--preset", "none", "--config", str(tmp_path / "run.yaml")]
    marker = tmp_path / "in-step-13"
    child = subprocess.Popen([sys.executable, "-c", _SIGNAL_MID_STEP, str(marker), str(int(sig)), "13",
                              str(torch.get_num_threads()), *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    while not marker.exists():
        assert child.poll() is None, child.communicate()
        time.sleep(0.01)
    os.kill(child.pid, sig)
    _, err = child.communicate()
    assert child.returncode == 128 + sig, err
    assert torch.load(tmp_path / "killed" / "checkpoint.pt", weights_only=True)["step"] == 14  # step 13 finished
    ckpt = tmp_path / "killed" / "checkpoint.pt"
    assert f"interrupted ({signal.Signals(sig).name}) at step 14: checkpoint {ckpt}" in err
    resume = err.split("resume with: ")[1].splitlines()[0]
    assert shlex.split(resume) == ["nfrecon", *argv, "--resume"]
    assert main(shlex.split(resume)[1:]) == 0
    resumed = np.asarray(nib.load(tmp_path / "killed" / "volume.nii.gz").dataobj)
    assert np.array_equal(resumed, np.asarray(nib.load(tmp_path / "full" / "volume.nii.gz").dataobj))
    assert np.array_equal(resumed, full.volume.transpose(2, 1, 0))
    a = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=True)
    b = torch.load(ckpt, weights_only=True)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"]) and a["stopper"] == b["stopper"]


def test_resume_refuses_a_checkpoint_of_another_config(scan_file, tmp_path):
    run_fit(_cfg(scan_file, tmp_path / "run", steps=4))
    before = (tmp_path / "run" / "volume.nii.gz").read_bytes()
    bigger = NAFFieldConfig(encoder=HashGridConfig(n_levels=5, log2_hashmap_size=12, base_resolution=4),
                            mlp=TINY_FIELD.mlp)
    with pytest.raises(InputError, match="field.encoder.n_levels=4 in the checkpoint, 5 now"):
        run_fit(_cfg(scan_file, tmp_path / "run", steps=8, field=bigger), resume=True)
    assert (tmp_path / "run" / "volume.nii.gz").read_bytes() == before
    with pytest.raises(InputError, match="holds a run already"):
        run_fit(_cfg(scan_file, tmp_path / "run"))


def test_corrupt_checkpoint_and_bad_options(scan_file, tmp_path):
    run_fit(_cfg(scan_file, tmp_path / "run", steps=4))
    ckpt = tmp_path / "run" / "checkpoint.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:200])
    with pytest.raises(InputError, match="corrupt or unreadable checkpoint"):
        run_fit(_cfg(scan_file, tmp_path / "run", steps=8), resume=True)
    with pytest.raises(InputError, match="--steps: must be >= 1, got 0"):
        run_fit(_cfg(scan_file, tmp_path / "other", steps=0))
    assert not (tmp_path / "other").exists()
    with pytest.raises(InputError, match="nothing to resume"):
        run_fit(_cfg(scan_file, tmp_path / "fresh"), resume=True)


def test_flipped_bytes_in_a_checkpoint_are_refused_and_the_file_kept(scan_file, tmp_path):
    run_fit(_cfg(scan_file, tmp_path / "run", steps=4))
    ckpt = tmp_path / "run" / "checkpoint.pt"
    data = bytearray(ckpt.read_bytes())
    table = max(torch.load(ckpt, weights_only=True)["model"].values(), key=torch.Tensor.numel)
    at = bytes(data).find(table.numpy().tobytes())  # torch.save stores tensor bytes uncompressed
    assert at > 0 and table.numel() * 4 >= 512
    data[at + 256 : at + 512] = b"\xff" * 256  # 64 float32 entries of the hash table become NaN
    ckpt.write_bytes(bytes(data))
    assert torch.isnan(max(torch.load(ckpt, weights_only=True)["model"].values(), key=torch.Tensor.numel)).sum() == 64
    with pytest.raises(InputError, match=f"{ckpt}: corrupt checkpoint \\(checksum mismatch"):
        run_fit(_cfg(scan_file, tmp_path / "run", steps=8), resume=True)
    assert ckpt.read_bytes() == bytes(data)  # not overwritten


def test_checkpoint_with_nan_and_a_valid_checksum_is_refused(tmp_path):
    state = {"format": "nfrecon-checkpoint", "step": 3, "model": {"w": torch.tensor([1.0, float("nan")])}}
    torch.save({**state, "checksum": payload_checksum(state)}, tmp_path / "nan.pt")
    with pytest.raises(InputError, match=r"nan.pt: corrupt checkpoint: model.w holds NaN or Inf"):
        load_checkpoint(tmp_path / "nan.pt")
    state["model"]["w"][1] = 2.0
    torch.save({**state, "checksum": payload_checksum(state)}, tmp_path / "ok.pt")
    assert torch.equal(load_checkpoint(tmp_path / "ok.pt")["model"]["w"], torch.tensor([1.0, 2.0]))


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("touch ran",))


def test_a_checkpoint_that_would_run_code_is_refused_without_advice_to_run_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.save({"format": "nfrecon-checkpoint", "payload": _RunsCode()}, tmp_path / "evil.pt")
    with pytest.raises(InputError) as err:
        load_checkpoint(tmp_path / "evil.pt")
    message = str(err.value)
    assert message.startswith(f"{tmp_path / 'evil.pt'}: refused") and "system" in message
    assert "weights_only" not in message and "\n" not in message and not (tmp_path / "ran").exists()


def test_diverging_parameters_roll_back_and_never_replace_a_good_checkpoint(scan_file, tmp_path):
    run_fit(_cfg(scan_file, tmp_path / "run", steps=4))
    ckpt = tmp_path / "run" / "checkpoint.pt"
    good = ckpt.read_bytes()
    # Resumed at an absurd learning rate: each update blows the parameters up to ~1e35 (finite)
    # while the loss of that step, computed before the update, is finite; such a state was
    # checkpointed at step 8 over the good checkpoint of step 4.
    with pytest.raises(InputError, match="the fit diverged at step"), \
            pytest.warns(UserWarning, match=r"became (nan|non-finite) at step \d+: rolled back"):
        run_fit(_cfg(scan_file, tmp_path / "run", steps=12, optim=OptimConfig(lr=3e37)), resume=True)
    assert ckpt.read_bytes() == good


def test_non_finite_loss_rolls_back_and_lowers_the_rate(scan_file, tmp_path, monkeypatch):
    calls = {"n": 0}
    original = fit_loop.FitRun._loss

    def flaky(self, idx):
        calls["n"] += 1
        loss = original(self, idx)
        return loss * float("nan") if calls["n"] in (6, 7) else loss

    monkeypatch.setattr(fit_loop.FitRun, "_loss", flaky)
    with pytest.warns(UserWarning, match="rolled back"):
        result = run_fit(_cfg(scan_file, tmp_path / "run", steps=10))
    assert result.steps_run == 10 and np.all(np.isfinite(result.volume))
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert state["lr_scale"] == 0.25

    monkeypatch.setattr(fit_loop.FitRun, "_loss", lambda self, idx: original(self, idx) * float("inf"))
    with pytest.raises(InputError, match="diverged at step"), pytest.warns(UserWarning):
        run_fit(_cfg(scan_file, tmp_path / "diverges", steps=10))


def test_poisson_weights_follow_expected_counts(scan_file, tmp_path):
    from nfrecon.data.scan import load_scan

    scan = load_scan(scan_file)
    cfg = _cfg(scan_file, tmp_path / "w", loss=LossConfig(kind="poisson"))
    run = fit_loop.FitRun(torch.nn.Linear(1, 1), scan, cfg, torch.device("cpu"))
    p = torch.as_tensor(scan.projections).reshape(-1)
    ratio = run.weight / torch.exp(-p)
    torch.testing.assert_close(ratio, torch.full_like(ratio, ratio[0].item()))  # proportional to I0 exp(-p)
    train = torch.zeros(scan.geom.n_views, dtype=torch.bool)
    train[torch.as_tensor(run.train_views)] = True
    assert math.isclose(run.weight[train.repeat_interleave(16 * 16)].mean().item(), 1.0, rel_tol=1e-5)
    noiseless = load_scan(scan_file)
    noiseless.photons = None
    with pytest.raises(InputError, match="photon count"):
        fit_loop.FitRun(torch.nn.Linear(1, 1), noiseless, cfg, torch.device("cpu"))


def test_holdout_split_and_early_stopper():
    train, hold = split_views(50, 0.1)
    assert len(hold) == 5 and 0 not in hold and 49 not in hold
    assert sorted(np.concatenate([train, hold]).tolist()) == list(range(50))
    assert np.all(np.diff(hold) >= 8)  # spread over the scan
    assert len(split_views(50, 0.0)[1]) == 0
    stop = EarlyStopper(patience=2, min_improvement=0.01)
    errors = [1.0, 0.5, 0.499, 0.498, 0.3]
    flags = [stop.update(i, e) for i, e in enumerate(errors[:4])]
    # 0.499 and 0.498 are new lows (kept) but not 1% improvements (patience runs out)
    assert flags == [True, True, True, True] and stop.should_stop and stop.best_step == 3
    assert stop.update(4, errors[4]) and not stop.should_stop
