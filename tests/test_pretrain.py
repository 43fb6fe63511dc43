"""CondCBNT pretraining (one process and 2-process gloo DDP through torchrun), resume, bad
input, and test-time fitting of a modulation field over the pretrained backbone."""

import csv
import hashlib
import json
import os
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from nfrecon.cli import main
from nfrecon.data.phantom import Ellipsoid, EllipsoidPhantom
from nfrecon.data.scan import load_scan_metadata, save_scan
from nfrecon.errors import InputError
from nfrecon.fields.conditioned import BackboneConfig, ModulationConfig
from nfrecon.fields.hashgrid import HashGridConfig
from nfrecon.fields.mlp import MLPConfig
from nfrecon.fit.backbone import read_backbone
from nfrecon.fit.config import (
    ConditionedModelConfig,
    PretrainConfig,
    PretrainOptimConfig,
    PretrainOutputConfig,
    SamplingConfig,
)
from nfrecon.fit.pretrain import resolve_scan_paths, run_pretrain
from nfrecon.geometry.protocols import get_protocol
from nfrecon.geometry.volume import VolumeGeometry
from nfrecon.simulate import simulate_scan

REPO = Path(__file__).resolve().parents[1]
MODEL = ConditionedModelConfig(
    backbone=BackboneConfig(HashGridConfig(n_levels=4, log2_hashmap_size=12, base_resolution=4, per_level_scale=1.6),
                            MLPConfig(hidden=(16, 16), skips=())),
    modulation=ModulationConfig(HashGridConfig(n_levels=2, log2_hashmap_size=10, base_resolution=4),
                                MLPConfig(hidden=(8,), skips=(), out_activation="none")),
)
MODEL_YAML = """model:
  backbone:
    encoder: {n_levels: 4, log2_hashmap_size: 12, base_resolution: 4, per_level_scale: 1.6}
    mlp: {hidden: [16, 16], skips: []}
  modulation:
    encoder: {n_levels: 2, log2_hashmap_size: 10, base_resolution: 4}
    mlp: {hidden: [8], skips: [], out_activation: none}
"""


def random_scan(seed: int, size: int, views: int):
    """A noisy scan of a random ellipsoid phantom on the 'small' protocol scaled to size^3."""
    rng = np.random.default_rng(seed)
    protocol = get_protocol("small").scaled(size).with_views(views)
    geom, grid = protocol.cone_geometry(), protocol.volume_geometry()
    r = 0.28 * float(min(grid.size))
    parts = [Ellipsoid((0.0, 0.0, 0.0), (r, 0.9 * r, 0.8 * r), 0.0, 0.02)]
    for _ in range(3):
        parts.append(Ellipsoid(tuple(rng.uniform(-0.4, 0.4, 3) * r), tuple(rng.uniform(0.15, 0.35, 3) * r),
                               float(rng.uniform(0, 180)), float(rng.uniform(-0.01, 0.02))))
    mu = np.clip(EllipsoidPhantom(tuple(parts)).voxelize(grid), 0, None)
    return simulate_scan(mu, grid, geom, grid, photons=1e5, seed=seed)


@pytest.fixture(scope="module")
def scans(tmp_path_factory):
    """Four scans with two different grids and view counts."""
    d = tmp_path_factory.mktemp("scans")
    for i, (size, views) in enumerate([(12, 8), (10, 10), (12, 8), (10, 10)]):
        save_scan(random_scan(i, size, views), d / f"scan{i}.h5")
    return d


def _cfg(scans, out, **kw):
    base = {
        "scans": (scans,), "out": out, "data": "projections", "steps": 12, "seed": 3, "device": "cpu",
        "points_per_step": 256, "model": MODEL,
        "sampling": SamplingConfig(rays_per_step=96, mode="all", n_samples=12),
        "optim": PretrainOptimConfig(backbone_lr=0.02, modulation_lr=0.02),
        "output": PretrainOutputConfig(checkpoint_every=4, log_every=2, preview_every=6, tensorboard=False,
                                       progress=False),
    }
    base.update(kw)
    return PretrainConfig(**base)


def _history(out):
    rows = list(csv.DictReader((out / "history.csv").open()))
    return [int(r["step"]) for r in rows], [float(r["loss"]) for r in rows]


def _states(out):
    """Backbone and per-scan modulation weights of the run in ``out`` (from its checkpoint)."""
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    mods = {}
    for f in sorted((out / ckpt["modulations"]).glob("*.pt")):
        part = torch.load(f, weights_only=True)
        mods[part["name"]] = part["state"]
    return ckpt, mods


