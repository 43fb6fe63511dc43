"""NIfTI export/import, checked against nibabel's own reading of the files."""

import gzip
import os

import nibabel as nib
import numpy as np
import pytest
import torch

from nfrecon.data.nifti import read_nifti, volume_affine, write_nifti
from nfrecon.data.volumes import read_ct, read_mu_volume
from nfrecon.errors import InputError
from nfrecon.geometry.volume import VolumeGeometry

GEOM = VolumeGeometry((5, 6, 7), (2.5, 1.5, 0.75), center=(10.0, -4.0, 3.0))


def _mu(seed=0):
    return (np.random.default_rng(seed).random(GEOM.shape) * 0.05).astype(np.float32)


def test_float_mu_file_read_by_nibabel(tmp_path):
    mu = _mu()
    write_nifti(tmp_path / "mu.nii.gz", torch.from_numpy(mu), GEOM)
    img = nib.load(tmp_path / "mu.nii.gz")
    hdr = img.header
    assert img.shape == (7, 6, 5)  # (x, y, z)
    assert hdr.get_data_dtype() == np.float32
    assert int(hdr["qform_code"]) == 1 and int(hdr["sform_code"]) == 1
    assert hdr.get_xyzt_units()[0] == "mm"
    np.testing.assert_allclose(img.get_qform(), img.get_sform())
    assert "".join(nib.aff2axcodes(img.affine)) == "RAS"
    data = np.asarray(img.dataobj)
    for k, j, i in [(0, 0, 0), (4, 5, 6), (2, 1, 5)]:
        world_zyx = GEOM.index_to_world((k, j, i))
        np.testing.assert_allclose(img.affine @ [i, j, k, 1], [*world_zyx[::-1], 1], atol=1e-9)
        assert data[i, j, k] == mu[k, j, i]
    assert os.listdir(tmp_path) == ["mu.nii.gz"]


def test_hu_file_is_int16_without_scaling_and_round_trips(tmp_path):
    mu = _mu()
    mu[0, 0, :3] = (0.0, 0.0206, 1e4)  # air, water, far out of the int16 range
    write_nifti(tmp_path / "hu.nii", mu, GEOM, hu=True)
    img = nib.load(tmp_path / "hu.nii")
    assert img.get_data_dtype() == np.int16
    assert img.dataobj.slope == 1 and img.dataobj.inter == 0
    raw = np.asarray(img.dataobj).transpose(2, 1, 0)
    expected = np.clip(np.rint((mu.astype(np.float64) / 0.0206 - 1) * 1000), -32768, 32767)
    np.testing.assert_array_equal(raw, expected)
    assert tuple(raw[0, 0, :3]) == (-1000, 0, 32767)
    vol, geom, is_hu = read_nifti(tmp_path / "hu.nii")
    assert is_hu and geom == GEOM
    np.testing.assert_array_equal(vol, expected)
    mu_back, g2 = read_mu_volume(tmp_path / "hu.nii", keep_position=True)
    assert g2 == GEOM and g2.center == (10.0, -4.0, 3.0)
    np.testing.assert_allclose(mu_back[1:], mu[1:], atol=0.5e-3 * 0.0206 + 1e-7)  # half an HU


def test_hu_file_records_its_mu_mapping(tmp_path):
    mu = _mu()
    write_nifti(tmp_path / "hu.nii.gz", mu, GEOM, hu=True, mu_water=0.019, mu_slope=0.021)
    hu, _ = read_ct(tmp_path / "hu.nii.gz")
    np.testing.assert_array_equal(hu, np.rint((mu.astype(np.float64) - 0.019) / 0.021 * 1000))
    back, _ = read_mu_volume(tmp_path / "hu.nii.gz")  # uses the recorded mapping
    np.testing.assert_allclose(back, mu, atol=0.5e-3 * 0.021 + 1e-7)


def test_mu_file_round_trips_exactly_and_read_ct_converts_it(tmp_path):
    mu = _mu()
    write_nifti(tmp_path / "mu.nii", mu, GEOM)
    vol, geom, is_hu = read_nifti(tmp_path / "mu.nii")
    assert not is_hu and geom == GEOM
    np.testing.assert_array_equal(vol, mu)
    hu, centred = read_ct(tmp_path / "mu.nii")
    assert centred.center == (0.0, 0.0, 0.0) and centred.voxel_size == GEOM.voxel_size
    np.testing.assert_allclose(hu, (mu / 0.0206 - 1) * 1000, rtol=1e-5, atol=1e-2)


