"""``nfrecon bench`` at a tiny size: its files, numbers recomputed independently, bad input."""

import csv
import json
from itertools import pairwise

import nibabel as nib
import numpy as np
import pytest
from PIL import Image
from skimage.metrics import structural_similarity

from nfrecon.bench.config import BenchConfig
from nfrecon.bench.published import PUBLISHED
from nfrecon.bench.runner import plan, simulate_conditions
from nfrecon.bench.table import summarize
from nfrecon.cli import main
from nfrecon.data.volumes import volume_sha256
from nfrecon.fields.conditioned import Backbone, BackboneConfig, ModulationConfig
from nfrecon.fields.hashgrid import HashGridConfig
from nfrecon.fields.mlp import MLPConfig
from nfrecon.fit.backbone import save_backbone

STEPS = 12


def _write_ct(path) -> None:
    """A 24^3 CT at 10 mm (240 mm, inside the scaled protocol's field of view): air, a water
    ellipsoid, a bone and a lung-like insert, in HU."""
    n = 24
    z, y, x = np.meshgrid(*(np.arange(n) - (n - 1) / 2,) * 3, indexing="ij")
    hu = np.full((n, n, n), -1000, np.int16)
    hu[(z / 10) ** 2 + (y / 8) ** 2 + (x / 10) ** 2 <= 1] = 0
    hu[(z / 4) ** 2 + ((y - 2) / 3) ** 2 + ((x + 3) / 3) ** 2 <= 1] = 1000
    hu[(z / 5) ** 2 + ((y + 1) / 3) ** 2 + ((x - 4) / 2) ** 2 <= 1] = -500
    np.savez(path, volume_hu=hu, spacing_zyx_mm=np.array([10, 10, 10], np.float32))


def _write_backbone(path) -> None:
    """An untrained, tiny CondCBNT backbone file (the runner's interface, not its quality)."""
    cfg = BackboneConfig(encoder=HashGridConfig(n_levels=4, log2_hashmap_size=12, base_resolution=4,
                                                per_level_scale=1.6),
                         mlp=MLPConfig(hidden=(16, 16), skips=()))
    modulation = ModulationConfig(encoder=HashGridConfig(n_levels=2, log2_hashmap_size=10, base_resolution=3),
                                  mlp=MLPConfig(hidden=(8,), skips=(), out_activation="none"))
    save_backbone(path, Backbone(cfg, 0.05), modulation, step=0, n_scans=1, training_cts=[], held_out_cts=[])


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    """fdk, iterative, naf and (with --backbone, by default) condcbnt on one tiny scan, two at a time."""
    d = tmp_path_factory.mktemp("bench")
    _write_ct(d / "blob.npz")
    _write_backbone(d / "backbone.pt")
    argv = ["bench", "--ct", str(d / "blob.npz"), "--size", "16", "--views", "8", "--noise", "noisy",
            "--steps", str(STEPS), "--curve-points", "4", "--iterative-iters", "15", "--threads", "1",
            "--device", "cpu", "--backbone", str(d / "backbone.pt"), "--jobs", "2", "--out", str(d / "out")]
    assert main(argv) == 0
    return d / "out"


def _zyx(path) -> np.ndarray:
    return np.asarray(nib.load(path).dataobj, dtype=np.float64).transpose(2, 1, 0)


def test_bench_writes_every_file(bench):
    for name in ("results.md", "results.csv", "results.json"):
        assert (bench / name).stat().st_size > 0
    for name in ("curves.png", "slices.png"):
        with Image.open(bench / name) as img:
            assert img.format == "PNG" and min(img.size) > 200
    doc = json.loads((bench / "results.json").read_text())
    assert [r["method"] for r in doc["results"]] == ["fdk", "iterative", "naf", "condcbnt"]
    assert all(r["status"] == "ok" and r["views"] == 8 and r["noise"] == "noisy" for r in doc["results"])
    for key in ("cpu", "cores", "torch"):
        assert doc["machine"][key]
    assert doc["commit"] and doc["command"].startswith("nfrecon bench --ct") and doc["device"] == "cpu"
    assert not (bench / "scans").exists()  # removed without --keep-scans


def test_results_equal_metrics_recomputed_from_the_written_volumes(bench):
    """PSNR with numpy and SSIM with skimage from the NIfTI files, against results.json."""
    doc = json.loads((bench / "results.json").read_text())
    gt = _zyx(bench / doc["volumes"][0]["gt"])
    r = gt.max()
    for rec in doc["results"]:
        x = _zyx(bench / rec["volume_path"])
        psnr = 10 * np.log10(r**2 / np.mean((x - gt) ** 2))
        ssim = structural_similarity(gt, x, win_size=7, data_range=r)
        assert rec["metrics"]["psnr_db"] == pytest.approx(psnr, abs=1e-6)
        assert rec["metrics"]["ssim_3d"] == pytest.approx(ssim, abs=1e-6)
        assert rec["metrics"]["data_range"] == pytest.approx(r, rel=1e-7)
        assert rec["seconds"] > 0
        mem = rec["memory"]
        assert mem["peak_rss_mb"] >= mem["baseline_rss_mb"] > 50 and mem["cuda_peak_mb"] is None
    rows = {row["method"]: row for row in csv.DictReader((bench / "results.csv").open())}
    assert set(rows) == {"fdk", "iterative", "naf", "condcbnt"}
    for rec in doc["results"]:
        assert float(rows[rec["method"]]["psnr_db"]) == pytest.approx(rec["metrics"]["psnr_db"], rel=1e-12)
        assert rows[rec["method"]]["commit"] == doc["commit"]


