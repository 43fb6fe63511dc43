"""Renderer: matches the voxel projector on a voxel field; gradients match finite differences."""

import torch

from nfrecon.fields import NAFField, NAFFieldConfig, VoxelField
from nfrecon.fields.hashgrid import HashGridConfig
from nfrecon.fields.mlp import MLPConfig
from nfrecon.geometry.cone import ConeGeometry
from nfrecon.geometry.volume import VolumeGeometry
from nfrecon.ops.projector import VoxelProjector
from nfrecon.render.raymarch import RayMarcher

VG = VolumeGeometry((12, 10, 14), (2.0, 2.5, 1.5), center=(1.0, -1.0, 2.0))
GEOM = ConeGeometry.circular(sod=200, sdd=300, det_shape=(10, 12), pixel_size=(4.0, 3.5), n_views=5, arc_deg=200)


def test_voxel_field_rendering_equals_the_voxel_projector():
    gen = torch.Generator().manual_seed(0)
    volume = torch.rand(VG.shape, generator=gen, dtype=torch.float64) * 0.02
    rays = torch.arange(GEOM.n_rays)
    expected = VoxelProjector(VG, GEOM, step_mm=0.02).project_rays(volume, rays)
    field = VoxelField(volume, VG)
    marcher = RayMarcher(GEOM, VG, n_samples=2000)
    with torch.no_grad():
        midpoint = marcher(field.float(), rays, jitter=False).double()
    hit = expected > 1e-3
    assert hit.sum() > 0.5 * len(rays)
    torch.testing.assert_close(midpoint[hit], expected[hit], rtol=2e-3, atol=0)
    assert torch.all(midpoint[~hit].abs() < 1e-3)


def test_jittered_rendering_is_an_unbiased_estimate():
    volume = torch.rand(VG.shape, generator=torch.Generator().manual_seed(1)) * 0.02
    field = VoxelField(volume, VG)
    rays = torch.arange(0, GEOM.n_rays, 7)
    exact = VoxelProjector(VG, GEOM, step_mm=0.05).project_rays(volume, rays)
    marcher = RayMarcher(GEOM, VG, n_samples=8)
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        draws = torch.stack([marcher(field, rays, jitter=True, generator=gen) for _ in range(400)])
    mean, sem = draws.mean(0), draws.std(0) / 20
    ok = (mean - exact).abs() <= 4 * sem + 1e-5
    assert ok.float().mean() > 0.97


def test_gradients_match_finite_differences():
    torch.manual_seed(3)
    cfg = NAFFieldConfig(
        encoder=HashGridConfig(n_levels=3, n_features_per_level=2, log2_hashmap_size=8, base_resolution=3,
                               init_scale=0.5),
        mlp=MLPConfig(hidden=(8, 8), skips=(1,)),
    )
    field = NAFField(cfg, VG, mu_max=0.05).double()
    marcher = RayMarcher(GEOM, VG, n_samples=16)
    rays = torch.arange(0, GEOM.n_rays, 5)
    target = torch.rand(len(rays), dtype=torch.float64)
    points, dt = marcher.samples(rays, jitter=False)
    points, dt = points.double(), dt.double()

    def loss():
        return (((field(points) * dt).sum(-1) - target) ** 2).mean()

    params = [field.encoder.table, field.mlp.layers[0].weight]
    grads = torch.autograd.grad(loss(), params)
    eps = 1e-6
    for p, g in zip(params, grads):
        flat = p.data.view(-1)
        picks = torch.nonzero(g.view(-1).abs() > 1e-8).view(-1)[:6]
        assert len(picks) > 0
        for i in picks:
            old = flat[i].item()
            flat[i] = old + eps
            up = loss().item()
            flat[i] = old - eps
            down = loss().item()
            flat[i] = old
            assert abs((up - down) / (2 * eps) - g.view(-1)[i].item()) <= 1e-6 + 1e-4 * abs(g.view(-1)[i].item())
