"""The command line end to end at a tiny size, its help, and its handling of bad input."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from nfrecon.cli import main


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    code = main(["simulate", "--volume", "phantom", "--protocol", "small", "--size", "16", "--views", "10",
                 "--out", str(d / "scan.h5")])
    assert code == 0
    return d


def test_simulate_info_fdk_eval_pipeline(sim, cli):
    assert (sim / "scan.h5").is_file() and (sim / "scan_gt.nii.gz").is_file()
    code, out, _ = cli("info", sim / "scan.h5")
    assert code == 0 and "10 views" in out and "100000 photons" in out and "ground truth" in out
    code, out, _ = cli("fdk", "--scan", sim / "scan.h5", "--out", sim / "fdk", "--filter", "hann")
    assert code == 0 and "PSNR" in out
    for name in ("volume.nii.gz", "preview.png", "metrics.json", "config.yaml"):
        assert (sim / "fdk" / name).is_file()
    metrics = json.loads((sim / "fdk" / "metrics.json").read_text())
    code, out, _ = cli("eval", "--recon", sim / "fdk" / "volume.nii.gz", "--gt", sim / "scan_gt.nii.gz")
    assert code == 0
    evaluated = json.loads(out)
    assert evaluated["psnr_db"] == pytest.approx(metrics["vs_ground_truth"]["psnr_db"], abs=1e-4)
    assert "definitions" in evaluated
    code, out, _ = cli("info", sim / "fdk" / "volume.nii.gz")
    assert code == 0 and "16x16x16" in out


def test_fdk_hu_export_is_int16_without_scaling(sim, cli):
    import nibabel as nib

    for out, extra in (("fdk_mu", []), ("fdk_hu", ["--hu", "--mu-water", "0.02"])):
        code, _, _ = cli("fdk", "--scan", sim / "scan.h5", "--out", sim / out, *extra)
        assert code == 0
    mu_img, hu_img = nib.load(sim / "fdk_mu" / "volume.nii.gz"), nib.load(sim / "fdk_hu" / "volume.nii.gz")
    assert mu_img.get_data_dtype() == np.float32 and hu_img.get_data_dtype() == np.int16
    assert hu_img.dataobj.slope in (None, 1.0) and hu_img.dataobj.inter in (None, 0.0)
    expected = np.rint((np.asarray(mu_img.dataobj, np.float64) / 0.02 - 1) * 1000)
    np.testing.assert_array_equal(np.asarray(hu_img.dataobj), np.clip(expected, -32768, 32767))


@pytest.mark.parametrize(
    "argv, message",
    [
        (["fdk", "--scan", "{d}/missing.h5", "--out", "{d}/o1"], "missing.h5"),
        (["fdk", "--scan", "{d}/text.h5", "--out", "{d}/o2"], "not an HDF5"),
        (["simulate", "--volume", "phantom", "--protocol", "small", "--size", "8", "--photons", "0",
          "--out", "{d}/o3.h5"],
         "photon count must be positive"),
        (["simulate", "--volume", "{d}/missing.nii.gz", "--out", "{d}/o4.h5"], "missing.nii.gz"),
        (["simulate", "--volume", "phantom", "--protocol", "nope", "--out", "{d}/o5.h5"], "unknown name 'nope'"),
        (["fit", "--preset", "nope", "--out", "{d}/o6"], "unknown preset 'nope'"),
        (["fit", "--steps", "0", "--out", "{d}/o7"], "--steps: must be >= 1, got 0"),
        (["eval", "--recon", "{d}/missing.nii.gz", "--gt", "{d}/missing.nii.gz"], "missing.nii.gz"),
        (["fit", "--optim.lr", "nan", "--out", "{d}/o8"], "--optim.lr: must be a finite number > 0, got nan"),
        (["fit", "--optim.lr", "-1", "--out", "{d}/o8"], "--optim.lr: must be a finite number > 0, got -1.0"),
        (["fit", "--sampling.n-samples", "0", "--out", "{d}/o8"], "--sampling.n-samples: must be >= 1, got 0"),
        (["fit", "--sampling.rays-per-step", "0", "--out", "{d}/o8"], "--sampling.rays-per-step: must be >= 1, got 0"),
        (["fit", "--stop.holdout-fraction", "1.0", "--out", "{d}/o8"], "--stop.holdout-fraction: must be in [0, 1)"),
        (["fit", "--config", "{d}/lr.yaml", "--out", "{d}/o8"],
         "lr.yaml.optim: --optim.lr: must be a finite number > 0"),
        (["pretrain", "--scans", "{d}/text.h5", "--optim.backbone-lr", "0", "--out", "{d}/o9"],
         "--optim.backbone-lr: must be a finite number > 0, got 0.0"),
        (["simulate", "--protocol", "small", "--size", "8", "--arc", "0", "--out", "{d}/o10.h5"],
         "arc_deg (--arc) must not be 0"),
        (["simulate", "--protocol", "{d}/neg.yaml", "--out", "{d}/o11.h5"],
         "neg.yaml: protocol 'neg': need 0 < sod < sdd"),
        (["simulate", "--protocol", "{d}/part.yaml", "--out", "{d}/o12.h5"],
         "part.yaml: protocol: missing field(s) sdd,"),
        (["info", "{d}"], "is a folder, expected a scan file"),
        (["simulate", "--protocol", "small", "--size", "100000", "--out", "{d}/o13.h5"],
         "a scan of grid 100000x100000x100000, projections 50x100000x100000 needs about 1.49e+07 GiB of memory"),
        (["make-dataset", "--size", "10000", "--count", "1", "--out", "{d}/o14"],
         "each scan of grid 10000x10000x10000, projections 50x10000x10000 needs about 1.5e+04 GiB"),
    ],
)
def test_bad_input_one_line_error_exit_2_no_output(tmp_path, cli, argv, message):
    (tmp_path / "text.h5").write_text("this is not HDF5\n")
    (tmp_path / "lr.yaml").write_text("optim:\n  lr: -0.5\n")
    (tmp_path / "part.yaml").write_text("name: part\nsod: 100\n")
    (tmp_path / "neg.yaml").write_text("name: neg\nsod: -500\nsdd: 1000\ndet_shape: [8, 8]\npixel_size: [2, 2]\n"
                                       "n_views: 4\narc_deg: 200\nvol_shape: [8, 8, 8]\nvoxel_size: [2, 2, 2]\n")
    before = sorted(p.name for p in tmp_path.iterdir())
    code, _, err = cli(*(a.format(d=tmp_path) for a in argv))
    assert code == 2
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and message in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


# {d}: an empty folder holding file.txt (a file) and folder/ (a folder); {scan}: a valid scan.
@pytest.mark.parametrize(
    "argv, message",
    [
        (["fdk", "--scan", "{scan}", "--out", "{d}/file.txt"], "--out {d}/file.txt: exists and is not a folder"),
        (["fdk", "--scan", "{scan}", "--out", "{d}/file.txt/run"], "--out {d}/file.txt/run: {d}/file.txt is a file"),
        (["iterative", "--scan", "{scan}", "--out", "{d}/file.txt"], "--out {d}/file.txt: exists and is not a folder"),
        (["fit", "--scan", "{scan}", "--steps", "1", "--out", "{d}/file.txt"], "--out {d}/file.txt: exists and is not"),
        (["fit", "--scan", "{scan}", "--steps", "1", "--out", "{d}/file.txt/a/b"],
         "{d}/file.txt is a file, not a folder"),
        (["make-dataset", "--count", "1", "--out", "{d}/file.txt"], "--out {d}/file.txt: exists and is not a folder"),
        (["pretrain", "--scans", "{scan}", "--steps", "1", "--out", "{d}/file.txt/p"], "{d}/file.txt is a file"),
        (["simulate", "--protocol", "small", "--size", "8", "--out", "{d}/folder"],
         "--out {d}/folder: is a folder, expected a file name"),
        (["simulate", "--protocol", "small", "--size", "8", "--out", "{d}/file.txt/s.h5"], "{d}/file.txt is a file"),
        (["simulate", "--protocol", "small", "--size", "8", "--out", "{d}/folder.h5"],
         "--out (its ground truth) {d}/folder_gt.nii.gz: is a folder"),
    ],
)
def test_unwritable_outputs_are_refused_before_any_work(sim, tmp_path, cli, argv, message):
    (tmp_path / "file.txt").write_text("a file\n")
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder_gt.nii.gz").mkdir()  # where simulate --out folder.h5 puts its ground truth
    before = _tree(tmp_path)
    code, _, err = cli(*(a.format(d=tmp_path, scan=sim / "scan.h5") for a in argv))
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(lines) == 1 and message.format(d=tmp_path) in lines[0], err
    assert "Traceback" not in err and _tree(tmp_path) == before  # nothing written


@pytest.mark.parametrize(
    "argv",
    [
        ["fdk", "--scan", "{scan}", "--out", "{ro}/run"],
        ["iterative", "--scan", "{scan}", "--iters", "1", "--out", "{ro}/run"],
        ["fit", "--scan", "{scan}", "--steps", "1", "--out", "{ro}/run"],
        ["simulate", "--protocol", "small", "--size", "8", "--out", "{ro}/s.h5"],
        ["make-dataset", "--count", "1", "--size", "8", "--out", "{ro}/set"],
        ["pretrain", "--scans", "{scan}", "--steps", "1", "--out", "{ro}/p"],
    ],
    ids=lambda argv: argv[0],
)
def test_read_only_folder_is_refused_in_one_line(sim, tmp_path, argv):
    """A real read-only folder (mode 0555). Root may write anywhere: as root the command runs
    without the capabilities that override file permissions."""
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    done = subprocess.run([sys.executable, "-m", "nfrecon", *(a.format(ro=ro, scan=sim / "scan.h5") for a in argv)],
                          capture_output=True, text=True, check=False,
                          preexec_fn=_without_root_overrides if os.geteuid() == 0 else None)
    lines = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert done.returncode == 2 and len(lines) == 1 and f"{ro} is not writable" in lines[0], done.stderr
    assert "Traceback" not in done.stderr and list(ro.iterdir()) == []


def _without_root_overrides():
    """Drop CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH (1, 2) from the bounding set (prctl
    PR_CAPBSET_DROP = 24) before exec, so that root obeys file permissions."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):
        if libc.prctl(24, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


def test_help_reads_well(cli, capsys):
    code, out, _ = cli("--help")
    assert code == 0 and all(c in out for c in ("simulate", "fdk", "fit", "eval", "info"))
    for command, phrase in [("simulate", "--protocol"), ("fdk", "--filter"), ("fit", "--sampling.n-samples"),
                            ("eval", "--data-range"), ("info", "PATH")]:
        with pytest.raises(SystemExit) as exc:
            main([command, "--help"])
        out, _ = capsys.readouterr()
        assert exc.value.code == 0 and phrase in out


def test_console_script_entry_point():
    done = subprocess.run([sys.executable, "-m", "nfrecon", "--help"], capture_output=True, text=True, check=False)
    assert done.returncode == 0 and "nfrecon <command>" in done.stdout
    done = subprocess.run([sys.executable, "-m", "nfrecon", "frobnicate"], capture_output=True, text=True, check=False)
    assert done.returncode == 2 and "unknown command" in done.stderr


def _help(capsys, *argv) -> list[str]:
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--help"])
    assert exc.value.code == 0
    return [line.strip("│ ") for line in capsys.readouterr().out.splitlines()]


def _default(lines: list[str], flag: str) -> str:
    """The default that --help shows for ``flag`` (on its line or the lines below, up to the next flag)."""
    start = next(i for i, line in enumerate(lines) if line.split(" ")[0] in (flag, f"{flag},"))
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("--")), len(lines))
    return " ".join(lines[start:end]).split("(default: ")[1].split(")")[0]


