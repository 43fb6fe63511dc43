"""Voxel projector and FDK backprojection kernels (cpp, cuda) against the torch reference and RTK.

The kernels of ``cuda/include/nfrecon/{projector,fdk}.h`` must compute the same maps as
``nfrecon/ops/projector/reference.py`` and ``nfrecon/recon/fdk.py::_backproject``: values,
the exact transpose, ray subsets, gradients, and the same agreement with RTK.
"""

import numpy as np
import pytest
import torch

from nfrecon.errors import InputError
from nfrecon.geometry.cone import ConeGeometry
from nfrecon.geometry.volume import VolumeGeometry
from nfrecon.ops.backend import extension
from nfrecon.ops.projector import VoxelProjector
from nfrecon.recon.fdk import fdk

# a detector wider than the volume's shadow: many rays miss the box; anisotropic voxels and an
# off-centre grid, so no axis or offset is symmetric by accident
GEOM = ConeGeometry.circular(sod=300, sdd=450, det_shape=(20, 28), pixel_size=(3.5, 4.0), n_views=5, arc_deg=300)
VG = VolumeGeometry((10, 12, 14), (3.0, 2.5, 2.0), center=(2.0, -3.0, 4.0))
TOL = {torch.float64: {"rtol": 1e-12, "atol": 1e-12}, torch.float32: {"rtol": 2e-5, "atol": 2e-5}}


@pytest.fixture(scope="module")
def cpp():
    if not extension.load("cpu").ok:
        pytest.skip(f"CPU kernels do not build here: {extension.load('cpu').reason}")
    return "cpp"


def _pair(step_mm=None, geom=GEOM, vg=VG):
    return (VoxelProjector(vg, geom, step_mm=step_mm, backend="cpp"),
            VoxelProjector(vg, geom, step_mm=step_mm, backend="torch"))


def _scaled_close(a, b, dtype):
    """assert_close with the tolerance relative to the largest value of b."""
    scale = float(b.abs().max())
    tol = TOL[dtype]
    torch.testing.assert_close(a, b, rtol=tol["rtol"], atol=tol["atol"] * scale)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("step_mm", [None, 2.0, 0.7])
def test_cpp_forward_and_adjoint_match_the_torch_reference(cpp, dtype, step_mm):
    A, R = _pair(step_mm)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(VG.shape, generator=gen, dtype=dtype)
    y = torch.rand(GEOM.proj_shape, generator=gen, dtype=dtype)
    ax, rx = A(x), R(x)
    assert A.backend_for(x) == "cpp" and ax.dtype == dtype and ax.shape == GEOM.proj_shape
    missed = rx == 0
    assert 0.1 < missed.double().mean() < 0.9  # both rays that miss and rays that cross
    assert torch.all(ax[missed] == 0)
    _scaled_close(ax, rx, dtype)
    _scaled_close(A.T(y), R.T(y), dtype)


