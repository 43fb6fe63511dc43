"""Counts <-> line integrals, the Poisson noise model, and simulated scans."""

import re
import warnings

import numpy as np
import pytest
import torch

from nfrecon.data.counts import add_noise, counts_to_line_integrals
from nfrecon.data.phantom import Ellipsoid, EllipsoidPhantom
from nfrecon.errors import InputError
from nfrecon.geometry.cone import ConeGeometry
from nfrecon.geometry.volume import VolumeGeometry
from nfrecon.ops.projector import VoxelProjector
from nfrecon.simulate import check_field_of_view, phantom_scan, simulate_scan

# field of view radius 400 * sin(atan(60 / 600)) = 39.8 mm; 48 mm tall at the axis
GEOM = ConeGeometry.circular(sod=400, sdd=600, det_shape=(36, 40), pixel_size=3.0, n_views=8, arc_deg=360)


# ---------------------------------------------------------------------- counts
def test_counts_to_line_integrals_recovers_p():
    rng = np.random.default_rng(0)
    p = rng.random((4, 3, 5)) * 3
    flat = 1000 + 200 * rng.random((3, 5))
    dark = 50 * rng.random((3, 5))
    counts = dark + (flat - dark) * np.exp(-p)
    np.testing.assert_allclose(counts_to_line_integrals(counts, flat, dark), p, atol=2e-6)
    per_view = np.broadcast_to(flat, p.shape) * (1 + 0.1 * np.arange(4))[:, None, None]
    np.testing.assert_allclose(counts_to_line_integrals(per_view * np.exp(-p), per_view), p, atol=2e-6)
    dim = counts_to_line_integrals(np.array([0.0, 10.0]), np.array([100.0, 100.0]), np.array([20.0, 0.0]))
    np.testing.assert_allclose(dim, [-np.log(1e-6), np.log(10)], rtol=1e-6)  # I <= D is clamped


@pytest.mark.parametrize(
    "counts, flat, dark, message",
    [
        (np.array([-1.0, 2.0]), np.ones(2), None, "counts: negative"),
        (np.array([np.nan, 2.0]), np.ones(2), None, "counts: contains NaN"),
        (np.ones(2), np.array([1.0, np.inf]), None, "flat: contains NaN or Inf"),
        (np.ones(2), np.array([5.0, 5.0]), np.array([1.0, 5.0]), "flat: 1 pixels have flat <= dark"),
        (np.ones((3, 2)), np.ones(3), None, "do not match"),
    ],
)
def test_counts_validation(counts, flat, dark, message):
    with pytest.raises(InputError, match=message):
        counts_to_line_integrals(counts, flat, dark)


@pytest.mark.data
def test_measured_tooth_projections(shared_data):
    z = np.load(shared_data / "tooth_aps_parallel_projections.npz")
    p = counts_to_line_integrals(z["data"], z["data_white"].mean(0), z["data_dark"].mean(0))
    assert p.shape == (181, 2, 640) and p.dtype == np.float32
    assert -0.15 < p.min() < -0.03 and 1.85 < p.max() < 2.05  # the range the data README reports


# ---------------------------------------------------------------------- noise
def test_poisson_statistics_of_simulated_counts():
    n, i0 = 200_000, 1000.0
    for p in (0.5, 2.0, 4.0):
        lam = i0 * np.exp(-p)
        counts = i0 * np.exp(-add_noise(np.full(n, p, np.float32), i0, generator=1).astype(np.float64))
        assert np.allclose(counts, np.rint(counts), atol=1e-3 * counts)  # integers (float32 rounding)
        assert abs(counts.mean() - lam) < 5 * np.sqrt(lam / n)
        var_se = np.sqrt((lam + 2 * lam**2) / n)  # standard error of a Poisson sample variance
        assert abs(counts.var() - lam) < 5 * var_se


def test_read_noise_adds_its_variance_and_counts_are_clamped():
    n, i0, sigma = 200_000, 1e4, 30.0
    lam = i0 * np.exp(-1.0)
    noisy = add_noise(torch.full((n,), 1.0, dtype=torch.float64), i0, read_noise_std=sigma, generator=2)
    assert isinstance(noisy, torch.Tensor) and noisy.dtype == torch.float64
    counts = (i0 * torch.exp(-noisy)).numpy()
    assert abs(counts.var() - (lam + sigma**2)) < 5 * np.sqrt(2 * (lam + sigma**2) ** 2 / n)
    dark = add_noise(np.full(1000, 30.0, np.float32), 500.0, generator=0)
    np.testing.assert_allclose(dark, np.log(500.0), rtol=1e-6)  # mean 5e-11 counts -> clamped to 1
    dark = add_noise(np.full(1000, 30.0, np.float32), 500.0, read_noise_std=3.0, generator=0)
    assert dark.max() <= np.log(500.0) + 1e-6 and dark.min() < np.log(500.0) - 0.5


def test_noise_is_seeded_and_validated():
    p = np.random.default_rng(0).random((3, 4, 5)).astype(np.float32)
    a, b, c = (add_noise(p, 1e4, generator=s) for s in (7, 7, 8))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c) and a.dtype == np.float32
    np.testing.assert_allclose(a, p, atol=0.1)
    for photons in (0, -5.0, np.nan):
        with pytest.raises(InputError, match="photon count must be positive"):
            add_noise(p, photons)
    with pytest.raises(InputError, match="NaN"):
        add_noise(np.array([np.nan]), 1e4)


