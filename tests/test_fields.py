"""NAF field, MLP and voxel field: ranges, shapes, parameter count, projector semantics."""

import numpy as np
import pytest
import torch

from nfrecon.errors import InputError
from nfrecon.fields import MLP, MLPConfig, NAFField, NAFFieldConfig, VoxelField, evaluate_grid
from nfrecon.fields.hashgrid import HashGridConfig
from nfrecon.geometry.cone import ConeGeometry
from nfrecon.geometry.rays import pixel_rays, ray_box
from nfrecon.geometry.volume import VolumeGeometry
from nfrecon.ops.projector import VoxelProjector

VG = VolumeGeometry((10, 12, 14), (2.0, 1.5, 1.25), center=(1.0, -2.0, 3.0))
SMALL = NAFFieldConfig(encoder=HashGridConfig(n_levels=4, log2_hashmap_size=12, base_resolution=4))


def test_naf_default_parameter_count_is_the_published_formula():
    cfg = NAFFieldConfig()
    # table: 16 levels of min((16 * 2**l + 1)**3, 2**19) rows x 2 features
    rows = sum(min((16 * 2**level + 1) ** 3, 2**19) for level in range(16))
    # MLP on 32 encoded features: 32->32, 32->32, (32 + 32)->32 (skip), 32->1, with biases
    mlp = (32 * 32 + 32) + (32 * 32 + 32) + (64 * 32 + 32) + (32 + 1)
    field = NAFField(cfg, VG, mu_max=0.05)
    n = sum(p.numel() for p in field.parameters())
    assert n == rows * 2 + mlp == cfg.n_params() == 14_266_663
    assert [tuple(layer.weight.shape) for layer in field.mlp.layers] == [(32, 32), (32, 32), (32, 64), (1, 32)]


def test_naf_output_range_and_shapes():
    torch.manual_seed(0)
    mu_max = 0.04
    field = NAFField(SMALL, VG, mu_max)
    pts = torch.randn(4000, 3) * 30  # inside and far outside the box
    for bias in (0.0, 6.0, -6.0):  # centred, and pushed towards either end of the sigmoid
        with torch.no_grad():
            field.mlp.layers[-1].bias.fill_(bias)
            field.encoder.table.uniform_(-1, 1)
        mu = field(pts)
        assert mu.shape == (4000,) and torch.all(mu > 0) and torch.all(mu < mu_max)
    for shape in [(3,), (7, 3), (2, 3, 4, 3), (0, 3)]:
        x = torch.randn(shape) * 10
        assert field(x).shape == shape[:-1]
    x = torch.randn(2, 5, 3) * 10
    torch.testing.assert_close(field(x).reshape(-1), field(x.reshape(-1, 3)))
    with pytest.raises(InputError, match="points must have shape"):
        field(torch.zeros(5, 2))
    with pytest.raises(InputError, match="mu_max"):
        NAFField(SMALL, VG, 0.0)


def test_naf_maps_the_box_to_the_unit_cube():
    field = NAFField(SMALL, VG, mu_max=0.03).double()
    corners = torch.tensor(np.array([VG.box_min, VG.box_max, [VG.box_min[0], VG.box_max[1], VG.center[2]]]))
    unit = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [0.0, 1.0, 0.5]], dtype=torch.float64)
    expected = 0.03 * torch.sigmoid(field.mlp.layers[-1](_hidden(field.mlp, field.encoder(unit))))[:, 0]
    torch.testing.assert_close(field(corners), expected, rtol=1e-12, atol=0)
    assert "mu_max" in field.state_dict()


