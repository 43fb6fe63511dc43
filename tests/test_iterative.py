"""Iterative reconstruction: exact Krylov iterates and dense least squares, RTK's CG and
SIRT, adjoint gradient/divergence, and the gain of TV on noisy piecewise-constant data."""

import math

import numpy as np
import pytest
import torch

from nfrecon.data.phantom import Ellipsoid, EllipsoidPhantom
from nfrecon.errors import InputError
from nfrecon.geometry.cone import ConeGeometry
from nfrecon.geometry.volume import VolumeGeometry
from nfrecon.ops.projector import VoxelProjector
from nfrecon.recon.iterative import cgls, os_sart, sirt
from nfrecon.recon.tv import divergence, gradient, tv_norm, tv_pdhg


def _rel(a, b) -> float:
    return float(np.linalg.norm(np.ravel(a) - np.ravel(b)) / np.linalg.norm(np.ravel(b)))


@pytest.fixture(scope="module")
def consistent():
    """A 16^3 Shepp-Logan volume and its projections by our own projector (20 views)."""
    vg = VolumeGeometry.cube(16, 4.0)
    geom = ConeGeometry.circular(sod=250, sdd=375, det_shape=(20, 24), pixel_size=4.0, n_views=20)
    A = VoxelProjector(vg, geom)
    x_true = torch.from_numpy(EllipsoidPhantom.shepp_logan(28).voxelize(vg))
    return vg, geom, A, x_true, A(x_true)


# ---------------------------------------------------------------------- TV operators
def test_gradient_divergence_are_negative_adjoints_and_tv_values():
    spacing = (2.0, 0.5, 1.25)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand((5, 6, 7), generator=gen, dtype=torch.float64)
    y = torch.rand((3, 5, 6, 7), generator=gen, dtype=torch.float64)
    lhs = (gradient(x, spacing) * y).sum()
    rhs = -(x * divergence(y, spacing)).sum()
    assert abs(float(lhs - rhs)) < 1e-12 * abs(float(lhs))

    assert tv_norm(torch.full((5, 6, 7), 0.3), spacing) == 0.0
    step = torch.zeros((5, 6, 7), dtype=torch.float64)
    step[3:] = 0.02  # one jump of 0.02 across a z face of 6 x 7 voxels
    assert tv_norm(step, spacing) == pytest.approx(6 * 7 * 0.02 / spacing[0], rel=1e-12)
    ramp = torch.arange(7, dtype=torch.float64).expand(5, 6, 7) * 0.1
    g = gradient(ramp, spacing)
    torch.testing.assert_close(g[2, ..., :-1], torch.full((5, 6, 6), 0.1 / spacing[2], dtype=torch.float64))
    assert g[2, ..., -1].abs().max() == 0 and g[:2].abs().max() == 0


# ---------------------------------------------------------------------- CGLS
def test_cgls_iterates_match_dense_krylov_solutions_and_lstsq():
    """CGLS iterate k minimises ||Mx - p|| over the Krylov space K_k(M^T M, M^T p); the
    limit is numpy's least-squares solution (M: the projector's matrix, 6^3 x 12 views)."""
    vg = VolumeGeometry.cube(6, 4.0)
    geom = ConeGeometry.circular(sod=100, sdd=150, det_shape=(8, 8), pixel_size=4.5, n_views=12)
    A = VoxelProjector(vg, geom)
    eye = torch.eye(vg.n_voxels, dtype=torch.float64)
    M = torch.stack([A(e.reshape(vg.shape)).reshape(-1) for e in eye], 1).numpy()  # (768, 216)
    rng = np.random.default_rng(0)
    p = M @ rng.random(vg.n_voxels) + 0.1 * rng.standard_normal(M.shape[0])  # inconsistent
    x_ls = np.linalg.lstsq(M, p, rcond=None)[0]

    iterates = {}

    def keep(k, x):
        iterates[k] = x.numpy().ravel().copy()

    res = cgls(torch.from_numpy(p.reshape(geom.proj_shape)), A, 150, callback=keep)
    krylov = [M.T @ p]
    for _ in range(7):
        krylov.append(M.T @ (M @ krylov[-1]))
    for k in (1, 3, 8):
        q, _ = np.linalg.qr(np.stack(krylov[:k], 1))
        x_k = q @ np.linalg.lstsq(M @ q, p, rcond=None)[0]
        assert _rel(iterates[k], x_k) < 1e-9, k

    assert res.n_iter == 150 and len(res.residuals) == 151 and not res.stopped_early
    assert _rel(res.volume.numpy(), x_ls) < 1e-5
    assert np.all(np.diff(res.residuals) <= 0)
    assert res.residuals[-1] == pytest.approx(np.linalg.norm(M @ x_ls - p) / np.linalg.norm(p), rel=1e-8)
    res32 = cgls(torch.from_numpy(p.reshape(geom.proj_shape)).float(), A, 150)
    assert res32.volume.dtype == torch.float32 and _rel(res32.volume.numpy(), x_ls) < 5e-3


