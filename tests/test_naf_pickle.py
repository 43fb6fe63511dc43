"""NAF .pickle import: layout conversion, and refusal of pickles that would run code."""

import os
import pickle

import numpy as np
import pytest

from nfrecon.data.naf_pickle import load_naf_pickle
from nfrecon.errors import InputError


def _naf_dict(rng):
    nx, ny, nz = 6, 5, 4
    image = rng.random((nx, ny, nz)).astype(np.float32)  # NAF stores [x, y, z]
    angles = np.linspace(0, np.pi, 4, endpoint=False)
    proj = rng.random((4, 7, 9)).astype(np.float32)  # [view, v (rows flipped), u]
    return {
        "numTrain": 4, "numVal": 2, "DSD": 1500.0, "DSO": 1000.0, "nDetector": [7, 9], "dDetector": [2.0, 1.5],
        "nVoxel": [nx, ny, nz], "dVoxel": [1.0, 2.0, 3.0], "offOrigin": [0, 0, 0], "offDetector": [0, 0],
        "accuracy": 0.5, "mode": "cone", "filter": None, "totalAngle": 180.0, "startAngle": 0.0,
        "image": image, "train": {"angles": angles, "projections": proj},
        "val": {"angles": angles[:2] + 0.1, "projections": proj[:2]},
        "noise": np.float64(1e5),
    }


def test_naf_pickle_is_read_into_a_scan(tmp_path):
    data = _naf_dict(np.random.default_rng(0))
    path = tmp_path / "chest_50.pickle"
    path.write_bytes(pickle.dumps(data, protocol=4))
    scan = load_naf_pickle(path)
    # [x, y, z] -> [z, y, x]; stored rows are flipped relative to TIGRE's output rows
    np.testing.assert_array_equal(scan.gt, data["image"].transpose(2, 1, 0))
    np.testing.assert_array_equal(scan.projections, data["train"]["projections"][:, ::-1, :])
    assert scan.gt_geom.shape == (4, 5, 6) and scan.gt_geom.voxel_size == (3.0, 2.0, 1.0)
    assert scan.geom.det_shape == (7, 9) and scan.geom.pixel_size == pytest.approx((2.0, 1.5))
    # TIGRE angle 0: source on +x at DSO (TIGRE angle a is our angle a + 90 deg)
    np.testing.assert_allclose(scan.geom.src[0], [0.0, 0.0, 1000.0], atol=1e-9)
    assert scan.metadata["val_views_in_file"] == 2
    # protocol 2 spells bytes with _codecs.encode; still only builtins and arrays
    path.write_bytes(pickle.dumps(data, protocol=2))
    np.testing.assert_array_equal(load_naf_pickle(path).gt, scan.gt)


class _Exploit:
    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


def test_malicious_pickle_is_refused_and_never_runs(tmp_path):
    target = tmp_path / "pwned"
    exploit = _Exploit()
    exploit.target = target
    data = _naf_dict(np.random.default_rng(1))
    data["image"] = exploit
    path = tmp_path / "evil.pickle"
    path.write_bytes(pickle.dumps(data))
    with pytest.raises(InputError, match=r"evil.pickle: refused to load '(posix|os)\.system'"):
        load_naf_pickle(path)
    assert not target.exists()


def test_bad_naf_files(tmp_path):
    path = tmp_path / "x.pickle"
    with pytest.raises(InputError, match="file not found"):
        load_naf_pickle(path)
    path.write_bytes(pickle.dumps({"image": np.zeros((2, 2, 2))}))
    with pytest.raises(InputError, match="missing key 'train'"):
        load_naf_pickle(path)
    good = pickle.dumps(_naf_dict(np.random.default_rng(2)))
    path.write_bytes(good[: len(good) // 2])
    with pytest.raises(InputError, match="truncated or corrupt"):
        load_naf_pickle(path)
    data = _naf_dict(np.random.default_rng(3))
    data["train"]["projections"] = data["train"]["projections"][:, :5]
    path.write_bytes(pickle.dumps(data))
    with pytest.raises(InputError, match="projections have shape"):
        load_naf_pickle(path)