def _equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_two_process_ddp_through_torchrun_and_resume_elsewhere(scans, tmp_path, monkeypatch):
    out, dump = tmp_path / "run", tmp_path / "dump"
    (tmp_path / "model.yaml").write_text(MODEL_YAML)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NFRECON_PRETRAIN_DUMP": str(dump),
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "nfrecon",
           "pretrain", "--scans", str(scans), "--out", str(out), "--preset", "none",
           "--config", str(tmp_path / "model.yaml"), "--device", "cpu", "--steps", "32", "--seed", "3",
           "--sampling.rays-per-step", "96", "--sampling.n-samples", "12",
           "--optim.backbone-lr", "0.05", "--optim.modulation-lr", "0.05", "--optim.schedule", "constant",
           "--output.checkpoint-every", "8", "--output.log-every", "8",
           "--output.no-tensorboard", "--output.no-progress"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    rank0, rank1 = (torch.load(dump / f"rank{r}-end.pt", weights_only=True) for r in (0, 1))
    ckpt, mods = _states(out)
    # the backbone replicas are identical, to the bit, and are what the checkpoint holds
    assert _equal(rank0["backbone"], rank1["backbone"]) and _equal(rank0["backbone"], ckpt["backbone"])
    start = torch.load(dump / "rank0-start.pt", weights_only=True)
    assert not torch.equal(start["backbone"]["encoder.table"], rank0["backbone"]["encoder.table"])
    # patients are sharded r, r + 2: each rank holds only its own modulations
    names = sorted(str(p) for p in scans.glob("*.h5"))
    assert sorted(rank0["modulations"]) == names[0::2] and sorted(rank1["modulations"]) == names[1::2]
    assert ckpt["scans"] == names and ckpt["world_size"] == 2 and ckpt["step"] == 32
    lasts = [m["mlp.layers.1.weight"] for m in mods.values()]  # zero at the start in every scan
    assert all(w.abs().max() > 0 for w in lasts)
    assert all(not torch.equal(lasts[i], lasts[j]) for i in range(4) for j in range(i))
    steps, losses = _history(out)
    assert steps == [8, 16, 24, 32] and losses[-1] < 0.5 * losses[0]
    assert json.loads((out / "summary.json").read_text())["world_size"] == 2
    assert (out / "backbone.pt").is_file() and len(list(out.glob("modulations-*"))) == 1

    # resume in one process (another world size): everything restored exactly, step counter included
    monkeypatch.setenv("NFRECON_PRETRAIN_DUMP", str(tmp_path / "dump1"))
    optim = PretrainOptimConfig(backbone_lr=0.05, modulation_lr=0.05, schedule="constant")
    output = PretrainOutputConfig(checkpoint_every=8, log_every=8, tensorboard=False, progress=False)
    result = run_pretrain(_cfg(scans, out, steps=40, optim=optim, output=output), resume=True)
    first = torch.load(tmp_path / "dump1" / "rank0-start.pt", weights_only=True)
    assert first["step"] == 32 and _equal(first["backbone"], ckpt["backbone"])
    assert first["modulations"].keys() == mods.keys() and all(_equal(first["modulations"][k], mods[k]) for k in mods)
    assert result.steps_run == 8 and result.summary["steps"] == 40
    assert _history(out)[0] == [8, 16, 24, 32, 40]