def test_curves_are_timed_without_their_evaluations(bench):
    doc = json.loads((bench / "results.json").read_text())
    for neural in (r for r in doc["results"] if r["method"] in ("naf", "condcbnt")):
        times, steps = [c[0] for c in neural["curve"]], [c[2] for c in neural["curve"]]
        assert len(neural["curve"]) == 4 + 1 and steps[:4] == [3, 6, 9, 12]  # every 12 // 4 steps, then the export
        assert all(b >= a for a, b in pairwise(times)) and times[-1] == pytest.approx(neural["seconds"])
        assert neural["curve_eval_seconds"] > 0 and neural["info"]["steps_run"] == STEPS
        assert neural["curve"][-1][1] == pytest.approx(neural["metrics"]["psnr_db"])
    it = next(r for r in doc["results"] if r["method"] == "iterative")
    assert [c[2] for c in it["curve"]] == list(range(1, 16)) and it["info"]["iterations_run"] == 15


def test_markdown_holds_the_published_numbers_beside_ours(bench):
    text = (bench / "results.md").read_text()
    for psnr, ssim, _ in PUBLISHED.values():
        assert f"| {psnr:.2f} | {ssim:.2f} |" in text
    assert "(published)" in text and "(measured)" in text and "scaled to 16^3" in text
    assert "NAF: preset naf-fast, 12 steps (automatic stopping on)" in text  # auto on the CPU
    assert "CondCBNT: preset condcbnt-fast, 12 steps (automatic stopping on), backbone" in text
    doc = json.loads((bench / "results.json").read_text())
    fdk = next(r for r in doc["results"] if r["method"] == "fdk")
    assert f"| FDK | 8 | noisy | {fdk['metrics']['psnr_db']:.2f} |" in text


def _md_tables(text: str) -> dict[str, list[dict[str, str]]]:
    """The markdown tables of ``text`` under their ``## `` headings: one dict per row, header -> cell."""
    tables, heading, rows = {}, None, []
    for line in [*text.splitlines(), ""]:
        if line.startswith("## "):
            heading = line[3:]
        elif line.startswith("|"):
            rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
        elif rows:
            header, rule, *body = rows
            assert set("".join(rule)) == {"-"} and all(len(r) == len(header) for r in body)
            tables[heading] = [dict(zip(header, r)) for r in body]
            rows = []
    return tables


def _assert_duration(cell: str, seconds: float) -> None:
    """``cell`` ('0.42 s', '12.3 s', '2 min 05 s', '1 h 02 min') is ``seconds`` to its last digit."""
    units = {"h": 3600, "min": 60, "s": 1}
    words = cell.split()
    shown = sum(float(n) * units[u] for n, u in zip(words[::2], words[1::2], strict=True))
    last, unit = words[-2], units[words[-1]]
    resolution = unit * 10 ** -len(last.split(".")[1]) if "." in last else unit
    assert abs(shown - seconds) <= 0.5 * resolution + 1e-9, (cell, seconds)


def _assert_shows(cell: str, value: float, digits: int) -> None:
    """``cell`` is ``value`` rounded to ``digits`` decimals (read back, not re-formatted)."""
    assert "." in cell and len(cell.split(".")[1]) == digits, cell
    assert abs(float(cell) - value) <= 0.5 * 10**-digits + 1e-12, (cell, value)


def _assert_memory(cell: str, memory: dict) -> None:
    peak, rise = cell.split(" (+")
    assert abs(int(peak) - memory["peak_rss_mb"]) <= 0.5, (cell, memory)
    assert abs(int(rise.rstrip(")")) - (memory["peak_rss_mb"] - memory["baseline_rss_mb"])) <= 0.5, (cell, memory)


