"""CT augmentation: identity = plain resampling, known rotations, bounded elastic field, air stays air."""

import dataclasses

import numpy as np
import pytest
import torch

from nfrecon.data.augment import Augmentation, AugmentConfig, augment_ct
from nfrecon.data.resample import resample
from nfrecon.data.volumes import read_ct
from nfrecon.geometry.volume import VolumeGeometry

IDENTITY = AugmentConfig.identity()


def smooth_volume(geom: VolumeGeometry, seed: int = 0) -> np.ndarray:
    """A body-like test volume: smooth tissue values inside a cylinder, air outside."""
    c = geom.voxel_centers()
    rng = np.random.default_rng(seed)
    k = rng.normal(scale=0.05, size=(4, 3))
    tissue = sum(200 * np.cos(c @ kk) for kk in k)
    inside = np.hypot(c[..., 1], c[..., 2]) < 0.35 * geom.size[1]
    return np.where(inside, tissue, -1000.0).astype(np.float32)


def test_identity_equals_plain_resampling():
    src = VolumeGeometry((20, 26, 30), (2.5, 1.5, 1.7), (3.0, -2.0, 1.0))
    hu = smooth_volume(src)
    hu[5:8, 10:12, 4:9] = 1500.0  # sharp edges too
    for out in (VolumeGeometry((14, 18, 20), (3.0, 2.0, 2.2), (1.0, 0.5, -2.0)),  # coarser: anti-aliased
                VolumeGeometry((30, 40, 44), (1.1, 0.9, 1.0), (1.0, 0.0, -2.0))):  # finer: trilinear
        expected = resample(hu, src, out, fill=-1000.0)
        np.testing.assert_allclose(augment_ct(hu, src, 0, IDENTITY, out), expected, atol=0.02)


def test_rotation_by_90_degrees_about_z_moves_a_marker_as_expected():
    geom = VolumeGeometry.cube(32, 2.0)
    vol = np.full(geom.shape, -1000.0, dtype=np.float32)
    vol[14:18, 10:13, 22:26] = 1000.0
    cfg = dataclasses.replace(IDENTITY, rotate_deg=(90.0, 90.0))
    out = augment_ct(vol, geom, 0, cfg, geom)
    # a positive angle turns +x towards +y: numpy's rot90 from axis x (2) towards axis y (1)
    np.testing.assert_allclose(out, np.rot90(vol, 1, axes=(2, 1)), atol=1e-3)
    # and with a translation: the marker's centroid moves to R c + t (world coordinates)
    t = (4.0, -6.0, 10.0)
    shifted = dataclasses.replace(Augmentation.draw(0, cfg, geom, geom), translation=np.asarray(t))
    out_t = shifted.apply(vol, geom, geom)
    centres = geom.voxel_centers()

    def centroid(v):
        w = (v + 1000.0).clip(0)
        return (centres * w[..., None]).sum((0, 1, 2)) / w.sum()

    z, y, x = centroid(vol)
    np.testing.assert_allclose(centroid(out), (z, x, -y), atol=1e-3)
    np.testing.assert_allclose(centroid(out_t), np.array((z, x, -y)) + t, atol=1e-3)


def test_elastic_field_is_bounded_and_is_what_is_applied():
    geom = VolumeGeometry((24, 28, 28), (3.0, 3.0, 3.0))
    cfg = dataclasses.replace(IDENTITY, elastic_mm=5.0, elastic_spacing_mm=30.0)
    aug = Augmentation.draw(11, cfg, geom, geom)
    field = aug.displacement(geom).numpy()
    norm = np.linalg.norm(field, axis=0)
    assert norm.max() <= 5.0 + 1e-4
    assert norm.max() > 1.5 and norm.mean() > 0.5  # a real deformation, not a trace
    # measure the applied displacement with linear ramps: out(p) = ramp(p + d(p))
    centres = geom.voxel_centers()
    interior = (slice(5, -5),) * 3
    for axis in range(3):
        ramp = (10.0 * centres[..., axis]).astype(np.float32)  # 10 HU per mm
        measured = (aug.apply(ramp, geom, geom) - ramp) / 10.0
        np.testing.assert_allclose(measured[interior], field[axis][interior], atol=2e-3)


