"""FDK: analytic uniform ball, RTK's FDK (full and Parker short scan), weights, bad input."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from nfrecon.data.phantom import Ellipsoid, EllipsoidPhantom
from nfrecon.errors import InputError
from nfrecon.geometry.cone import ConeGeometry
from nfrecon.geometry.volume import VolumeGeometry
from nfrecon.recon.fdk import fdk
from nfrecon.recon.filters import padded_length, ramp_response
from nfrecon.recon.rtk_reference import rtk_fdk
from nfrecon.recon.weights import angular_sampling, fan_angles, parker_weights

MU = 0.02  # 1/mm
RADIUS = 40.0  # mm


def _circular(**kw) -> ConeGeometry:
    base = {"sod": 400.0, "sdd": 600.0, "det_shape": (48, 64), "pixel_size": 2.5}
    return ConeGeometry.circular(**{**base, **kw})


def _ball_interior_means(geom: ConeGeometry, **fdk_kw) -> float:
    """Mean FDK value / true mu over the ball's central region (r < 0.6 R, |z| < 0.3 R)."""
    ball = EllipsoidPhantom((Ellipsoid((0.0, 0.0, 0.0), (RADIUS,) * 3, 0.0, MU),))
    vg = VolumeGeometry.cube(48, 2.0)
    rec = fdk(torch.from_numpy(ball.project(geom)), geom, vg, **fdk_kw).numpy()
    c = vg.voxel_centers()
    inner = (np.hypot(c[..., 1], c[..., 2]) < 0.6 * RADIUS) & (np.abs(c[..., 0]) < 0.3 * RADIUS)
    return float(rec[inner].mean() / MU)


def test_uniform_ball_full_scan():
    assert _ball_interior_means(_circular(n_views=120)) == pytest.approx(1.0, abs=0.02)


def test_uniform_ball_short_scan_needs_parker():
    geom = _circular(n_views=90, arc_deg=220.0, start_deg=30.0)  # fan angle 15.2 deg, arc > 195.2
    assert geom.arc_deg() < 360 - 90
    assert _ball_interior_means(geom) == pytest.approx(1.0, abs=0.02)  # auto -> Parker
    assert abs(_ball_interior_means(geom, short_scan=False) - 1.0) > 0.2  # no redundancy weights


def test_parker_weights_sum_to_one_over_conjugate_rays():
    geom = _circular(n_views=200, arc_deg=230.0)
    s = angular_sampling(geom.circular_angles())
    gmax = np.abs(fan_angles(geom)).max()
    rng = np.random.default_rng(0)
    beta = rng.uniform(0, s.coverage, 2000)
    gamma = rng.uniform(-gmax, gmax, 2000)
    w = lambda b, g: parker_weights(b, g[:, None], s.coverage)[:, 0]
    for conj in (beta + np.pi + 2 * gamma, beta - np.pi + 2 * gamma):  # the same line seen from the other side
        ok = (conj >= 0) & (conj <= s.coverage)
        assert ok.sum() > 100
        np.testing.assert_allclose(w(beta[ok], gamma[ok]) + w(conj[ok], -gamma[ok]), 1.0, atol=1e-12)
    assert np.rad2deg(s.coverage) == pytest.approx(230.0)  # last - first + one step (endpoint excluded)


@pytest.mark.parametrize("endpoint, n", [(False, 36), (True, 37)])
def test_angular_sampling_closed_circle(endpoint, n):
    s = angular_sampling(_circular(n_views=n, endpoint=endpoint).circular_angles())
    assert s.closed and np.rad2deg(s.coverage) == pytest.approx(360.0)
    assert s.circle_step.sum() == pytest.approx(2 * np.pi)
    assert s.circle_step.max() == pytest.approx(np.deg2rad(10.0))