def test_start_near_sets_the_level_of_a_flat_field():
    """With the last layer's weights at zero, start_near(mu0) makes the field exactly mu0 (the
    sigmoid's inverse, computed independently here); mu0 out of range is clamped inside it."""
    field = NAFField(SMALL, VG, 0.04)
    with torch.no_grad():
        field.mlp.layers[-1].weight.zero_()
    pts = torch.randn(50, 3) * 20
    for mu0, expect in ((0.002, 0.002), (0.03, 0.03), (0.0, 0.04 * 1e-4), (1.0, 0.04 * (1 - 1e-4))):
        field.start_near(mu0)
        torch.testing.assert_close(field(pts), torch.full((50,), expect), rtol=1e-5, atol=0)
    linear = NAFField(NAFFieldConfig(encoder=SMALL.encoder, mlp=MLPConfig(out_activation="none")), VG, 0.04)
    with pytest.raises(InputError, match="sigmoid"):
        linear.start_near(0.01)


def _hidden(mlp: MLP, x: torch.Tensor) -> torch.Tensor:
    """The last hidden activation of an NAF-shaped MLP, written out by hand (skip before layer 2)."""
    a = torch.nn.functional.leaky_relu
    h = a(mlp.layers[1](a(mlp.layers[0](x))))
    return a(mlp.layers[2](torch.cat([x, h], -1)))


def test_mlp_skip_order_and_activations():
    torch.manual_seed(1)
    x = torch.randn(50, 6)
    mlp = MLP(6, 1, MLPConfig(hidden=(8, 8, 8), skips=(2,), out_activation="none"))
    torch.testing.assert_close(mlp(x), mlp.layers[3](_hidden(mlp, x)))
    soft = MLP(6, 3, MLPConfig(hidden=(5,), skips=(), activation="relu", out_activation="softplus"))
    expected = torch.nn.functional.softplus(soft.layers[1](torch.relu(soft.layers[0](x))))
    torch.testing.assert_close(soft(x), expected)
    assert MLPConfig(hidden=(4, 4), skips=(1,)).n_params(3, 2) == (3 + 1) * 4 + (4 + 3 + 1) * 4 + (4 + 1) * 2
    for bad in ({"skips": (0,)}, {"skips": (4,)}, {"activation": "tanh"}, {"out_activation": "exp"}, {"hidden": ()}):
        with pytest.raises(InputError, match="mlp"):
            MLPConfig(**bad)


def test_voxel_field_at_centres_faces_and_outside():
    gen = torch.Generator().manual_seed(2)
    vol = torch.rand(VG.shape, generator=gen, dtype=torch.float64)
    field = VoxelField(vol, VG)
    centres = torch.from_numpy(VG.voxel_centers())
    torch.testing.assert_close(field(centres), vol, rtol=0, atol=1e-12)
    # between the outermost centre and the face: the border value; beyond the face: zero
    k, j = 3, 5
    inner = torch.from_numpy(VG.index_to_world([[k, j, -0.5], [k, j, -0.2], [k, j, VG.shape[2] - 0.5]]))
    torch.testing.assert_close(field(inner), vol[k, j, [0, 0, -1]], rtol=0, atol=1e-12)
    outer = torch.from_numpy(VG.index_to_world([[k, j, -0.51], [-0.6, j, 2], [k, VG.shape[1] - 0.4, 2]]))
    assert torch.all(field(outer) == 0)
    # halfway between two centres along x: the mean
    mid = torch.from_numpy(VG.index_to_world([[k, j, 4.5]]))
    torch.testing.assert_close(field(mid), (vol[k, j, 4:5] + vol[k, j, 5:6]) / 2, rtol=0, atol=1e-12)