def test_interrupted_run_resumes_bit_for_bit(scans, tmp_path):
    output = PretrainOutputConfig(checkpoint_every=4, log_every=2, preview_every=6, tensorboard=True, progress=False)
    cfg = _cfg(scans, tmp_path / "full", data="voxels", output=output)
    full = run_pretrain(cfg)
    assert any((tmp_path / "full" / "tb").iterdir())
    assert full.steps_run == 12 and [s for s, _ in full.history] == [2, 4, 6, 8, 10, 12]

    def terminate(trainer):  # a real SIGTERM, as from a batch system, after step 7
        if trainer.step == 7:
            os.kill(os.getpid(), signal.SIGTERM)

    killed = replace(cfg, out=tmp_path / "killed")
    with pytest.raises(KeyboardInterrupt):
        run_pretrain(killed, on_step=terminate)
    state = torch.load(tmp_path / "killed" / "checkpoint.pt", weights_only=True)
    assert state["step"] == 7 and state["modulations"] == "modulations-00000007"
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # handlers restored
    resumed = run_pretrain(killed, resume=True)
    assert resumed.steps_run == 5
    (a_ckpt, a_mods), (b_ckpt, b_mods) = _states(tmp_path / "full"), _states(tmp_path / "killed")
    assert _equal(a_ckpt["backbone"], b_ckpt["backbone"])
    assert a_mods.keys() == b_mods.keys() and all(_equal(a_mods[k], b_mods[k]) for k in a_mods)
    assert _equal(a_ckpt["backbone_optimizer"]["state"][0], b_ckpt["backbone_optimizer"]["state"][0])
    # the log: identical, except the row of step 8, which after the resume averages step 8 alone
    (steps, a), (steps_b, b) = _history(tmp_path / "full"), _history(tmp_path / "killed")
    assert steps == steps_b == [2, 4, 6, 8, 10, 12] and a[:3] + a[4:] == b[:3] + b[4:]
    with pytest.raises(InputError, match="model.backbone.mlp.hidden"):
        bigger = replace(MODEL, backbone=BackboneConfig(MODEL.backbone.encoder, MLPConfig(hidden=(16, 17), skips=())))
        run_pretrain(replace(killed, steps=20, model=bigger), resume=True)
    with pytest.raises(InputError, match="holds a run already"):
        run_pretrain(killed)