def test_foreign_las_file_is_reoriented_to_ras(tmp_path):
    data_xyz = np.random.default_rng(1).integers(-1000, 2000, (7, 6, 5)).astype(np.int16)
    affine = np.diag([-0.75, 1.5, 2.5, 1.0])
    affine[:3, 3] = (50.0, -20.0, 8.0)
    nib.save(nib.Nifti1Image(data_xyz, affine), tmp_path / "las.nii.gz")
    vol, geom, is_hu = read_nifti(tmp_path / "las.nii.gz")
    assert is_hu  # untagged, HU-like values
    np.testing.assert_array_equal(vol, data_xyz[::-1].transpose(2, 1, 0))
    assert geom.voxel_size == (2.5, 1.5, 0.75)
    # every voxel keeps its world position: compare the box centres computed by nibabel
    centre_xyz = affine @ [3, 2.5, 2, 1]
    np.testing.assert_allclose(geom.center, centre_xyz[2::-1], atol=1e-9)
    assert "".join(nib.aff2axcodes(volume_affine(geom))) == "RAS"


def _save_raw(path, data, affine):
    img = nib.Nifti1Image(data, None)
    img.set_sform(affine, code=1)  # sform only: nibabel cannot encode a singular qform
    nib.save(img, path)
    return path


@pytest.mark.parametrize(
    "data, affine, message",
    [
        (np.zeros((4, 4, 4), np.float32), np.diag([1.0, 1.0, 0.0, 1.0]), "singular"),
        (np.zeros((4, 4), np.float32), np.eye(4), "expected a 3D volume"),
        (np.zeros((4, 4, 4, 2), np.float32), np.eye(4), "expected a 3D volume"),
        (np.full((4, 4, 4), np.nan, np.float32), np.eye(4), "NaN"),
    ],
)
def test_bad_nifti_files(tmp_path, data, affine, message):
    path = _save_raw(tmp_path / "bad.nii.gz", data, affine)
    with pytest.raises(InputError, match=f"bad.nii.gz: .*{message}"):
        read_nifti(path)


def test_oblique_affine_is_refused_and_single_frame_4d_accepted(tmp_path):
    c, s = np.cos(0.3), np.sin(0.3)
    rot = np.array([[c, -s, 0, 0], [s, c, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]])
    path = _save_raw(tmp_path / "oblique.nii", np.zeros((4, 4, 4), np.float32), rot)
    with pytest.raises(InputError, match="oblique.nii: .*oblique"):
        read_nifti(path)
    path = _save_raw(tmp_path / "one.nii", np.ones((4, 3, 2, 1), np.float32), np.eye(4))
    vol, geom, _ = read_nifti(path)
    assert vol.shape == (2, 3, 4) and geom.shape == (2, 3, 4)


def test_missing_corrupt_and_truncated_files(tmp_path):
    with pytest.raises(InputError, match="none.nii.gz: no such file"):
        read_nifti(tmp_path / "none.nii.gz")
    (tmp_path / "junk.nii.gz").write_bytes(b"this is not a nifti file at all" * 20)
    with pytest.raises(InputError, match="junk.nii.gz: "):
        read_nifti(tmp_path / "junk.nii.gz")
    path = write_nifti(tmp_path / "cut.nii.gz", _mu(), GEOM)
    data = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(data[: len(data) - 300]))
    with pytest.raises(InputError, match="cut.nii.gz: .*truncated or corrupt"):
        read_nifti(path)


def test_failed_writes_leave_no_file(tmp_path):
    with pytest.raises(InputError, match="out.nii: .*NaN"):
        write_nifti(tmp_path / "out.nii", np.full(GEOM.shape, np.nan), GEOM)
    with pytest.raises(InputError, match="out.nii: volume has shape"):
        write_nifti(tmp_path / "out.nii", np.zeros((5, 6, 6)), GEOM)
    with pytest.raises(InputError, match="out.img: .*must end with .nii"):
        write_nifti(tmp_path / "out.img", _mu(), GEOM)
    assert os.listdir(tmp_path) == []