def test_markdown_table_cells_are_the_json_records(bench):
    """Every cell of both tables of results.md read back and checked against results.json."""
    doc = json.loads((bench / "results.json").read_text())
    tables = _md_tables((bench / "results.md").read_text())
    labels = {"FDK": "fdk", "Iterative (TV)": "iterative", "NAF": "naf", "CondCBNT": "condcbnt"}
    records = {r["method"]: r for r in doc["results"]}  # one volume: one record per method

    per_volume = tables["Per volume"]
    assert [labels[row["method"]] for row in per_volume] == ["fdk", "iterative", "naf", "condcbnt"]
    for row in per_volume:
        rec = records[labels[row["method"]]]
        assert (row["volume"], row["views"], row["noise"]) == (rec["volume"], "8", "noisy")
        _assert_shows(row["PSNR dB"], rec["metrics"]["psnr_db"], 2)
        _assert_shows(row["SSIM 3D"], rec["metrics"]["ssim_3d"], 3)
        _assert_shows(row["SSIM 2D (3 axes)"], rec["metrics"]["ssim_2d_mean_3axes"], 3)
        _assert_duration(row["seconds"], rec["seconds"])
        _assert_memory(row["peak MiB"], rec["memory"])

    compared = {(labels[row["method"]], int(row["views"]), row["noise"]): row
                for row in tables["Measured here vs published"]}
    assert set(compared) == {(m, 8, "noisy") for m in records} | set(PUBLISHED)
    for method, rec in records.items():  # measured at 8 views, nothing published there
        row = compared[(method, 8, "noisy")]
        _assert_shows(row["PSNR dB (measured)"], rec["metrics"]["psnr_db"], 2)  # one volume: no "±"
        _assert_shows(row["SSIM (measured)"], rec["metrics"]["ssim_3d"], 3)
        _assert_duration(row["s / volume (measured)"], rec["seconds"])
        _assert_memory(row["peak MiB (measured)"], rec["memory"])
        assert [row[f"{k} (published)"] for k in ("PSNR dB", "SSIM", "s / volume")] == ["-", "-", "-"]
    for key, (psnr, ssim, seconds) in PUBLISHED.items():  # published at 50 and 400 views, not run here
        row = compared[key]
        assert row["PSNR dB (measured)"] == "not run" and row["SSIM (measured)"] == ""
        _assert_shows(row["PSNR dB (published)"], psnr, 2)
        _assert_shows(row["SSIM (published)"], ssim, 2)
        if seconds is None:
            assert row["s / volume (published)"] == "-"
        else:
            _assert_duration(row["s / volume (published)"], seconds)


def test_summary_mean_and_sample_std_over_volumes():
    def rec(volume, psnr, ssim, seconds):
        return {"method": "naf", "views": 50, "noise": "noisy", "volume": volume, "status": "ok", "seconds": seconds,
                "metrics": {"psnr_db": psnr, "ssim_3d": ssim},
                "memory": {"peak_rss_mb": 100.0 + seconds, "baseline_rss_mb": 50.0, "cuda_peak_mb": None}}

    records = [rec("a", 20.0, 0.5, 3.0), rec("b", 23.0, 0.7, 5.0), rec("c", 24.5, 0.6, 4.0),
               {"method": "naf", "views": 50, "noise": "noisy", "volume": "d", "status": "failed", "error": "x"}]
    (row,) = summarize(records)
    assert row["psnr_db"] == pytest.approx(np.mean([20.0, 23.0, 24.5]))
    assert row["psnr_db_std"] == pytest.approx(np.std([20.0, 23.0, 24.5], ddof=1))
    assert row["ssim_3d_std"] == pytest.approx(np.std([0.5, 0.7, 0.6], ddof=1))
    assert row["seconds"] == pytest.approx(4.0) and row["peak_rss_mb"] == 105.0
    assert row["volumes"] == ["a", "b", "c"] and row["failed"] == ["d"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--ct", "{d}/missing.npz"], "missing.npz"),
        (["--ct", "{d}/bad.npz"], "bad.npz"),
        (["--ct", "{d}/ok.npz", "--methods", "condcbnt"], "--backbone"),
        (["--ct", "{d}/ok.npz", "--views", "500"], "--views"),
        (["--ct", "{d}/ok.npz", "--naf-preset", "nope"], "--naf-preset"),
        (["--ct", "{d}/ok.npz", "--size", "4"], "--size"),
        (["--ct", "{d}/ok.npz", "--skip", "iterative:60"], "--skip"),
        (["--ct", "{d}/ok.npz", "--jobs", "2", "--no-isolate"], "--jobs"),
        (["--ct", "{d}/ok.npz", "--photons", "0"], "--photons"),
    ],
)
def test_bad_input_one_line_error_exit_2_no_output(tmp_path, capsys, argv, message):
    np.savez(tmp_path / "bad.npz", something=np.zeros(3))
    _write_ct(tmp_path / "ok.npz")
    before = sorted(p.name for p in tmp_path.iterdir())
    code = main(["bench", *(a.format(d=tmp_path) for a in argv), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and message in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written


def test_photons_set_the_noise_of_the_noisy_condition_and_scans_name_their_ct(tmp_path):
    _write_ct(tmp_path / "ok.npz")
    cfg = BenchConfig(ct=[tmp_path / "ok.npz"], size=16, views=(8,), noise=("noisy",), photons=2e3, methods=("fdk",),
                      out=tmp_path / "out", device="cpu")
    bench_plan = plan(cfg, {}, "nfrecon bench")
    scans, _ = simulate_conditions(bench_plan, bench_plan.volumes[0], seed=0)
    scan = scans[8, "noisy"]
    assert scan.photons == 2e3
    assert scan.metadata["source_ct"] == {"name": "ok.npz", "sha256": volume_sha256(tmp_path / "ok.npz")}
    # Poisson counts: the variance of a line integral is about 1 / (photons exp(-p)) (delta method)
    z = (scan.projections - scan.clean) * np.sqrt(2e3 * np.exp(-scan.clean))
    assert 0.85 < float(np.mean(z ** 2)) < 1.15
