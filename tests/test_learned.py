"""Learned reconstructors: reversible blocks invert and give the stored network's gradients,
tiling is exact, training lowers the validation loss and resumes bit for bit, model files of
another protocol, or holding Python objects, are refused."""

import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from nfrecon.data.scan import save_scan
from nfrecon.learned.config import LearnedConfig, LpdConfig
from nfrecon.learned.networks import LearnedPrimalDual
from nfrecon.learned.operator import MU_SCALE, operator_of_scan
from nfrecon.learned.trainer import Trainer, run_training

sys.path.insert(0, str(Path(__file__).parent))
from test_pretrain import random_scan

CPU = torch.device("cpu")


def _randomise(net: nn.Module, seed: int = 0, std: float = 0.2) -> nn.Module:
    """Non-zero weights everywhere (a fresh network's last layers are zero: its updates vanish)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * std)
    return net


@pytest.fixture(scope="module")
def scans(tmp_path_factory):
    d = tmp_path_factory.mktemp("learned_scans")
    for i in range(5):
        save_scan(random_scan(10 + i, 12, 8), d / f"scan{i}.h5")
    return d


@pytest.fixture(scope="module")
def op64(scans):
    """A scan's operator in float64 (the projector kernels and the torch reference take it)."""
    from nfrecon.data.scan import load_scan

    op = operator_of_scan(load_scan(scans / "scan0.h5"), CPU)
    return replace(op, g=op.g.double(), fdk=op.fdk.double())


def test_reversible_steps_rebuild_their_inputs_from_their_outputs(scans):
    from nfrecon.data.scan import load_scan

    op = operator_of_scan(load_scan(scans / "scan1.h5"), CPU)
    net = _randomise(LearnedPrimalDual(iterations=2, width=6))
    net.ctx.op = op
    g = torch.Generator().manual_seed(1)
    vol, proj = op.fdk.shape, op.g.shape
    state = (torch.randn(1, 3, *vol, generator=g), torch.randn(1, 3, *vol, generator=g),
             torch.randn(proj[0], 2, *proj[1:], generator=g), torch.randn(proj[0], 2, *proj[1:], generator=g))
    with torch.no_grad():
        for step in net.steps:
            out = step(state)
            assert max(float((a - b).abs().max()) for a, b in zip(out, state)) > 1e-2  # the step does something
            back = step.inverse(out)
            for a, b in zip(back, state):
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_memory_saving_gradients_equal_those_of_stored_activations(op64):
    torch.manual_seed(0)
    nets = [_randomise(LearnedPrimalDual(iterations=3, width=4, memory_saving=saving), std=0.1).double()
            for saving in (True, False)]
    target = torch.rand(op64.fdk.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    grads = []
    for net in nets:
        loss = torch.mean((net(op64) - target) ** 2)
        loss.backward()
        # the last iteration's second halves (gamma_b, lambda_b) do not reach the image: no gradient
        grads.append({n: torch.zeros_like(p) if p.grad is None else p.grad.clone() for n, p in net.named_parameters()})
    assert grads[0].keys() == grads[1].keys()
    assert any(float(g.abs().max()) > 0 for g in grads[1].values())
    for name in grads[1]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-9, atol=1e-12, msg=name)


def test_tiled_primal_networks_give_the_result_of_one_pass(op64):
    net = _randomise(LearnedPrimalDual(iterations=2, width=4), std=0.1).double()
    with torch.no_grad():
        whole = net(op64)
        net.ctx.tile_voxels = 12 * 12 * 7  # slabs of one slice plus the halo
        parts = net(op64)
    torch.testing.assert_close(parts, whole, rtol=1e-10, atol=1e-12)


def _cfg(scans, out, **kw):
    base = {"method": "lpd", "scans": (scans,), "out": out, "steps": 6, "val_every": 3, "checkpoint_every": 3,
            "device": "cpu", "progress": False, "tensorboard": False, "lr": 3e-3, "val_count": 2,
            "lpd": LpdConfig(iterations=2, width=4)}
    base.update(kw)
    return LearnedConfig(**base)


@pytest.mark.parametrize("method", ["lpd", "unet"])
def test_training_lowers_the_validation_loss_below_fdk(scans, tmp_path, method):
    cfg = _cfg(scans, tmp_path / method, method=method, steps=30, val_every=10, checkpoint_every=30)
    result = run_training(cfg)
    trainer = Trainer(replace(cfg, steps=1), run_training.__globals__["init_distributed"]("cpu"))
    fdk_loss = float(np.mean([float(torch.mean((p.op.fdk - p.target) ** 2)) for p in trainer.val]))
    best = result.summary["best"]["val_loss"]
    assert best < 0.97 * fdk_loss  # an untrained network is FDK itself (zero last layers)
    assert (tmp_path / method / "model.pt").is_file() and (tmp_path / method / "preview.png").is_file()


def test_interrupted_training_resumes_bit_for_bit(scans, tmp_path, monkeypatch):
    full = tmp_path / "full"
    run_training(_cfg(scans, full))
    part = tmp_path / "part"
    original = Trainer.train_step

    def dying(self):
        if self.step == 4:
            raise RuntimeError("killed")
        return original(self)

    monkeypatch.setattr(Trainer, "train_step", dying)
    with pytest.raises(RuntimeError, match="killed"):
        run_training(_cfg(scans, part))
    monkeypatch.setattr(Trainer, "train_step", original)
    run_training(_cfg(scans, part), resume=True)
    a = torch.load(full / "checkpoint.pt", weights_only=True)
    b = torch.load(part / "checkpoint.pt", weights_only=True)
    assert a["step"] == b["step"] == 6
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert (full / "history.csv").read_text().splitlines()[1:] != []


