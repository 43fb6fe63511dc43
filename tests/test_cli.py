"""The command line end to end at a tiny size, its help, and its handling of bad input."""

import json
import subprocess
import sys

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
        (["simulate", "--volume", "phantom", "--protocol", "small", "--size", "8", "--photons", "0", "--out", "{d}/o3.h5"],
         "photon count must be positive"),
        (["simulate", "--volume", "{d}/missing.nii.gz", "--out", "{d}/o4.h5"], "missing.nii.gz"),
        (["simulate", "--volume", "phantom", "--protocol", "nope", "--out", "{d}/o5.h5"], "unknown name 'nope'"),
        (["fit", "--preset", "nope", "--out", "{d}/o6"], "unknown preset 'nope'"),
        (["fit", "--steps", "0", "--out", "{d}/o7"], "steps must be >= 1"),
        (["eval", "--recon", "{d}/missing.nii.gz", "--gt", "{d}/missing.nii.gz"], "missing.nii.gz"),
    ],
)
def test_bad_input_one_line_error_exit_2_no_output(tmp_path, cli, argv, message):
    (tmp_path / "text.h5").write_text("this is not HDF5\n")
    before = sorted(p.name for p in tmp_path.iterdir())
    code, out, err = cli(*(a.format(d=tmp_path) for a in argv))
    assert code == 2
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and message in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written


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
    done = subprocess.run([sys.executable, "-m", "nfrecon", "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "nfrecon <command>" in done.stdout
    done = subprocess.run([sys.executable, "-m", "nfrecon", "frobnicate"], capture_output=True, text=True)
    assert done.returncode == 2 and "unknown command" in done.stderr