# ---------------------------------------------------------------------- simulated scans
def test_phantom_scan_and_simulate_scan_agree_with_the_analytic_phantom():
    phantom = EllipsoidPhantom.shepp_logan(radius_mm=36.0)
    brain = EllipsoidPhantom((Ellipsoid(phantom.ellipsoids[1].center, phantom.ellipsoids[1].axes, 0.0, 1.0),))
    rays = brain.project(GEOM) > 20  # rays with more than 20 mm through the brain
    fine = VolumeGeometry.cube(64, 1.25)
    ps = phantom_scan(GEOM, fine, radius_mm=36.0, photons=None)
    np.testing.assert_array_equal(ps.clean, phantom.project(GEOM).astype(np.float32))
    assert ps.projections is ps.clean and ps.metadata["radius_mm"] == 36.0
    # the voxelised ground truth, projected, reproduces the analytic projections (a z-flipped
    # one is off by 2.5%, a transposed one by 19%)
    recon = VolumeGeometry.cube(20, 4.0)
    scan = simulate_scan(ps.gt, fine, GEOM, recon, photons=1e5, seed=4, metadata={"source": "shepp"})
    assert np.mean(np.abs(scan.clean[rays] - ps.clean[rays]) / ps.clean[rays]) < 0.015
    # ground truth on the recon grid: analytic mass and centroid of the ellipsoids are kept
    # (the centroid is (-0.076, 1.776, 0.115) mm, so any axis flip would show), and it is close
    # to the phantom voxelised there directly (a transposed one is off by 68%)
    volumes = np.array([e.mu * 4 / 3 * np.pi * np.prod(e.axes) for e in phantom.ellipsoids])
    centroid = (volumes[:, None] * [e.center for e in phantom.ellipsoids]).sum(0) / volumes.sum()
    voxel_volume = np.prod(recon.voxel_size)
    assert abs(scan.gt.sum() * voxel_volume / volumes.sum() - 1) < 2e-3
    np.testing.assert_allclose((scan.gt[..., None] * recon.voxel_centers()).sum((0, 1, 2)) / scan.gt.sum(),
                               centroid, atol=0.02)
    ref = phantom.voxelize(recon, supersample=4)
    assert np.abs(scan.gt - ref).mean() < 0.07 * np.abs(ref).mean()
    assert scan.gt_geom == scan.recon_geom == recon
    # the noise has the Poisson variance of the line integrals, 1 / (I0 exp(-p))
    diff = scan.projections - scan.clean
    expected = np.mean(np.exp(scan.clean) / 1e5)
    assert abs(diff.var() / expected - 1) < 0.05
    assert scan.photons == 1e5 and scan.metadata["seed"] == 4 and scan.metadata["source"] == "shepp"
    assert scan.metadata["outside_fov"] == 0.0 and scan.metadata["outside_recon_box"] == 0.0


def test_noiseless_simulation_and_bad_inputs():
    vg = VolumeGeometry.cube(12, 4.0)
    mu = np.full(vg.shape, 0.02, np.float32)
    scan = simulate_scan(mu, vg, GEOM, vg, photons=None)
    assert scan.photons is None
    np.testing.assert_array_equal(scan.projections, scan.clean)
    ref = VoxelProjector(vg, GEOM)(torch.from_numpy(mu).double()).numpy()
    np.testing.assert_allclose(scan.clean, ref, rtol=1e-5, atol=1e-6)
    assert simulate_scan(mu, vg, GEOM, vg, photons=0).photons is None
    a, b = (simulate_scan(x, vg, GEOM, vg, photons=1e3, seed=5).projections for x in (mu, torch.from_numpy(mu)))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, simulate_scan(mu, vg, GEOM, vg, photons=1e3, seed=6).projections)
    with pytest.raises(InputError, match="photon count must be positive"):
        simulate_scan(mu, vg, GEOM, vg, photons=-1)
    with pytest.raises(InputError, match="mu: volume has shape"):
        simulate_scan(mu[1:], vg, GEOM, vg)


def test_field_of_view_checks():
    vg = VolumeGeometry.cube(16, 4.0)
    mu = np.full(vg.shape, 0.02, np.float32)
    far = VolumeGeometry.cube(16, 4.0, center=(0.0, 0.0, 300.0))
    with pytest.raises(InputError, match="volume outside the field of view"):
        check_field_of_view(mu, far, GEOM, vg)
    with pytest.raises(InputError, match="does not overlap the reconstruction box"):
        check_field_of_view(mu, vg, GEOM, far)
    wide = VolumeGeometry((8, 24, 24), (4.0, 4.0, 4.0))  # 96 mm across, field of view 80 mm
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = check_field_of_view(np.full(wide.shape, 0.02, np.float32), wide, GEOM, vg)
    messages = [str(w.message) for w in caught]
    assert len(messages) == 2
    assert re.match(r"volume outside the field of view: .*% of the object .*field of view radius 40 mm", messages[0])
    assert re.match(r"\d+\.\d% of the object lies outside the reconstruction box", messages[1])
    assert 0.1 < report["outside_fov"] < 0.6 and report["outside_recon_box"] > 0.3
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        small = VolumeGeometry.cube(8, 4.0)  # 32 mm cube well inside
        assert check_field_of_view(np.ones(small.shape), small, GEOM, vg) == {"outside_fov": 0.0,
                                                                              "outside_recon_box": 0.0}