def test_recon_refuses_a_scan_of_another_protocol_or_grid(scans, tmp_path, cli):
    out = tmp_path / "m"
    run_training(_cfg(scans, out, steps=2, val_every=2))
    code, stdout, _ = cli("recon", "--model", out / "model.pt", "--scan", scans / "scan3.h5", "--out", tmp_path / "r")
    assert code == 0 and "PSNR" in stdout
    for size, views in ((12, 10), (14, 8)):
        save_scan(random_scan(1, size, views), tmp_path / f"other{size}_{views}.h5")
        code, _, err = cli("recon", "--model", out / "model.pt", "--scan", tmp_path / f"other{size}_{views}.h5",
                           "--out", tmp_path / "r2")
        assert code == 2 and len(err.strip().splitlines()) == 1
        assert "trained for another protocol or grid" in err and ("views" in err or "grid" in err)
    assert not (tmp_path / "r2" / "volume.nii.gz").exists()


class _Payload:
    def __reduce__(self):
        return (exec, ("open(__import__('os').environ['NFRECON_PWNED'], 'w').write('ran')",))


def test_model_files_load_weights_only_and_refuse_python_objects(tmp_path, cli, monkeypatch, scans):
    marker = tmp_path / "pwned"
    monkeypatch.setenv("NFRECON_PWNED", str(marker))
    evil = tmp_path / "model.pt"
    torch.save({"format": "nfrecon-checkpoint", "kind": "learned-model", "x": _Payload()}, evil)
    code, _, err = cli("recon", "--model", evil, "--scan", scans / "scan0.h5", "--out", tmp_path / "r")
    assert code == 2 and "refused" in err and not marker.exists()
    backbone_like = tmp_path / "other.pt"
    from nfrecon.fit.checkpoint import save_checkpoint

    save_checkpoint(backbone_like, {"format": "nfrecon-checkpoint", "kind": "backbone", "state": {}})
    code, _, err = cli("recon", "--model", backbone_like, "--scan", scans / "scan0.h5", "--out", tmp_path / "r")
    assert code == 2 and "not a learned model" in err


@pytest.mark.parametrize("extra, message", [
    (["--val-count", "5"], "--val-count 5: leaves no training scan"),
    (["--lpd.primal-channels", "5"], "--lpd.primal-channels: must be even"),
    (["--steps", "0"], "--steps: must be a positive integer"),
    (["--lr", "-1"], "--lr: must be a finite number > 0"),
])
def test_train_learned_bad_options_fail_in_one_line(scans, tmp_path, cli, extra, message):
    code, _, err = cli("train-learned", "--scans", scans, "--out", tmp_path / "o", "--no-progress", *extra)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_training_scans_without_ground_truth_are_refused(tmp_path, cli):
    scan = random_scan(3, 12, 8)
    scan = replace(scan, gt=None, gt_geom=None, recon_geom=scan.recon_geom)
    save_scan(scan, tmp_path / "nogt.h5")
    save_scan(random_scan(4, 12, 8), tmp_path / "ok.h5")
    code, _, err = cli("train-learned", "--scans", tmp_path / "nogt.h5", tmp_path / "ok.h5", "--val-count", "0",
                       "--out", tmp_path / "o", "--no-progress")
    assert code == 2 and "nogt.h5" in err and "ground truth" in err


def test_normalised_operator_is_water_per_box_and_adjoint_up_to_its_constant(op64):
    g = torch.Generator().manual_seed(5)
    x = torch.rand(op64.fdk.shape, dtype=torch.float64, generator=g)
    y = torch.rand(op64.g.shape, dtype=torch.float64, generator=g)
    lhs = float(torch.sum(op64.forward(x) * y))
    rhs = float(torch.sum(x * op64.adjoint(y))) * (MU_SCALE / op64.proj_scale) / op64.back_scale
    assert abs(lhs - rhs) <= 1e-9 * abs(lhs)
    chord = op64.forward(torch.ones_like(x))  # water through the box: of order one
    assert 0.5 < float(chord.max()) < 2.0


def test_bench_has_rows_for_learned_models_and_refuses_a_missing_one(tmp_path, cli):
    from test_pretrain import _npz_ct

    ct = _npz_ct(tmp_path / "ct.npz", 4)
    pop = tmp_path / "pop"
    assert cli("make-dataset", "--out", pop, "--count", "4", "--source", "mixed", "--procedural-fraction", "0.5",
               "--ct", ct, "--protocol", "small", "--size", "12", "--views", "6", "--seed", "3")[0] == 0
    cfg = _cfg(pop, tmp_path / "lpd", steps=2, val_every=2, val_count=1)
    run_training(cfg)
    bench = ["bench", "--ct", ct, "--protocol", "small", "--size", "12", "--views", "6", "--noise", "noisy",
             "--threads", "1", "--no-isolate", "--out"]
    code, _, _ = cli(*bench, tmp_path / "b", "--methods", "fdk", "lpd", "--lpd-model", tmp_path / "lpd" / "model.pt")
    assert code == 0
    import json

    doc = json.loads((tmp_path / "b" / "results.json").read_text())
    rows = {r["method"]: r for r in doc["results"]}
    assert rows["lpd"]["status"] == "ok" and rows["lpd"]["metrics"]["psnr_db"] > 0
    assert "Learned primal-dual" in (tmp_path / "b" / "results.md").read_text()
    code, _, err = cli(*bench, tmp_path / "c", "--methods", "unet")
    assert code == 2 and "--methods unet: needs --unet-model" in err