def test_bad_scans_stop_before_training_unless_skipped(scans, tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    for f in sorted(scans.glob("*.h5"))[:2]:
        (d / f.name).write_bytes(f.read_bytes())
    (d / "broken.h5").write_bytes(b"not an HDF5 file at all")
    with pytest.raises(InputError, match="broken.h5: not an HDF5 file.*--skip-bad"):
        run_pretrain(_cfg(d, tmp_path / "stopped"))
    assert not (tmp_path / "stopped" / "checkpoint.pt").exists()
    with pytest.warns(UserWarning, match="skipping .*broken.h5"):
        result = run_pretrain(_cfg(d, tmp_path / "skipped", steps=2, skip_bad=True))
    assert result.summary["scans"] == 2 and "broken.h5" in result.summary["skipped"][0]
    # --data voxels needs ground truths; missing inputs are named
    with pytest.raises(InputError, match="missing.h5: no such file"):
        resolve_scan_paths([d / "scan0.h5", d / "missing.h5"])
    (tmp_path / "list.txt").write_text("data/scan0.h5  # first\n\ndata/scan1.h5\n")
    assert resolve_scan_paths([tmp_path / "list.txt"]) == [tmp_path / "data" / "scan0.h5",
                                                           tmp_path / "data" / "scan1.h5"]
    with pytest.raises(InputError, match="listed twice"):
        resolve_scan_paths([tmp_path / "list.txt", d / "scan1.h5"])


def test_nproc_launches_torchrun_without_itself(scans, tmp_path, monkeypatch, capsys):
    seen = {}

    def fake_run(cmd, env=None, check=False):
        seen["cmd"] = cmd
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr("nfrecon.cli.pretrain.subprocess.run", fake_run)
    assert main(["pretrain", "--nproc", "3", "--scans", str(scans), "--out", str(tmp_path / "o"), "--steps", "5"]) == 0
    cmd = seen["cmd"]
    assert cmd[:3] == [sys.executable, "-m", "torch.distributed.run"] and cmd[cmd.index("--nproc-per-node") + 1] == "3"
    assert cmd[cmd.index("-m", 3):] == ["-m", "nfrecon", "pretrain", "--scans", str(scans),
                                        "--out", str(tmp_path / "o"), "--steps", "5"]
    assert main(["pretrain", "--nproc", "2", "--scans", str(tmp_path / "nothing"), "--out", str(tmp_path / "o")]) == 2
    assert "nothing: no such file or folder" in capsys.readouterr().err


def test_voxel_data_samples_the_voxel_centres_of_the_numpy_grid():
    # one formula: the torch points of --data voxels (and evaluate_grid) are the numpy voxel centres, bit for bit
    geom = VolumeGeometry((3, 4, 5), (0.3, 1 / 3, 0.7), (1.1, -2.3, 0.45))
    flat = torch.tensor([0, 7, 21, geom.n_voxels - 1])
    expected = torch.from_numpy(geom.voxel_centers().reshape(-1, 3)[flat.numpy()])
    assert torch.equal(geom.voxel_centers_at(flat), expected)
    assert torch.equal(geom.voxel_centers_at(flat), torch.from_numpy(geom.index_to_world(np.stack(
        np.unravel_index(flat.numpy(), geom.shape), axis=-1))))


@pytest.fixture(scope="module")
def backbone_file(scans, tmp_path_factory):
    out = tmp_path_factory.mktemp("pre") / "run"
    run_pretrain(_cfg(scans, out, data="voxels", steps=4))
    return out / "backbone.pt"


def _fit_argv(backbone, scan, out, *extra):
    return ["fit", "--method", "condcbnt", "--backbone", str(backbone), "--scan", str(scan), "--out", str(out),
            "--steps", "6", "--sampling.rays-per-step", "64", "--sampling.n-samples", "12", "--stop.eval-every", "3",
            "--output.checkpoint-every", "3", "--output.no-tensorboard", "--output.no-progress", *extra]


def test_test_time_fit_runs_end_to_end(scans, backbone_file, tmp_path, capsys):
    scan = scans / "scan1.h5"
    assert main(_fit_argv(backbone_file, scan, tmp_path / "frozen")) == 0
    out = capsys.readouterr().out
    assert "condcbnt" in out and "PSNR" in out
    metrics = json.loads((tmp_path / "frozen" / "metrics.json").read_text())
    assert metrics["method"] == "condcbnt" and metrics["steps_run"] == 6 and "vs_ground_truth" in metrics
    assert (tmp_path / "frozen" / "volume.nii.gz").is_file() and (tmp_path / "frozen" / "preview.png").is_file()
    # the sizes came from backbone.pt; the backbone stayed frozen unless unfrozen
    cfg = yaml.safe_load((tmp_path / "frozen" / "config.yaml").read_text())
    assert (cfg["condcbnt"]["backbone"]["mlp"]["hidden"] == [16, 16]
            and cfg["condcbnt"]["modulation"]["mlp"]["hidden"] == [8])
    pretrained = torch.load(backbone_file, weights_only=True)["state"]
    frozen = torch.load(tmp_path / "frozen" / "checkpoint.pt", weights_only=True)["model"]
    assert all(torch.equal(frozen[f"backbone.{k}"], v) for k, v in pretrained.items())
    assert main(_fit_argv(backbone_file, scan, tmp_path / "thawed", "--condcbnt.unfreeze-after", "3",
                          "--condcbnt.backbone-lr", "0.01")) == 0
    thawed = torch.load(tmp_path / "thawed" / "checkpoint.pt", weights_only=True)["model"]
    assert not torch.equal(thawed["backbone.encoder.table"], pretrained["encoder.table"])
    # resuming with other modulation sizes is refused, naming the key
    code = main(_fit_argv(backbone_file, scan, tmp_path / "frozen", "--resume", "--steps", "9",
                          "--condcbnt.modulation.mlp.hidden", "4"))
    assert code == 2 and "condcbnt.modulation.mlp.hidden=[8] in the checkpoint, [4] now" in capsys.readouterr().err


@pytest.mark.parametrize("extra, message", [
    (["--method", "condcbnt"], "--backbone: method condcbnt needs a pretrained backbone"),
    (["--method", "condcbnt", "--backbone", "{backbone}", "--condcbnt.backbone.mlp.hidden", "16", "8"],
     "condcbnt.backbone.mlp.hidden=[16, 16] in the checkpoint, [16, 8] now"),
    (["--method", "condcbnt", "--backbone", "{d}/missing.pt"], "missing.pt: checkpoint not found"),
])
def test_fit_condcbnt_bad_input(scans, backbone_file, tmp_path, capsys, extra, message):
    argv = ["fit", "--scan", str(scans / "scan0.h5"), "--out", str(tmp_path / "o"), "--steps", "2",
            *(a.format(backbone=backbone_file, d=tmp_path) for a in extra)]
    assert main(argv) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and message in err[0]
    assert not (tmp_path / "o").exists()


def _npz_ct(path: Path, seed: int) -> Path:
    """A CT file (HU, 24^3 voxels of 12 mm): a body ellipsoid with a few random organs."""
    rng = np.random.default_rng(seed)
    k, j, i = np.meshgrid(*(np.arange(24) - 11.5,) * 3, indexing="ij")
    hu = np.where((i / 10) ** 2 + (j / 8) ** 2 + (k / 11) ** 2 < 1, 0, -1000).astype(np.int16)
    for _ in range(3):
        c, r = rng.uniform(-5, 5, 3), rng.uniform(2, 4)
        hu[(k - c[0]) ** 2 + (j - c[1]) ** 2 + (i - c[2]) ** 2 < r * r] = int(rng.integers(-600, 900))
    np.savez(path, volume_hu=hu, spacing_zyx_mm=np.float32([12, 12, 12]))
    return path


def test_held_out_ct_and_its_variants_never_reach_the_backbone(tmp_path, cli):
    a, b = _npz_ct(tmp_path / "patient_a.npz", 1), _npz_ct(tmp_path / "patient_b.npz", 2)
    copy_of_a = tmp_path / "renamed.npz"
    copy_of_a.write_bytes(a.read_bytes())  # the same CT under another name: identity is the digest
    pop = tmp_path / "population"
    code, _, _ = cli("make-dataset", "--out", pop, "--count", "8", "--source", "mixed", "--procedural-fraction",
                     "0.25", "--ct", a, b, "--protocol", "small", "--size", "12", "--views", "6", "--seed", "2")
    assert code == 0
    index = json.loads((pop / "dataset.json").read_text())
    assert [e["source"] for e in index["scans"]].count("procedural") == index["procedural_scans"] == 2
    assert [c["scans"] for c in index["cts"]] == [3, 3]  # the CTs take turns
    digest = {c["sha256"]: Path(c["file"]).name for c in index["cts"]}
    for entry in index["scans"]:
        meta = load_scan_metadata(pop / entry["file"])
        assert meta.get("source_ct", {}).get("sha256") == entry.get("ct_sha256")
    out = tmp_path / "loo"
    assert cli("pretrain", "--scans", pop, "--exclude-ct", copy_of_a, "--out", out, "--data", "voxels",
               "--steps", "2", "--points-per-step", "64", "--device", "cpu", "--output.no-tensorboard",
               "--output.no-progress", "--model.backbone.mlp.hidden", "8", "--model.modulation.mlp.hidden", "4")[0] == 0
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    used = {load_scan_metadata(p).get("source_ct", {}).get("sha256") for p in state["scans"]}
    a_sha = hashlib.sha256(a.read_bytes()).hexdigest()
    assert len(state["scans"]) == 5 and a_sha not in used and digest[a_sha] == "patient_a.npz"
    file = read_backbone(out / "backbone.pt")
    assert [(c["name"], c["scans"]) for c in file.training_cts] == [("patient_b.npz", 3)]
    assert [(c["sha256"], c["scans_left_out"]) for c in file.held_out_cts] == [(a_sha, 3)]
    # a fit of a scan of the held-out CT is a clean test; of a training CT, it warns
    fit = ["fit", "--method", "condcbnt", "--backbone", out / "backbone.pt", "--steps", "2", "--output.no-tensorboard",
           "--output.no-progress", "--sampling.rays-per-step", "32", "--sampling.n-samples", "8"]
    assert cli("simulate", "--volume", a, "--protocol", "small", "--size", "12", "--views", "6",
               "--out", tmp_path / "a.h5")[0] == 0
    code, _, err = cli(*fit, "--scan", tmp_path / "a.h5", "--out", tmp_path / "fit_a")
    assert code == 0 and "not a held-out test" not in err
    b_scan = next(e["file"] for e in index["scans"] if e.get("ct") == "patient_b.npz")
    code, _, err = cli(*fit, "--scan", pop / b_scan, "--out", tmp_path / "fit_b")
    assert code == 0 and "pretrained on 3 scan(s) made from this scan's CT (patient_b.npz)" in err


def test_exclude_ct_errors_name_the_option(tmp_path, cli):
    a = _npz_ct(tmp_path / "a.npz", 1)
    pop = tmp_path / "pop"
    assert cli("make-dataset", "--out", pop, "--count", "2", "--source", "augment", "--ct", a, "--protocol", "small",
               "--size", "8", "--views", "4", "--noiseless")[0] == 0
    base = ["pretrain", "--scans", pop, "--out", tmp_path / "o", "--steps", "1", "--device", "cpu"]
    code, _, err = cli(*base, "--exclude-ct", tmp_path / "missing.npz")
    assert code == 2 and "missing.npz: no such file or folder" in err
    code, _, err = cli(*base, "--exclude-ct", a)
    assert code == 2 and "--exclude-ct: every training scan was made from a held-out CT" in err
    assert not (tmp_path / "o").exists()