def test_help_lists_the_presets_with_their_descriptions_and_shows_the_chosen_ones_values(capsys, monkeypatch):
    from nfrecon.fit import presets

    monkeypatch.setenv("COLUMNS", "120")
    fit = _help(capsys, "fit")
    for name in presets.names():
        assert f"{name}: {presets.description(name)}" in fit
    assert any(line.startswith("auto: ") for line in fit) and "none: the built-in defaults" in fit
    pretrain = "\n".join(_help(capsys, "pretrain"))
    assert "condcbnt-fast-tune: " in pretrain and "naf-fast: " not in pretrain
    naf = _help(capsys, "fit", "--preset", "naf")
    assert (_default(naf, "--steps"), _default(naf, "--sampling.n-samples"), _default(naf, "--preset")) == \
        ("75000", "192", "naf")
    fast = _help(capsys, "pretrain", "--preset=condcbnt-fast")
    assert (_default(fast, "--steps"), _default(fast, "--model.backbone.encoder.n-levels")) == ("2000", "8")


@pytest.mark.parametrize("command", ["fit", "pretrain"])
def test_argv_is_parsed_once_and_the_preset_resolved_once(command, tmp_path, monkeypatch, capsys):
    """Layers: preset < --config < flags; tyro reads argv once, the preset is resolved once and
    the command prints that name."""
    import importlib

    import tyro

    from nfrecon.fit import presets

    module = importlib.import_module(f"nfrecon.cli.{command}")
    calls = {"parse": 0, "resolve": 0}
    parse, resolve = tyro.cli, presets.resolve

    def counted(name, real):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return real(*args, **kwargs)
        return wrapper

    class Ran(Exception):
        pass

    def run(cfg, resume, overwrite):
        raise Ran(cfg, resume, overwrite)

    monkeypatch.setattr(tyro, "cli", counted("parse", parse))
    monkeypatch.setattr(presets, "resolve", counted("resolve", resolve))
    monkeypatch.setattr(module, f"run_{command}", run)
    (tmp_path / "run.yaml").write_text("steps: 5\nseed: 3\n")
    preset = "naf-best" if command == "fit" else "condcbnt-fast"
    with pytest.raises(Ran) as ran:
        main([command, "--preset", preset, "--config", str(tmp_path / "run.yaml"), "--device", "cpu", "--steps", "9",
              "--sampling.rays-per-step", "64", "--resume"])
    cfg, resume, overwrite = ran.value.args
    assert calls == {"parse": 1, "resolve": 1}
    assert f"preset {preset}, 9 steps" in capsys.readouterr().out
    assert ((cfg.steps, cfg.seed, cfg.sampling.rays_per_step, cfg.device, resume, overwrite)
            == (9, 3, 64, "cpu", True, False))
    assert cfg.sampling.n_samples == 64  # from the preset