def test_cgls_on_consistent_data_and_tolerance(consistent):
    _vg, _geom, A, x_true, p = consistent
    seen = []
    res = cgls(p, A, 40, callback=lambda k, x: seen.append(k))
    r = np.array(res.residuals)
    assert seen == list(range(1, 41)) and r[0] == 1.0
    assert np.all(r[1:] <= r[:-1] * (1 + 1e-6)) and r[-1] < 5e-3
    normal = torch.linalg.vector_norm(A.T(A(res.volume) - p)) / torch.linalg.vector_norm(A.T(p))
    assert normal < 1e-3
    assert _rel(res.volume.numpy(), x_true.numpy()) < 0.1
    assert res.residuals[-1] == pytest.approx(_rel(A(res.volume).numpy(), p.numpy()), rel=1e-3)

    early = cgls(p, A, 40, tol=0.05)
    assert early.stopped_early and early.n_iter < 40
    assert early.residuals[-1] < 0.05 <= early.residuals[-2]
    torch.testing.assert_close(early.volume, cgls(p, A, early.n_iter).volume)


# ---------------------------------------------------------------------- SIRT / OS-SART
def test_sirt_and_os_sart_on_consistent_data(consistent):
    vg, geom, A, x_true, p = consistent
    s = sirt(p, A, 8)
    o = os_sart(p, geom, vg, 8, 5)
    assert len(s.residuals) == len(o.residuals) == 9
    assert np.all(np.diff(s.residuals) < 0)
    assert o.residuals[-1] < 0.5 * s.residuals[-1]  # ordered subsets: more updates per pass
    assert o.residuals[-1] == pytest.approx(_rel(A(o.volume).numpy(), p.numpy()), rel=1e-4)
    assert s.volume.min() >= 0 and o.volume.min() >= 0
    err = [_rel(r.volume.numpy(), x_true.numpy()) for r in (s, o)]
    assert err[1] < err[0] < 0.5
    # one subset is SIRT; stopping by callback
    one = os_sart(p, geom, vg, 3, 1, callback=lambda k, x: k == 2)
    assert one.n_iter == 2 and one.stopped_early
    torch.testing.assert_close(one.volume, sirt(p, A, 2).volume, rtol=1e-5, atol=1e-8)