def test_voxel_field_line_integrals_match_the_projector():
    """A fine midpoint rule over VoxelField equals project_rays; nothing is added outside the box."""
    geom = ConeGeometry.circular(sod=80, sdd=120, det_shape=(12, 16), pixel_size=2.5, n_views=3, arc_deg=360)
    gen = torch.Generator().manual_seed(3)
    vol = torch.rand(VG.shape, generator=gen, dtype=torch.float64)
    field = VoxelField(vol, VG)
    idx = torch.randperm(geom.n_rays, generator=gen)[:60]
    o, d = pixel_rays(geom, idx, dtype=torch.float64)
    t_near, t_far = ray_box(o, d, VG.box_min, VG.box_max)
    hit = t_far > t_near
    assert hit.sum() >= 30 and (~hit).sum() >= 5  # most rays cross the box, some miss it

    def midpoint(lo, hi, n):
        dt = ((hi - lo) / n)[:, None]
        t = lo[:, None] + (torch.arange(n, dtype=torch.float64) + 0.5) * dt
        return (field(o[:, None] + t[..., None] * d[:, None]) * dt).sum(1)

    # 1000 bins per chord, unrelated to the projector's 0.02 mm bins (the random volume is
    # rough: at its default half-voxel step the projector's own midpoint error is ~1%)
    fine = midpoint(t_near, t_far.clamp(min=t_near), 1000)
    proj = VoxelProjector(VG, geom, step_mm=0.02).project_rays(vol, idx)
    rel = (fine - proj).abs()[hit] / proj[hit]
    assert rel.max() < 1e-4, rel.max()
    assert torch.all(proj[~hit] == 0)
    # zero outside the box: 3 mm before entry and after exit, and along the rays that miss
    assert torch.all(midpoint(t_near - 3, t_near, 100) == 0) and torch.all(midpoint(t_far, t_far + 3, 100) == 0)
    far = torch.full_like(t_near, 200.0)
    assert torch.all(midpoint(far * 0, far, 2000)[~hit] == 0)

    # at the projector's own samples the two are the same function to rounding
    A = VoxelProjector(VG, geom)
    chunk = A._chunk(idx, torch.float64)
    grid = chunk.grid.reshape(-1, 3)[: chunk.n_samples]
    size, box_lo = torch.from_numpy(VG.size), torch.from_numpy(VG.box_min)
    points = (grid.flip(-1) + 1) / 2 * size + box_lo
    sums = torch.zeros(len(idx), dtype=torch.float64).index_add_(0, chunk.ray, field(points) * chunk.weight)
    torch.testing.assert_close(sums, A.project_rays(vol, idx), rtol=1e-12, atol=1e-12)


def test_evaluate_grid_in_chunks():
    gen = torch.Generator().manual_seed(4)
    vol = torch.rand(VG.shape, generator=gen)
    torch.testing.assert_close(evaluate_grid(VoxelField(vol, VG), VG, chunk=1000), vol, rtol=0, atol=1e-6)
    field = NAFField(SMALL, VG, mu_max=0.02)
    grid = evaluate_grid(field, VG, chunk=777)
    assert grid.shape == VG.shape and not grid.requires_grad
    direct = field(torch.from_numpy(VG.voxel_centers()).float()).detach()
    torch.testing.assert_close(grid, direct, rtol=1e-6, atol=1e-9)
    # another grid on the same box: same field, other sample points
    coarse = VG.with_shape((5, 6, 7))
    torch.testing.assert_close(
        evaluate_grid(field, coarse), field(torch.from_numpy(coarse.voxel_centers()).float()).detach()
    )
    with pytest.raises(InputError, match="chunk"):
        evaluate_grid(field, VG, chunk=0)


@pytest.mark.gpu
def test_naf_field_cuda_matches_cpu(cuda_device):
    torch.manual_seed(5)
    field = NAFField(SMALL, VG, mu_max=0.02)
    pts = torch.randn(2000, 3) * 10
    gpu = NAFField(SMALL, VG, mu_max=0.02).to(cuda_device)
    gpu.load_state_dict(field.state_dict())
    torch.testing.assert_close(gpu(pts.to(cuda_device)).cpu(), field(pts), rtol=1e-5, atol=1e-7)
    assert np.allclose(evaluate_grid(gpu, VG).cpu().numpy(), evaluate_grid(field, VG).numpy(), rtol=1e-5, atol=1e-7)