def test_ramp_response_is_band_limited_ramp():
    n_fft = padded_length(100)
    f = np.arange(n_fft // 2 + 1) / n_fft  # cycles per pixel
    ramp = ramp_response(n_fft, "ram-lak", dtype=torch.float64).numpy()
    assert 0 < ramp[0] < 2 / (np.pi**2 * n_fft)  # small positive DC: no offset of a uniform object
    np.testing.assert_allclose(ramp[4:], f[4:], rtol=0.02)
    hann = ramp_response(n_fft, "hann", cutoff=0.5, dtype=torch.float64).numpy()
    np.testing.assert_allclose(hann[f >= 0.25], 0.0, atol=1e-12)
    np.testing.assert_allclose(hann[1:20], ramp[1:20] * np.cos(np.pi * f[1:20] / 0.5) ** 2, rtol=1e-12)


# ---------------------------------------------------------------------------- RTK


def _uneven_full_circle() -> dict:
    """120 views over 360 deg, twice as dense on one half, in shuffled order."""
    deg = np.concatenate([np.linspace(0, 180, 80, endpoint=False), np.linspace(180, 360, 40, endpoint=False)])
    return {"angles": np.deg2rad(np.random.default_rng(1).permutation(deg))}


@pytest.mark.rtk
# Per-case bounds, about 3x the values measured (relative RMSE, 1 - correlation, relative mean
# difference): 2.3e-7, 7.5e-13, 1.0e-8 to 4.0e-8 (uneven full scan; the mean difference moves
# between installs at float32 resolution, so its bound is float32's epsilon; equal angular weights
# instead would give 1.5e-2) and 8.1e-4, 1.0e-5, 5.8e-4 (short scan: Hann window sampling,
# Parker's arc counts one more step here).
@pytest.mark.parametrize(
    "scan, filt, hann, bounds",
    [(_uneven_full_circle(), "ram-lak", 0.0, (7e-7, 2.5e-12, 1.2e-7)),
     ({"n_views": 100, "arc_deg": 215.0, "start_deg": -40.0}, "hann", 1.0, (2.5e-3, 3e-5, 2e-3))],
    ids=["full-uneven-ramlak", "short-hann"],
)
@pytest.mark.parametrize("backend", ["torch", "cpp"])  # the same bounds for the fused backprojection
def test_matches_rtk_fdk_on_shepp_logan(rtk, scan, filt, hann, bounds, backend):
    phantom = EllipsoidPhantom.shepp_logan(radius_mm=60.0)
    vg = VolumeGeometry.cube(64, 2.0)
    geom = ConeGeometry.circular(sod=400.0, sdd=600.0, det_shape=(64, 80), pixel_size=3.0, **scan)  # fan 22.6 deg
    proj = phantom.project(geom).astype(np.float32)
    ours = fdk(torch.from_numpy(proj), geom, vg, filter=filt, backend=backend).numpy()
    ref = rtk_fdk(proj, geom, vg, hann=hann, parker="n_views" in scan)
    truth = phantom.voxelize(vg, supersample=1)
    inside = truth > 0
    inside[:24] = inside[40:] = False  # central slab, |z| < 16 mm: away from cone-beam artefacts
    value_range = np.ptp(truth[inside])
    rel_rmse = np.sqrt(np.mean((ours[inside] - ref[inside]) ** 2)) / value_range
    corr = np.corrcoef(ours[inside], ref[inside])[0, 1]
    mean_rel = abs(np.mean(ours[inside], dtype=np.float64) / np.mean(ref[inside], dtype=np.float64) - 1)
    max_rel_rmse, max_decorrelation, max_mean_rel = bounds
    assert rel_rmse < max_rel_rmse and 1 - corr < max_decorrelation, (rel_rmse, 1 - corr)
    assert mean_rel < max_mean_rel, mean_rel


@pytest.mark.gpu
def test_cuda_matches_cpu(cuda_device):
    geom = _circular(n_views=40, arc_deg=230.0, det_shape=(24, 32))
    proj = torch.rand(geom.proj_shape, generator=torch.Generator().manual_seed(0))
    vg = VolumeGeometry.cube(24, 4.0)
    cpu = fdk(proj, geom, vg, filter="hamming", cutoff=0.8)
    gpu = fdk(proj.to(cuda_device), geom, vg, filter="hamming", cutoff=0.8)
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-4, atol=1e-4 * cpu.abs().max().item())


# ---------------------------------------------------------------------------- bad input


def test_bad_input():
    geom = _circular(n_views=8, det_shape=(8, 8))
    vg = VolumeGeometry.cube(8, 4.0)
    proj = torch.zeros(geom.proj_shape)
    src = geom.src + [[5.0 * (i % 2), 0.0, 0.0] for i in range(8)]  # sources off the z = 0 plane
    wobble = ConeGeometry(geom.det_shape, src, geom.det, geom.u, geom.v)
    with pytest.raises(InputError, match="circular"):
        fdk(proj, wobble, vg)
    with pytest.raises(InputError, match="shape"):
        fdk(proj[:, :, :-1], geom, vg)
    bad = proj.clone()
    bad[3, 2, 1] = float("nan")
    with pytest.raises(InputError, match="NaN"):
        fdk(bad, geom, vg)
    with pytest.raises(InputError, match="filter"):
        fdk(proj, geom, vg, filter="butterworth")
    with pytest.raises(InputError, match="cutoff"):
        fdk(proj, geom, vg, cutoff=0.0)
    with pytest.raises(InputError, match="behind"):
        fdk(proj, geom, VolumeGeometry.cube(8, 120.0))


def test_too_short_arc_warns_and_a_long_enough_one_does_not():
    # 32 columns of 2.5 mm at 600 mm: outermost pixel centres at +-38.75 mm, so the scan needs
    # 180 deg + 2 atan(38.75 / 600) = 187.39 deg
    need = 180.0 + 2 * np.rad2deg(np.arctan(15.5 * 2.5 / 600.0))
    vg = VolumeGeometry.cube(8, 4.0)
    short = _circular(n_views=20, arc_deg=185.0, det_shape=(8, 32))
    with pytest.warns(UserWarning, match="short-scan artefacts") as record:
        fdk(torch.zeros(short.proj_shape), short, vg)
    message = str(record[0].message)
    assert "cover 185.0 deg" in message and f"({need:.1f} deg)" in message
    enough = _circular(n_views=20, arc_deg=need + 0.5, det_shape=(8, 32))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fdk(torch.zeros(enough.proj_shape), enough, vg)
    assert not [w for w in caught if "short-scan" in str(w.message)]