def test_bad_input_raises_input_error(consistent):
    vg, geom, A, _x_true, p = consistent
    with pytest.raises(InputError, match="cgls: proj has shape"):
        cgls(p[:-1], A, 3)
    bad = p.clone()
    bad[0, 0, 0] = float("nan")
    for run in (lambda: sirt(bad, A, 2), lambda: tv_pdhg(bad, A, 2, 1.0), lambda: os_sart(bad, geom, vg, 2, 2)):
        with pytest.raises(InputError, match="NaN"):
            run()
    with pytest.raises(InputError, match="x0 has shape"):
        cgls(p, A, 3, x0=torch.zeros(3, 3, 3))
    with pytest.raises(InputError, match="n_iter"):
        sirt(p, A, 0)
    with pytest.raises(InputError, match="relax"):
        sirt(p, A, 2, relax=2.5)
    with pytest.raises(InputError, match="n_subsets"):
        os_sart(p, geom, vg, 2, 21)
    with pytest.raises(InputError, match="lam"):
        tv_pdhg(p, A, 2, -1.0)
    with pytest.raises(InputError, match="tol"):
        cgls(p, A, 2, tol=-1)
    outside = VoxelProjector(VolumeGeometry.cube(4, 1.0, center=(0.0, 0.0, 5000.0)), geom)
    with pytest.raises(InputError, match="no ray"):
        tv_pdhg(p, outside, 2, 1.0)


# ---------------------------------------------------------------------- RTK
@pytest.mark.rtk
def test_cg_and_sirt_agree_with_rtk(rtk):
    """Same analytic Shepp-Logan data, same iteration count, RTK with its Joseph pair.

    The projectors differ (Joseph: bilinear in-slice, one sample per slice; ours:
    trilinear, half-voxel steps), and at 3.2 mm voxels the discretisation error of the
    phantom dominates both results (~25-35 % vs the voxelised truth), so we require the
    two reconstructions to agree within a few percent in the object and to reach the
    same error vs the truth within 10 %. Measured: CG 4.9 %, SIRT 2.9 % apart.
    """
    from itk import RTK

    from nfrecon.geometry.interop import rtk as rtk_io

    vg = VolumeGeometry.cube(20, 3.2)
    geom = ConeGeometry.circular(sod=250, sdd=375, det_shape=(24, 32), pixel_size=3.2, n_views=24)
    phantom = EllipsoidPhantom.shepp_logan(28)
    truth = phantom.voxelize(vg, supersample=3)
    proj = phantom.project(geom).astype(np.float32)
    n_iter = 8
    image = rtk.Image[rtk.F, 3]
    base = RTK.IterativeConeBeamReconstructionFilter[image]

    def run_rtk(kind):
        if kind == "cg":
            f = RTK.ConjugateGradientConeBeamReconstructionFilter[image].New()
            f.SetCudaConjugateGradient(False)
        else:  # SART with all views in one subset is SIRT
            f = RTK.SARTConeBeamReconstructionFilter[image, image].New()
            f.SetNumberOfProjectionsPerSubset(geom.n_views)
            f.SetLambda(1.0)
            f.SetEnforcePositivity(True)
        volume = rtk_io.volume_to_rtk_image(np.zeros(vg.shape, np.float32), vg)
        stack = rtk_io.projections_to_rtk_image(proj, geom)
        f.SetInput(0, volume)
        f.SetInput(1, stack)
        f.SetForwardProjectionFilter(base.ForwardProjectionType_FP_JOSEPH)
        f.SetBackProjectionFilter(base.BackProjectionType_BP_JOSEPH)
        f.SetDisableDisplacedDetectorFilter(True)
        f.SetGeometry(rtk_io.to_rtk_geometry(geom))
        f.SetNumberOfIterations(n_iter)
        f.Update()
        out, out_geom = rtk_io.volume_from_rtk_image(f.GetOutput())
        assert out_geom.shape == vg.shape and np.allclose(out_geom.center, vg.center, atol=1e-6)
        return out

    A = VoxelProjector(vg, geom)
    obj = truth > 0.005
    for kind, ours in (("cg", cgls(proj, A, n_iter)), ("sirt", sirt(proj, A, n_iter))):
        ref = run_rtk(kind)
        x = ours.volume.numpy()
        agree = _rel(x[obj], ref[obj])
        err_ours, err_rtk = _rel(x[obj], truth[obj]), _rel(ref[obj], truth[obj])
        assert agree < {"cg": 0.08, "sirt": 0.05}[kind], (kind, agree)
        assert abs(err_ours - err_rtk) < 0.1 * err_rtk, (kind, err_ours, err_rtk)
        assert abs(x[obj].mean() / ref[obj].mean() - 1) < 0.03


