"""``nfrecon make-dataset``: a reproducible set of scan files with an index, and its handling of bad input."""

import hashlib
import json

import numpy as np
import pytest

from nfrecon.cli import main
from nfrecon.configio import from_dict
from nfrecon.data.hu import hu_to_mu
from nfrecon.data.metaimage import write_metaimage
from nfrecon.data.procedural import PatientConfig, generate_patient
from nfrecon.data.scan import load_scan
from nfrecon.data.volumes import volume_sha256
from nfrecon.geometry.protocols import Protocol
from nfrecon.geometry.volume import VolumeGeometry

TINY = ["--count", "3", "--protocol", "small", "--size", "16", "--views", "8"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    d = tmp_path_factory.mktemp("make_dataset") / "set"
    assert main(["make-dataset", "--out", str(d), *TINY, "--seed", "5"]) == 0
    return d


def test_tiny_dataset_is_listed_loadable_and_rebuildable_from_its_index(dataset):
    index = json.loads((dataset / "dataset.json").read_text())
    assert index["format"] == "nfrecon-dataset" and index["count"] == 3 and index["source"] == "procedural"
    assert [e["file"] for e in index["scans"]] == ["scan_0000.h5", "scan_0001.h5", "scan_0002.h5"]
    assert sorted(p.name for p in dataset.iterdir()) == ["dataset.json", "scan_0000.h5", "scan_0001.h5", "scan_0002.h5"]
    protocol = Protocol.from_dict(index["protocol"])
    cfg = from_dict(PatientConfig, index["procedural"])
    gts = []
    for i, entry in enumerate(index["scans"]):
        scan = load_scan(dataset / entry["file"])
        assert scan.projections.shape == (8, 16, 16) and np.all(np.isfinite(scan.projections))
        assert scan.photons == index["noise"]["photons"] == 1e5
        assert scan.recon_geom == protocol.volume_geometry() and scan.gt.shape == (16, 16, 16)
        assert scan.metadata["dataset"]["file"] == entry["file"]
        # the documented seed rule, and the ground truth rebuilt from the index alone
        volume_seed, noise_seed = np.random.SeedSequence([5, i]).generate_state(2)
        assert (entry["patient_seed"], entry["noise_seed"]) == (volume_seed, noise_seed)
        assert scan.metadata["seed"] == noise_seed
        hu, _ = generate_patient(entry["patient_seed"], cfg)
        np.testing.assert_allclose(scan.gt, protocol.hu_to_mu(hu), atol=1e-6)
        gts.append(scan.gt)
    assert not np.array_equal(gts[0], gts[1])  # different patients


def test_same_options_reproduce_identical_scans(dataset, tmp_path, cli):
    assert cli("make-dataset", "--out", tmp_path / "again", *TINY, "--seed", "5")[0] == 0
    assert cli("make-dataset", "--out", tmp_path / "other", *TINY, "--seed", "6", "--count", "1")[0] == 0
    for name in ("scan_0000.h5", "scan_0002.h5"):
        first, again = load_scan(dataset / name), load_scan(tmp_path / "again" / name)
        assert np.array_equal(first.projections, again.projections)
        assert np.array_equal(first.gt, again.gt)
    other = load_scan(tmp_path / "other" / "scan_0000.h5")
    assert not np.array_equal(load_scan(dataset / "scan_0000.h5").projections, other.projections)


def test_existing_dataset_needs_overwrite_which_drops_stale_scans(tmp_path, cli):
    out = tmp_path / "set"
    common = ["--protocol", "small", "--size", "8", "--views", "4", "--noiseless"]
    assert cli("make-dataset", "--out", out, "--count", "2", *common)[0] == 0
    code, _, err = cli("make-dataset", "--out", out, "--count", "1", *common)
    assert code == 2 and "already holds a dataset" in err and "--overwrite" in err
    assert cli("make-dataset", "--out", out, "--count", "1", "--overwrite", *common)[0] == 0
    assert sorted(p.name for p in out.iterdir()) == ["dataset.json", "scan_0000.h5"]
    index = json.loads((out / "dataset.json").read_text())
    assert index["noise"]["photons"] is None and load_scan(out / "scan_0000.h5").photons is None
    (tmp_path / "patient.yaml").write_text("lung_nodules: [0, 0]\nbody_aspect: [0.7, 0.7]\n")
    assert cli("make-dataset", "--out", out, "--count", "1", "--overwrite",
               "--patient-config", tmp_path / "patient.yaml", "--table", *common)[0] == 0
    used = json.loads((out / "dataset.json").read_text())["procedural"]
    assert used["lung_nodules"] == [0, 0] and used["body_aspect"] == [0.7, 0.7] and used["table"] is True
    assert used["shape"] == [8, 8, 8]  # the grid always comes from the protocol


@pytest.mark.data
def test_mixed_alternates_procedural_and_augmented_ct(shared_data, tmp_path, cli):
    ct = shared_data / "torso_ct_totalsegmentator_3mm.npz"
    code, out, _ = cli("make-dataset", "--out", tmp_path / "mixed", "--count", "3", "--source", "mixed", "--ct", ct,
                       "--protocol", "small", "--size", "16", "--views", "8")
    assert code == 0 and "3 scans" in out
    scans = json.loads((tmp_path / "mixed" / "dataset.json").read_text())["scans"]
    assert [e["source"] for e in scans] == ["procedural", "augment", "procedural"]
    assert scans[1]["ct"] == ct.name and scans[1]["ct_sha256"] == hashlib.sha256(ct.read_bytes()).hexdigest()
    assert "augment_seed" in scans[1] and "patient_seed" not in scans[1]
    gt = load_scan(tmp_path / "mixed" / "scan_0001.h5").gt
    assert gt.max() > 0.025 and (gt < 0.002).mean() > 0.2  # bone and air: a body, in mu (1/mm)


def test_augment_reads_dicom_and_metaimage_cts_and_records_their_digests(tmp_path, cli):
    sitk = pytest.importorskip("SimpleITK")
    from test_formats import _dicom_series

    k, j, i = np.meshgrid(np.arange(10), np.arange(12), np.arange(11), indexing="ij")
    hu = np.where((i - 5) ** 2 + (j - 6) ** 2 + (k - 4.5) ** 2 < 20, 300, -1000)
    series = _dicom_series(sitk, tmp_path / "series", hu, direction=np.eye(3), spacing=(40.0, 35.0, 45.0))
    mha = tmp_path / "ct.mha"
    write_metaimage(mha, hu_to_mu(hu.astype(np.float32)), VolumeGeometry(hu.shape, (45.0, 35.0, 40.0)), hu=True)
    code, _, _ = cli("make-dataset", "--out", tmp_path / "set", "--count", "2", "--source", "augment", "--ct", series,
                     mha, "--protocol", "small", "--size", "8", "--views", "4", "--noiseless")
    assert code == 0
    index = json.loads((tmp_path / "set" / "dataset.json").read_text())
    assert [(e["ct"], e["ct_sha256"]) for e in index["scans"]] == [
        ("series", volume_sha256(series)), ("ct.mha", hashlib.sha256(mha.read_bytes()).hexdigest())]
    assert [c["geometry"]["shape"] for c in index["cts"]] == [[10, 12, 11], [10, 12, 11]]
    for entry in index["scans"]:
        assert load_scan(tmp_path / "set" / entry["file"]).gt.max() > 0.02  # the ball, in mu (1/mm)


@pytest.mark.parametrize("argv, message", [
    (["--source", "nope"], "unknown source 'nope'"),
    (["--count", "0"], "--count"),
    (["--source", "augment"], "--ct"),
    (["--source", "augment", "--ct", "{d}/text.npz"], "text.npz"),
    (["--source", "mixed", "--ct", "{d}/missing.npz"], "missing.npz"),
    (["--ct", "{d}/text.npz"], "--ct"),
    (["--patient-config", "{d}/bad.yaml"], "bad.yaml"),
    (["--source", "mixed", "--ct", "{d}/text.npz", "--procedural-fraction", "1.5"], "--procedural-fraction"),
])
def test_bad_input_one_line_error_exit_2_nothing_written(tmp_path, cli, argv, message):
    (tmp_path / "text.npz").write_text("not an npz archive\n")
    (tmp_path / "bad.yaml").write_text("lung_nodule: [0, 2]\n")  # misspelt field
    before = sorted(p.name for p in tmp_path.iterdir())
    code, _, err = cli("make-dataset", "--out", tmp_path / "out", "--size", "8", "--views", "4",
                       *(a.format(d=tmp_path) for a in argv))
    assert code == 2
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and message in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == before