def test_cpp_uniform_box_gives_chord_lengths(cpp):
    A, _ = _pair()
    chords = VoxelProjector(VG, GEOM, backend="torch")(torch.ones(VG.shape, dtype=torch.float64))
    torch.testing.assert_close(A(torch.full(VG.shape, 0.02, dtype=torch.float64)), 0.02 * chords,
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_cpp_subsets_of_rays_match_the_full_stack_and_the_reference(cpp, dtype):
    A, R = _pair()
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(VG.shape, generator=gen, dtype=dtype)
    idx = torch.randperm(GEOM.n_rays, generator=gen)[:300]
    idx = torch.cat([idx, idx[:5]])  # a ray given twice counts twice
    full = A(x).reshape(-1)
    sub = A.project_rays(x, idx)
    torch.testing.assert_close(sub, full[idx], rtol=0, atol=0)  # the same rays, the same numbers
    _scaled_close(sub, R.project_rays(x, idx), dtype)
    values = torch.rand(len(idx), generator=gen, dtype=dtype)
    dense = torch.zeros(GEOM.n_rays, dtype=dtype).index_add_(0, idx, values)
    _scaled_close(A.adjoint_rays(values, idx), A.T(dense.reshape(GEOM.proj_shape)), dtype)
    _scaled_close(A.adjoint_rays(values, idx), R.adjoint_rays(values, idx), dtype)
    assert A.project_rays(x, idx[:0]).shape == (0,)


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_cpp_adjointness(cpp, dtype, tol):
    A, _ = _pair()
    gen = torch.Generator().manual_seed(2)
    for _ in range(3):
        x = torch.rand(VG.shape, generator=gen, dtype=dtype)
        y = torch.rand(GEOM.proj_shape, generator=gen, dtype=dtype)
        lhs = (A(x).double() * y.double()).sum()
        rhs = (x.double() * A.T(y).double()).sum()
        assert abs(lhs - rhs) / abs(lhs) < tol, (lhs, rhs)


def test_cpp_backprojection_is_bitwise_repeatable(cpp):
    A, _ = _pair(step_mm=0.5)
    y = torch.rand(GEOM.proj_shape, generator=torch.Generator().manual_seed(3))
    first = A.T(y)
    assert all(torch.equal(first, A.T(y)) for _ in range(3))


def test_cpp_autograd_uses_the_exact_adjoint_and_double_backward(cpp):
    A, _ = _pair()
    gen = torch.Generator().manual_seed(4)
    x = torch.rand(VG.shape, dtype=torch.float64, generator=gen, requires_grad=True)
    y = torch.rand(GEOM.proj_shape, dtype=torch.float64, generator=gen)
    loss = 0.5 * ((A(x) - y) ** 2).sum()
    (grad,) = torch.autograd.grad(loss, x, create_graph=True)
    torch.testing.assert_close(grad, A.T(A(x.detach()) - y))
    v = torch.rand(VG.shape, dtype=torch.float64, generator=gen)
    (hv,) = torch.autograd.grad((grad * v).sum(), x)  # Hessian-vector product A^T A v
    torch.testing.assert_close(hv, A.T(A(v)))
    # ray subsets and the backprojection itself are differentiable too (finite differences)
    small = VoxelProjector(VolumeGeometry.cube(4, 6.0), GEOM[:2], backend="cpp")
    idx = torch.arange(0, small.geom.n_rays, 7)
    x4 = torch.rand(small.vol_geom.shape, dtype=torch.float64, generator=gen, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: small.project_rays(t, idx), (x4,))
    p = torch.rand(len(idx), dtype=torch.float64, generator=gen, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: small.adjoint_rays(t, idx), (p,))


def test_auto_backend_picks_cpp_on_the_cpu_and_torch_for_other_dtypes(cpp):
    A = VoxelProjector(VG, GEOM)
    assert A.backend_for(torch.zeros(1)) == "cpp"
    assert A.backend_for(torch.zeros(1, dtype=torch.bfloat16)) == "torch"
    with pytest.raises(InputError, match="float32 or float64"):
        VoxelProjector(VG, GEOM, backend="cpp")(torch.zeros(VG.shape, dtype=torch.bfloat16))


def test_bad_input_is_an_input_error_before_any_kernel(cpp):
    A = VoxelProjector(VG, GEOM, backend="cpp")
    with pytest.raises(InputError, match="volume has shape"):
        A(torch.zeros(10, 12, 15))
    with pytest.raises(InputError, match="floating point"):
        A(torch.zeros(VG.shape, dtype=torch.int32))
    with pytest.raises(InputError, match="projections have shape"):
        A.T(torch.zeros(1, 2, 3))
    with pytest.raises(InputError, match=r"ray indices must lie in \[0, 2800\)"):
        A.project_rays(torch.zeros(VG.shape), torch.tensor([0, GEOM.n_rays]))
    with pytest.raises(InputError, match="ray indices must lie"):
        A.adjoint_rays(torch.zeros(1), torch.tensor([-1]))
    with pytest.raises(InputError, match="1-D integer"):
        A.project_rays(torch.zeros(VG.shape), torch.tensor([0.5]))
    with pytest.raises(InputError, match=r"values must have shape \(2,\)"):
        A.adjoint_rays(torch.zeros(3), torch.tensor([0, 1]))
    with pytest.raises(InputError, match="--backend: the projector runs on one of"):
        VoxelProjector(VG, GEOM, backend="tcnn")
    with pytest.raises(InputError, match="--backend: FDK runs on one of"):
        fdk(torch.zeros(GEOM.proj_shape), GEOM, VG, backend="gpu")


@pytest.mark.rtk
def test_cpp_matches_rtk_joseph_on_real_ct(cpp, rtk, shared_data):
    """The test of tests/test_projector.py, forward and back, with the cpp backend."""
    from nfrecon.recon.rtk_reference import rtk_joseph, rtk_joseph_adjoint

    z = np.load(shared_data / "torso_ct_totalsegmentator_3mm.npz")
    hu = z["volume_hu"].astype(np.float32)
    mu = 0.0206 * np.clip(1 + np.clip(hu, -1000, None) / 1000, 0, None)
    vg = VolumeGeometry(mu.shape, tuple(float(s) for s in z["spacing_zyx_mm"]))
    geom = ConeGeometry.circular(sod=600, sdd=900, det_shape=(48, 80), pixel_size=(5.0, 6.0), n_views=5, arc_deg=200)
    A = VoxelProjector(vg, geom, backend="cpp")
    ours = A(torch.from_numpy(mu)).numpy()
    ref = rtk_joseph(mu, vg, geom)
    through = ref > 0.05 * ref.max()
    rel = np.abs(ours[through] - ref[through]) / ref[through]
    assert np.mean(rel) < 0.01, np.mean(rel)
    assert np.percentile(rel, 99) < 0.05
    assert np.all(ours[ref == 0] < 1e-3)  # rays that miss the volume for RTK miss it for us too
    # the backprojection of the same stack agrees with RTK's Joseph backprojector as well as the
    # torch reference's does (RTK's transpose is of its own, bilinear-in-slices, projector)
    back = A.T(torch.from_numpy(ref)).numpy()
    torch_back = VoxelProjector(vg, geom, backend="torch").T(torch.from_numpy(ref)).numpy()
    ref_back = rtk_joseph_adjoint(ref, geom, vg)
    inside = ref_back > 0.05 * ref_back.max()
    rel_back = np.mean(np.abs(back[inside] - ref_back[inside]) / ref_back[inside])
    rel_torch = np.mean(np.abs(torch_back[inside] - ref_back[inside]) / ref_back[inside])
    assert abs(rel_back - rel_torch) < 1e-4, (rel_back, rel_torch)
    assert rel_back < 0.1, rel_back


# ---------------------------------------------------------------------------- FDK


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cpp_fdk_backprojection_matches_torch(cpp, dtype):
    geom = ConeGeometry.circular(sod=300.0, sdd=450.0, det_shape=(16, 24), pixel_size=3.0, n_views=30, arc_deg=360)
    vg = VolumeGeometry((12, 14, 16), (4.0, 3.5, 3.0), center=(1.0, 2.0, -3.0))
    proj = torch.rand(geom.proj_shape, generator=torch.Generator().manual_seed(5), dtype=dtype)
    ours = fdk(proj, geom, vg, filter="hamming", backend="cpp")
    ref = fdk(proj, geom, vg, filter="hamming", backend="torch")
    assert ours.dtype == dtype
    tol = 1e-12 if dtype == torch.float64 else 2e-6
    torch.testing.assert_close(ours, ref, rtol=tol, atol=tol * float(ref.abs().max()))


# ---------------------------------------------------------------------------- GPU


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_projector_matches_cpp(cpp, cuda_device, dtype):
    A = VoxelProjector(VG, GEOM)
    gen = torch.Generator().manual_seed(6)
    x = torch.rand(VG.shape, generator=gen, dtype=dtype)
    y = torch.rand(GEOM.proj_shape, generator=gen, dtype=dtype)
    idx = torch.randperm(GEOM.n_rays, generator=gen)[:100]
    assert A.backend_for(x.to(cuda_device)) == "cuda"
    _scaled_close(A(x.to(cuda_device)).cpu(), A(x), dtype)
    _scaled_close(A.T(y.to(cuda_device)).cpu(), A.T(y), dtype)
    _scaled_close(A.project_rays(x.to(cuda_device), idx).cpu(), A.project_rays(x, idx), dtype)
    lhs = (A(x.to(cuda_device)).double() * y.to(cuda_device).double()).sum()
    rhs = (x.to(cuda_device).double() * A.T(y.to(cuda_device)).double()).sum()
    assert abs(float(lhs - rhs)) / abs(float(lhs)) < (1e-12 if dtype == torch.float64 else 1e-5)


@pytest.mark.gpu
def test_cuda_fdk_matches_cpp(cpp, cuda_device):
    geom = ConeGeometry.circular(sod=300.0, sdd=450.0, det_shape=(16, 24), pixel_size=3.0, n_views=30, arc_deg=360)
    vg = VolumeGeometry.cube(16, 4.0)
    proj = torch.rand(geom.proj_shape, generator=torch.Generator().manual_seed(7))
    cpu = fdk(proj, geom, vg, backend="cpp")
    gpu = fdk(proj.to(cuda_device), geom, vg, backend="cuda")
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-4, atol=1e-4 * float(cpu.abs().max()))