# ---------------------------------------------------------------------- TV gain
def test_tv_beats_cgls_and_sirt_on_noisy_piecewise_constant_phantom():
    """Poisson noise (I0 = 1000 photons, ~10 % of the line integrals), analytic data.

    CGLS and SIRT are scored at their best iteration (semi-convergence), TV-PDHG at a
    fixed iteration count with a fixed lambda. Measured RMSE (1e-4/mm): CGLS 13.1,
    SIRT 9.0, TV 6.5.
    """
    vg = VolumeGeometry.cube(20, 2.8)
    geom = ConeGeometry.circular(sod=250, sdd=375, det_shape=(24, 32), pixel_size=3.2, n_views=24)
    phantom = EllipsoidPhantom(
        (
            Ellipsoid((0, 0, 0), (19.25, 22.75, 19.25), 0, 0.02),
            Ellipsoid((0, 7, -7), (7, 7, 7), 0, 0.01),
            Ellipsoid((4.4, -8.75, 5.25), (5.25, 5.25, 5.25), 0, -0.01),
            Ellipsoid((-5.25, 0, 7), (5.25, 3.5, 8.75), 30, 0.02),
        )
    )
    truth = torch.from_numpy(phantom.voxelize(vg, supersample=3))
    rng = np.random.default_rng(0)
    i0 = 1000.0
    counts = np.maximum(rng.poisson(i0 * np.exp(-phantom.project(geom))), 1)
    proj = torch.from_numpy(-np.log(counts / i0)).float()
    A = VoxelProjector(vg, geom, step_mm=2.8)

    def rmse(x):
        return float(((x - truth) ** 2).mean().sqrt())

    curves = {"cgls": [], "sirt": []}
    cgls(proj, A, 10, callback=lambda k, x: curves["cgls"].append(rmse(x)))
    sirt(proj, A, 35, callback=lambda k, x: curves["sirt"].append(rmse(x)))
    tv = tv_pdhg(proj, A, 60, lam=2.0)
    best = {k: min(v) for k, v in curves.items()}
    assert all(np.argmin(v) < len(v) - 1 for v in curves.values())  # the best iterate is interior
    assert rmse(tv.volume) < 0.8 * min(best.values()), (rmse(tv.volume), best)
    assert tv.volume.min() >= 0 and len(tv.residuals) == 61
    assert tv_norm(tv.volume, vg.voxel_size) < 1.2 * tv_norm(truth, vg.voxel_size)  # noise is not kept


def test_tv_pdhg_tolerance_and_callback(consistent):
    _vg, _geom, A, _x_true, p = consistent
    seen = []
    res = tv_pdhg(p, A, 100, lam=0.05, tol=0.02, callback=lambda k, x: seen.append(float(x.min())))
    assert res.stopped_early and 2 < res.n_iter < 100 and len(seen) == res.n_iter
    assert len(res.residuals) == res.n_iter + 1 and res.residuals[0] == 1.0 and res.residuals[-1] < 0.2
    assert min(seen) >= 0  # x >= 0 at every iterate
    stopped = tv_pdhg(p, A, 10, lam=0.05, op_norm=200.0, callback=lambda k, x: k == 3)
    assert stopped.n_iter == 3 and stopped.stopped_early


# ---------------------------------------------------------------------- CUDA
@pytest.mark.gpu
def test_cuda_matches_cpu(cuda_device, consistent):
    _vg, _geom, A, _x_true, p = consistent
    runs = (lambda q: cgls(q, A, 5), lambda q: sirt(q, A, 5), lambda q: tv_pdhg(q, A, 5, 1.0, adaptive=False))
    for run in runs:
        cpu, gpu = run(p), run(p.to(cuda_device))
        assert gpu.volume.device.type == "cuda"
        assert _rel(gpu.volume.cpu().numpy(), cpu.volume.numpy()) < 1e-4
        assert math.isclose(gpu.residuals[-1], cpu.residuals[-1], rel_tol=1e-4)