def test_same_seed_same_volume_other_seed_other_volume():
    geom = VolumeGeometry((16, 24, 24), (4.0, 3.0, 3.0))
    hu = smooth_volume(geom)
    out = VolumeGeometry((16, 20, 20), (4.0, 3.5, 3.5))
    a = augment_ct(hu, geom, 3, AugmentConfig(), out)
    assert np.array_equal(a, augment_ct(hu, geom, 3, AugmentConfig(), out))
    assert np.abs(a - augment_ct(hu, geom, 4, AugmentConfig(), out)).mean() > 1.0


def test_air_stays_air_and_crop_empties_slices():
    geom = VolumeGeometry((30, 40, 40), (4.0, 4.0, 4.0))  # 160 mm wide, object radius 56 mm
    hu = smooth_volume(geom, seed=2)
    centres = geom.voxel_centers()
    far = np.hypot(centres[..., 1], centres[..., 2]) > 56 + 25 * np.sqrt(2) + 4 + 5  # beyond any motion
    for seed in range(3):
        out = augment_ct(hu, geom, seed, AugmentConfig(), geom)
        assert out.min() >= -1000.0 - 1e-3
        np.testing.assert_allclose(out[far], -1000.0, atol=1e-3)
    cfg = dataclasses.replace(IDENTITY, crop_fraction=(0.5, 0.5))
    out = augment_ct(hu, geom, 1, cfg, geom)
    kept = np.flatnonzero((out > -999).any(axis=(1, 2)))
    assert len(kept) == 15 and np.all(np.diff(kept) == 1)
    np.testing.assert_allclose(out[kept], hu[kept], atol=1e-2)


def test_intensity_jitter_keeps_air_and_moves_tissue_a_little():
    geom = VolumeGeometry((8, 10, 10), (2.0, 2.0, 2.0))
    hu = np.full(geom.shape, -1000.0, dtype=np.float32)
    hu[:, 3:7, 3:7] = 0.0
    hu[:, 4:6, 4:6] = 1000.0
    cfg = dataclasses.replace(IDENTITY, hu_scale=(1.02, 1.02), hu_offset=(5.0, 5.0))
    out = augment_ct(hu, geom, 0, cfg, geom)
    assert np.all(out[hu == -1000.0] == -1000.0)
    np.testing.assert_allclose(out[hu == 0.0], 0.02 * 1000 + 5.0, atol=1e-3)
    np.testing.assert_allclose(out[hu == 1000.0], -1000 + 1.02 * 2000 + 5.0, atol=1e-2)


def test_torch_input_stays_a_tensor():
    geom = VolumeGeometry((12, 16, 16), (3.0, 3.0, 3.0))
    hu = smooth_volume(geom)
    out = augment_ct(torch.from_numpy(hu), geom, 5, AugmentConfig(), geom)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32
    np.testing.assert_array_equal(out.numpy(), augment_ct(hu, geom, 5, AugmentConfig(), geom))


@pytest.mark.data
def test_real_torso_ct_keeps_its_tissue_mix(shared_data):
    hu, geom = read_ct(shared_data / "torso_ct_totalsegmentator_3mm.npz")
    out_geom = VolumeGeometry.cube(64, 6.0)
    cfg = dataclasses.replace(AugmentConfig(), crop_fraction=(1.0, 1.0), translate_mm=(-10.0, 10.0))
    plain = resample(np.maximum(hu, -1000), geom, out_geom, fill=-1000.0)
    out = augment_ct(hu, geom, 1, cfg, out_geom)
    assert out.min() >= -1000.0 - 1e-3 and out.max() < 3500

    def fractions(v):
        body = v > -500
        return np.array([body.mean(), (np.abs(v) < 100).sum() / body.sum()])

    np.testing.assert_allclose(fractions(out), fractions(plain), rtol=0.1)
    # mass (mu ~ HU + 1000) is kept: the motion keeps the body inside the box, interpolation is mean-preserving
    np.testing.assert_allclose((out + 1000).sum(), (plain + 1000).sum(), rtol=0.03)
