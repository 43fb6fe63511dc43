"""Metrics against scikit-image (PSNR, 3D SSIM, per-slice 2D SSIM) and closed forms."""

import math

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio as sk_psnr
from skimage.metrics import structural_similarity as sk_ssim

from nfrecon.errors import InputError
from nfrecon.metrics import DEFINITIONS, evaluate, psnr, ssim3d, ssim_slices

SHAPE = (20, 23, 17)


def _random_pair(seed=0):
    rng = np.random.default_rng(seed)
    gt = rng.random(SHAPE)
    return gt + 0.1 * rng.standard_normal(SHAPE), gt


def _structured_pair():
    """A smooth ball on a ramp, zero on the outer slices, and a blurred, biased 'recon'."""
    z, y, x = np.meshgrid(*(np.arange(n) - (n - 1) / 2 for n in SHAPE), indexing="ij")
    gt = 0.02 * (np.sqrt(z**2 + y**2 + x**2) < 7) + 0.001 * (x + 10)
    gt[:2], gt[:, -1], gt[..., 0] = 0, 0, 0  # empty slices along every axis
    recon = 0.9 * gt + 0.0005 * np.cos(0.7 * z + 0.3 * y) + 0.002
    return recon, gt


def _sk_slices(x, gt, data_range):
    """skimage 2D SSIM per slice, skipping slices whose ground truth has max <= 0."""
    means = []
    for axis in range(3):
        vals = [
            sk_ssim(np.take(gt, i, axis), np.take(x, i, axis), win_size=7, data_range=data_range)
            for i in range(gt.shape[axis])
            if np.take(gt, i, axis).max() > 0
        ]
        means.append(np.mean(vals))
    return np.mean(means), means


@pytest.mark.parametrize("pair", [_random_pair, _structured_pair])
def test_psnr_and_ssim_match_skimage(pair):
    x, gt = pair()
    r = gt.max()
    assert abs(psnr(x, gt) - sk_psnr(gt, x, data_range=r)) < 1e-9
    assert abs(psnr(x, gt, data_range=2.5) - sk_psnr(gt, x, data_range=2.5)) < 1e-9
    for data_range in (None, 3 * r):
        rr = r if data_range is None else data_range
        assert abs(ssim3d(x, gt, data_range) - sk_ssim(gt, x, win_size=7, data_range=rr)) < 1e-6
        mean, per_axis = _sk_slices(x, gt, rr)
        s = ssim_slices(x, gt, data_range)
        assert abs(s.mean - mean) < 1e-6
        np.testing.assert_allclose([s.z, s.y, s.x], per_axis, atol=1e-6)


def test_structured_volume_skips_empty_slices():
    """The empty border slices are left out of the per-axis means (R2-Gaussian's rule)."""
    x, gt = _structured_pair()
    with_empty = np.mean([sk_ssim(gt[i], x[i], win_size=7, data_range=gt.max()) for i in range(SHAPE[0])])
    assert abs(ssim_slices(x, gt).z - with_empty) > 1e-3


def test_identical_volumes_give_inf_psnr_and_unit_ssim():
    _, gt = _random_pair(1)
    assert psnr(gt, gt) == math.inf
    assert ssim3d(gt, gt) == pytest.approx(1.0, abs=1e-12)
    s = ssim_slices(gt, gt)
    np.testing.assert_allclose(list(s), 1.0, atol=1e-12)


def test_ssim_drops_with_noise_and_psnr_follows_mse():
    rng = np.random.default_rng(2)
    gt = rng.random(SHAPE)
    noise = rng.standard_normal(SHAPE)
    ssims = [ssim3d(gt + s * noise, gt) for s in (0.01, 0.1, 0.5)]
    assert ssims[0] > ssims[1] > ssims[2]
    mse = np.mean((0.1 * noise) ** 2)
    assert psnr(gt + 0.1 * noise, gt) == pytest.approx(10 * np.log10(gt.max() ** 2 / mse), rel=1e-12)


