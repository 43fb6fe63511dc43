"""Scan container and its HDF5 format: exact round trips, view subsets, every bad input."""

import json
import os

import h5py
import numpy as np
import pytest

from nfrecon.data.scan import Scan, load_scan, save_scan
from nfrecon.errors import InputError
from nfrecon.geometry.cone import ConeGeometry
from nfrecon.geometry.volume import VolumeGeometry

GEOM = ConeGeometry.circular(sod=500, sdd=800, det_shape=(6, 7), pixel_size=(1.5, 2.0), n_views=10, arc_deg=200,
                             det_offset=(0.5, -1.0))
GT_GEOM = VolumeGeometry((4, 5, 6), (2.0, 1.5, 1.25), center=(1.0, -2.0, 3.0))


def _scan(**changes) -> Scan:
    rng = np.random.default_rng(0)
    fields = {
        "projections": rng.normal(size=GEOM.proj_shape).astype(np.float32),
        "geom": GEOM,
        "gt": rng.random(GT_GEOM.shape, dtype=np.float32) * 0.03,
        "gt_geom": GT_GEOM,
        "recon_geom": VolumeGeometry.cube(8, 2.5),
        "clean": rng.normal(size=GEOM.proj_shape).astype(np.float32),
        "photons": 12345.5,
        "metadata": {"source": "ct.nii.gz", "seed": 3, "mu": {"water": 0.0206}, "list": [1, 2.5, None]},
    }
    fields.update(changes)
    return Scan(**fields)


def _assert_same(a: Scan, b: Scan):
    np.testing.assert_array_equal(a.projections, b.projections)
    assert a.projections.dtype == b.projections.dtype == np.float32
    assert a.geom.det_shape == b.geom.det_shape
    for k in ("src", "det", "u", "v"):
        np.testing.assert_array_equal(getattr(a.geom, k), getattr(b.geom, k))
    for k in ("gt", "clean"):
        x, y = getattr(a, k), getattr(b, k)
        assert (x is None) == (y is None)
        if x is not None:
            np.testing.assert_array_equal(x, y)
    assert a.gt_geom == b.gt_geom and a.recon_geom == b.recon_geom
    assert a.photons == b.photons and a.metadata == b.metadata


def test_round_trip_is_exact(tmp_path):
    scan = _scan()
    path = save_scan(scan, tmp_path / "scan.h5")
    _assert_same(scan, load_scan(path))
    assert os.listdir(tmp_path) == ["scan.h5"]  # no temporary file left


def test_round_trip_of_a_measured_scan_without_optional_parts(tmp_path):
    scan = _scan(gt=None, gt_geom=None, recon_geom=None, clean=None, photons=None, metadata={})
    back = load_scan(save_scan(scan, tmp_path / "m.h5"))
    _assert_same(scan, back)
    assert back.recon_geom is None and back.gt is None


def test_recon_geom_defaults_to_gt_geom():
    assert _scan(recon_geom=None).recon_geom == GT_GEOM


def test_view_subsets_compose_and_round_trip(tmp_path):
    scan = _scan()
    sub = scan.views(slice(None, None, 2)).views([1, 3])
    np.testing.assert_array_equal(sub.projections, scan.projections[[2, 6]])
    np.testing.assert_array_equal(sub.clean, scan.clean[[2, 6]])
    np.testing.assert_array_equal(sub.geom.src, GEOM.src[[2, 6]])
    assert sub.metadata["views"] == [2, 6] and sub.metadata["source"] == "ct.nii.gz"
    assert sub.gt is scan.gt and sub.photons == scan.photons
    _assert_same(sub, load_scan(save_scan(sub, tmp_path / "sub.h5")))
    with pytest.raises(InputError, match="empty"):
        scan.views(slice(0, 0))


def test_file_is_readable_with_plain_h5py_as_documented(tmp_path):
    scan = _scan()
    save_scan(scan, tmp_path / "scan.h5")
    with h5py.File(tmp_path / "scan.h5", "r") as f:
        assert f.attrs["format"] == "nfrecon-scan" and f.attrs["version"] == 1
        assert tuple(f["geometry"].attrs["det_shape"]) == (6, 7)
        src, det, u, v = (f["geometry"][k][()] for k in ("src", "det", "u", "v"))
        assert json.loads(f.attrs["metadata"])["seed"] == 3
        assert f.attrs["photons"] == 12345.5
        assert f["projections"].compression == "gzip"
        assert tuple(f["gt_geometry"].attrs["voxel_size"]) == (2.0, 1.5, 1.25)
        vecs = np.concatenate([a[:, ::-1] for a in (src, det, u, v)], axis=1)
    np.testing.assert_array_equal(vecs, GEOM.to_astra_vectors())
    # the documented pixel-centre formula, against the geometry's own pixel centres
    nv, nu = GEOM.det_shape
    c, r = np.arange(nu) - (nu - 1) / 2, np.arange(nv) - (nv - 1) / 2
    pix = det[3] + c[None, :, None] * u[3] + r[:, None, None] * v[3]
    np.testing.assert_allclose(pix, GEOM.pixel_centers()[3], atol=1e-12)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"projections": np.zeros((10, 7, 6), np.float32)}, "projections: shape"),
        ({"projections": np.full(GEOM.proj_shape, np.nan, np.float32)}, "NaN"),
        ({"clean": np.zeros((9, 6, 7))}, "clean projections: shape"),
        ({"gt": np.zeros((4, 5, 7))}, "ground truth: shape"),
        ({"gt": np.full(GT_GEOM.shape, np.inf)}, "ground truth: contains NaN or Inf"),
        ({"gt_geom": None}, "gt and gt_geom"),
        ({"photons": 0.0}, "photon count must be positive"),
        ({"metadata": {"a": object()}}, "JSON"),
    ],
)
def test_invalid_scans_are_rejected(changes, message):
    with pytest.raises(InputError, match=message):
        _scan(**changes)