def test_torch_inputs_match_numpy():
    x, gt = _structured_pair()
    xt, gtt = torch.from_numpy(x).float(), torch.from_numpy(gt).float()
    x32, gt32 = x.astype(np.float32), gt.astype(np.float32)  # the same float32 values
    assert psnr(xt, gtt) == pytest.approx(psnr(x32, gt32), rel=1e-12)
    assert ssim3d(xt, gtt) == pytest.approx(ssim3d(x32, gt32), rel=1e-12)
    assert ssim_slices(xt, gt32).mean == pytest.approx(ssim_slices(x32, gt32).mean, rel=1e-12)


def test_evaluate_labels_every_number():
    x, gt = _structured_pair()
    m = evaluate(x, gt)
    assert m["data_range"] == gt.max() and m["data_range_source"] == "max(gt)"
    assert m["psnr_db"] == pytest.approx(sk_psnr(gt, x, data_range=gt.max()), abs=1e-9)
    assert m["ssim_3d"] == pytest.approx(sk_ssim(gt, x, win_size=7, data_range=gt.max()), abs=1e-6)
    assert m["mae"] == pytest.approx(np.abs(x - gt).mean(), rel=1e-12)
    assert m["rmse"] == pytest.approx(np.sqrt(((x - gt) ** 2).mean()), rel=1e-12)
    assert set(m["ssim_2d_axes"]) == {"z", "y", "x"}
    assert m["ssim_2d_mean_3axes"] == pytest.approx(np.mean(list(m["ssim_2d_axes"].values())))
    numbers = {k for k, v in m.items() if isinstance(v, (float, dict)) and k != "definitions"}
    assert numbers <= set(m["definitions"]) and m["definitions"] == DEFINITIONS
    given = evaluate(x, gt, data_range=1.0)
    assert given["data_range"] == 1.0 and given["data_range_source"] == "given"


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda x, gt: psnr(x[:-1], gt), r"x and gt shapes differ: \(19, 23, 17\) vs \(20, 23, 17\)"),
        (lambda x, gt: ssim3d(np.where(x > 0.5, np.nan, x), gt), "x contains NaN or Inf"),
        (lambda x, gt: ssim_slices(x, np.where(gt > 0.5, np.inf, gt)), "gt contains NaN or Inf"),
        (lambda x, gt: psnr(x, gt, data_range=0.0), "data_range must be finite and > 0, got data_range = 0;"),
        (lambda x, gt: evaluate(x, gt, data_range=-1.0), "data_range must be finite and > 0, got data_range = -1;"),
        (lambda x, gt: psnr(x, gt, data_range=float("nan")), "got data_range = nan;"),
        (lambda x, gt: psnr(x, -gt), r"got max\(gt\) = -"),  # default data range max(gt) <= 0
        (lambda x, gt: ssim3d(x[:, :, :6], gt[:, :, :6]), "smaller than the 7-voxel SSIM window"),
        (lambda x, gt: ssim3d(x[0], gt[0]), r"expected a 3D volume \[z, y, x\], got shape \(23, 17\)"),
        (lambda x, gt: ssim3d(x, gt, window=6), "window must be an odd integer >= 3, got 6"),
    ],
)
def test_bad_input_raises_input_error(call, message):
    x, gt = _random_pair(3)
    with pytest.raises(InputError, match=f"^metrics: .*{message}"):
        call(x, gt)


@pytest.mark.gpu
def test_cuda_tensors_give_the_cpu_numbers(cuda_device):
    x, gt = _structured_pair()
    cpu = evaluate(x, gt)
    gpu = evaluate(torch.from_numpy(x).to(cuda_device), torch.from_numpy(gt).to(cuda_device))
    for key in ("psnr_db", "ssim_3d", "ssim_2d_mean_3axes", "mae", "rmse", "data_range"):
        assert gpu[key] == pytest.approx(cpu[key], rel=1e-9, abs=1e-12), key