def test_failed_save_names_the_file_and_leaves_nothing(tmp_path):
    scan = _scan()
    scan.projections = scan.projections[:, :3]  # broken after construction
    with pytest.raises(InputError, match="bad.h5.*projections: shape"):
        save_scan(scan, tmp_path / "bad.h5")
    assert os.listdir(tmp_path) == []
    good = save_scan(_scan(), tmp_path / "keep.h5")
    before = good.read_bytes()
    with pytest.raises(InputError):
        save_scan(scan, good)
    assert good.read_bytes() == before and os.listdir(tmp_path) == ["keep.h5"]


def _edit(path, fn):
    with h5py.File(path, "r+") as f:
        fn(f)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda f: f.attrs.__setitem__("format", "something-else"), "not an nfrecon scan file"),
        (lambda f: f.attrs.__setitem__("version", 7), "version 7 is not supported"),
        (lambda f: f.__delitem__("geometry/u"), "missing dataset /geometry/u"),
        (lambda f: f.__delitem__("projections"), "missing dataset /projections"),
        (lambda f: (f.__delitem__("projections"), f.create_dataset("projections", data=np.zeros((10, 6, 8)))),
         "projections: shape"),
        (lambda f: f["gt"].__setitem__((0, 0, 0), np.nan), "ground truth: contains NaN"),
        (lambda f: f.attrs.__setitem__("metadata", "{not json"), "corrupt"),
    ],
)
def test_bad_files_give_one_line_errors_naming_the_file(tmp_path, edit, message):
    path = save_scan(_scan(), tmp_path / "scan.h5")
    _edit(path, edit)
    with pytest.raises(InputError, match=message) as err:
        load_scan(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_missing_non_hdf5_and_truncated_files(tmp_path):
    with pytest.raises(InputError, match="nope.h5: no such file"):
        load_scan(tmp_path / "nope.h5")
    text = tmp_path / "notes.h5"
    text.write_text("just some text\n" * 100)
    with pytest.raises(InputError, match="notes.h5: not an HDF5 file"):
        load_scan(text)
    path = save_scan(_scan(projections=np.ones(GEOM.proj_shape, np.float32)), tmp_path / "cut.h5")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="cut.h5: truncated or corrupt"):
        load_scan(path)


def _flip_bit(path, at: int, bit: int = 0) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 1 << bit
    path.write_bytes(bytes(data))


def _data_offset(path, name: str) -> int:
    """File offset of the (first chunk of the) stored bytes of dataset ``name``."""
    with h5py.File(path, "r") as f:
        d = f[name].id
        return d.get_chunk_info(0).byte_offset if f[name].chunks else d.get_offset()


@pytest.mark.parametrize("name", ["geometry/src", "projections", "gt"])
def test_one_flipped_bit_in_a_dataset_is_refused(tmp_path, name):
    path = save_scan(_scan(), tmp_path / "scan.h5")
    _flip_bit(path, _data_offset(path, name) + 1, bit=3)  # geometry/src: src[0] moves by 2^-41 of its size
    with pytest.raises(InputError, match="scan.h5: truncated or corrupt HDF5 file"):
        load_scan(path)


def test_one_flipped_bit_in_an_attribute_is_refused(tmp_path):
    path = save_scan(_scan(), tmp_path / "scan.h5")
    at = path.read_bytes().find(np.float64(12345.5).tobytes())  # the photons attribute
    assert at > 0
    _flip_bit(path, at + 6)
    with pytest.raises(InputError, match="scan.h5: truncated or corrupt HDF5 file"):
        load_scan(path)


def test_files_without_checksums_still_read(tmp_path):
    scan = _scan()
    path = tmp_path / "old.h5"
    with h5py.File(path, "w") as f:  # the layout of files written before checksums
        f.attrs.update(format="nfrecon-scan", version=1, metadata=json.dumps(scan.metadata), photons=scan.photons)
        f.create_dataset("projections", data=scan.projections, compression="gzip")
        geo = f.create_group("geometry")
        geo.attrs["det_shape"] = np.asarray(GEOM.det_shape)
        for key in ("src", "det", "u", "v"):
            geo.create_dataset(key, data=getattr(GEOM, key))
    loaded = load_scan(path)
    np.testing.assert_array_equal(loaded.projections, scan.projections)
    np.testing.assert_array_equal(loaded.geom.src, GEOM.src)
    with h5py.File(save_scan(scan, tmp_path / "new.h5"), "r") as f:
        assert all(f[k].fletcher32 for k in ("projections", "clean", "gt", "geometry/src", "geometry/v"))


def test_describe_mentions_the_essentials():
    text = _scan().describe()
    for needle in ("10 views", "10 x 6 x 7", "12345.5 photons", "clean projections: yes", "ground truth: mu",
                   "8x8x8 voxels", "source: \"ct.nii.gz\""):
        assert needle in text, (needle, text)
    assert "ground truth: none" in _scan(gt=None, gt_geom=None).describe()
