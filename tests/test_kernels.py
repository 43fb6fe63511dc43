"""The fused kernels (CPU build) against their torch references: values, gradients, edge cases.

Tolerances: float64 1e-10 for the hash grid and 1e-8 for the march, relative to the largest
magnitude (the kernels follow the reference's operation order except for the summation
order of dot products and the norm of ray directions); float32 relative to the largest magnitude
of each output or gradient, 1e-5 for values and 5e-5 for gradients (sums of thousands of
float32 terms in a different order). The CPU build must be available wherever the tests run
(it needs only g++): a build failure fails these tests rather than skipping them.
"""

import itertools

import numpy as np
import pytest
import torch

from nfrecon.errors import InputError
from nfrecon.fields import NAFField, NAFFieldConfig
from nfrecon.fields.mlp import MLPConfig
from nfrecon.geometry.cone import ConeGeometry
from nfrecon.geometry.volume import VolumeGeometry
from nfrecon.ops import extension
from nfrecon.ops.hashgrid import HashGridConfig, hashgrid, hashgrid_reference
from nfrecon.ops.naf_march import MarchGeometry, NAFMarchField, naf_march, naf_march_reference
from nfrecon.render.raymarch import RayMarcher


@pytest.fixture(scope="module", autouse=True)
def cpu_kernels():
    result = extension.load("cpu")
    assert result.ok, result.reason


def assert_close_rel(got, want, rtol):
    scale = float(want.abs().max()) or 1.0
    err = float((got - want).abs().max())
    assert err <= rtol * scale, f"max error {err:.3g} vs scale {scale:.3g} (rtol {rtol})"


GRIDS = {
    # dense and hashed levels: N = 3, 6 dense in 2**10 rows; 12, 24 hashed
    "mixed": HashGridConfig(n_levels=4, n_features_per_level=2, log2_hashmap_size=10, base_resolution=3,
                            init_scale=1.0),
    # non-integer growth, three features
    "growth": HashGridConfig(n_levels=5, n_features_per_level=3, log2_hashmap_size=11, base_resolution=4,
                             per_level_scale=1.5, init_scale=1.0),
    "single_level_f1": HashGridConfig(n_levels=1, n_features_per_level=1, log2_hashmap_size=8, base_resolution=5,
                                      init_scale=1.0),
    "f4": HashGridConfig(n_levels=3, n_features_per_level=4, log2_hashmap_size=9, base_resolution=2, init_scale=1.0),
    # the smallest table: 2 rows per hashed level, every level hashed (collisions everywhere)
    "t1": HashGridConfig(n_levels=3, n_features_per_level=2, log2_hashmap_size=1, base_resolution=2, init_scale=1.0),
    # naf-fast's grid
    "naf_fast": HashGridConfig(n_levels=8, n_features_per_level=2, log2_hashmap_size=16, base_resolution=8,
                               per_level_scale=1.5, init_scale=1.0),
}


def edge_points(cfg: HashGridConfig, dtype) -> torch.Tensor:
    """Random points, points exactly on cell boundaries of every level, on the faces 0 and 1,
    and outside the cube (clamped)."""
    gen = torch.Generator().manual_seed(0)
    random = torch.rand(300, 3, generator=gen, dtype=torch.float64)
    boundaries = sorted({k / n for n in cfg.resolutions for k in range(0, n + 1, max(1, n // 4))})
    special = [0.0, 1.0, *boundaries[:6], -0.25, 1.5]
    grid = torch.tensor(list(itertools.product(special, special[::2], special[1::2])), dtype=torch.float64)
    return torch.cat([random, grid]).to(dtype)


@pytest.mark.parametrize("name", list(GRIDS))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_hashgrid_kernel_matches_the_reference_values_and_gradients(name, dtype):
    cfg = GRIDS[name]
    gen = torch.Generator().manual_seed(1)
    table = (torch.rand(cfg.offsets[-1], cfg.n_features_per_level, generator=gen, dtype=dtype) - 0.5)
    points = edge_points(cfg, dtype)
    grad_out = torch.randn(points.shape[0], cfg.n_output_dims, generator=gen, dtype=dtype)
    results = {}
    for backend in ("torch", "cpp"):
        t = table.clone().requires_grad_()
        p = points.clone().requires_grad_()
        out = hashgrid(p, t, cfg, backend)
        gt, gp = torch.autograd.grad(out, (t, p), grad_out)
        results[backend] = (out.detach(), gt, gp)
    rtol = 1e-10 if dtype == torch.float64 else 1e-5
    for got, want in zip(results["cpp"], results["torch"]):
        assert_close_rel(got, want, rtol if got is results["cpp"][0] else 5 * rtol)
    # the clamp passes no gradient outside the cube
    outside = ((points < 0) | (points > 1))
    assert torch.all(results["cpp"][2][outside] == 0)


def test_hashgrid_kernel_gradients_match_finite_differences():
    cfg = GRIDS["mixed"]
    gen = torch.Generator().manual_seed(2)
    table = (torch.rand(cfg.offsets[-1], 2, generator=gen, dtype=torch.float64) - 0.5).requires_grad_()
    points = (torch.rand(20, 3, generator=gen, dtype=torch.float64) * 0.9 + 0.05).requires_grad_()
    assert torch.autograd.gradcheck(lambda p, t: hashgrid(p, t, cfg, "cpp"), (points, table), eps=1e-6, atol=1e-7)


def test_hashgrid_backward_is_deterministic():
    cfg = GRIDS["naf_fast"]
    table = torch.rand(cfg.offsets[-1], 2).requires_grad_()
    points = torch.rand(50000, 3, generator=torch.Generator().manual_seed(3))
    grads = [torch.autograd.grad(hashgrid(points, table, cfg, "cpp").square().sum(), table)[0] for _ in range(2)]
    assert torch.equal(grads[0], grads[1])


def test_hashgrid_kernel_refuses_bad_input_before_running():
    cfg = GRIDS["mixed"]
    table = torch.zeros(cfg.offsets[-1], 2)
    with pytest.raises(InputError, match=r"shape \(\.\.\., 3\)"):
        hashgrid(torch.zeros(4, 2), table, cfg, "cpp")
    with pytest.raises(InputError, match="table has shape"):
        hashgrid(torch.zeros(4, 3), torch.zeros(10, 2), cfg, "cpp")
    with pytest.raises(InputError, match="floating point"):
        hashgrid(torch.zeros(4, 3, dtype=torch.int64), table, cfg, "cpp")
    with pytest.raises(InputError, match="finite"):
        hashgrid(torch.tensor([[0.5, float("nan"), 0.2]]), table, cfg, "cpp")
    with pytest.raises(InputError, match="contiguous"):
        hashgrid(torch.zeros(4, 3), torch.zeros(2, cfg.offsets[-1]).T, cfg, "cpp")
    with pytest.raises(InputError, match="float32 or float64"):
        hashgrid(torch.zeros(4, 3), table.half(), cfg, "cpp")
    too_many = HashGridConfig(n_levels=40, n_features_per_level=1, log2_hashmap_size=4, base_resolution=2,
                              per_level_scale=1.01)
    with pytest.raises(InputError, match="at most 32 levels"):
        hashgrid(torch.zeros(4, 3), torch.zeros(too_many.offsets[-1], 1), too_many, "cpp")
    # non-contiguous points are accepted (made contiguous), with the reference's result
    pts = torch.rand(3, 8, generator=torch.Generator().manual_seed(4)).T
    torch.testing.assert_close(hashgrid(pts, table, cfg, "cpp"), hashgrid_reference(pts, table, cfg))


# ---------------------------------------------------------------------- the fused march
VG = VolumeGeometry((8, 8, 8), (2.0, 2.0, 2.0), center=(1.0, -1.0, 0.5))  # box z [-7, 9], y [-9, 7], x [-7.5, 8.5]


def march_geometry() -> ConeGeometry:
    """Four circular views plus one whose middle column runs exactly along the box face
    x = 8.5 (grazing) and whose outer columns miss the box."""
    circ = ConeGeometry.circular(sod=60, sdd=90, det_shape=(7, 9), pixel_size=(3.0, 3.0), n_views=4, arc_deg=200)
    src = np.array([[0.0, -60.0, 8.5]])
    det = np.array([[0.0, 30.0, 8.5]])
    u = np.array([[0.0, 0.0, 3.0]])
    v = np.array([[3.0, 0.0, 0.0]])
    return ConeGeometry(det_shape=(7, 9), src=np.vstack([circ.src, src]), det=np.vstack([circ.det, det]),
                        u=np.vstack([circ.u, u]), v=np.vstack([circ.v, v]))


FIELDS = {
    "naf": NAFFieldConfig(encoder=GRIDS["mixed"], mlp=MLPConfig(hidden=(32, 32, 32), skips=(2,))),
    "width64_relu_softplus": NAFFieldConfig(encoder=GRIDS["growth"], mlp=MLPConfig(
        hidden=(64, 64), skips=(), activation="relu", out_activation="softplus")),
    "uneven_widths_no_activation": NAFFieldConfig(encoder=GRIDS["f4"], mlp=MLPConfig(
        hidden=(24, 40, 16), skips=(1, 3), out_activation="none")),
    "one_layer_single_level": NAFFieldConfig(encoder=GRIDS["single_level_f1"], mlp=MLPConfig(hidden=(8,), skips=(1,))),
}


def _field(name: str, dtype) -> NAFField:
    torch.manual_seed(0)
    field = NAFField(FIELDS[name], VG, mu_max=0.05).to(dtype)
    with torch.no_grad():  # a table of order 1 so that every level matters
        field.encoder.table.uniform_(-1, 1)
    return field


def _line_integrals_and_grads(field, marcher, rays, seed, backend):
    field.backend = backend
    pred = marcher(field, rays, jitter=seed is not None,
                   generator=torch.Generator().manual_seed(seed) if seed is not None else None)
    weight = torch.linspace(-1, 2, len(rays), dtype=pred.dtype)
    grads = torch.autograd.grad((pred * weight).sum(), list(field.parameters()))
    return pred.detach(), grads


@pytest.mark.parametrize("name", list(FIELDS))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("jitter_seed", [7, None], ids=["jitter", "midpoint"])
def test_fused_march_matches_the_torch_renderer(name, dtype, jitter_seed):
    geom = march_geometry()
    marcher = RayMarcher(geom, VG, n_samples=24)
    rays = torch.arange(geom.n_rays)
    field = _field(name, dtype)
    pred_cpp, grads_cpp = _line_integrals_and_grads(field, marcher, rays, jitter_seed, "cpp")
    pred_ref, grads_ref = _line_integrals_and_grads(field, marcher, rays, jitter_seed, "torch")
    assert (pred_ref == 0).sum() >= 4 and (pred_ref > 0).sum() > geom.n_rays // 2  # misses and hits
    rtol = 1e-8 if dtype == torch.float64 else 1e-5
    assert_close_rel(pred_cpp, pred_ref, rtol)
    for (pname, _), g_cpp, g_ref in zip(field.named_parameters(), grads_cpp, grads_ref):
        assert g_cpp.shape == g_ref.shape, pname
        assert_close_rel(g_cpp, g_ref, 5 * rtol)


def test_the_torch_march_is_the_generic_renderer():
    """naf_march_reference (what 'torch' runs) equals sampling points and calling the field."""
    geom = march_geometry()
    field = _field("naf", torch.float64)
    mg = MarchGeometry.make(geom, VG, 16)
    rays = torch.arange(geom.n_rays)
    offsets = torch.rand(len(rays), 16, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    spec = NAFMarchField(field.cfg.encoder, (2,), "leaky_relu", "sigmoid", tuple(VG.box_min), tuple(VG.size), 0.05)
    got = naf_march_reference(mg, spec, rays, offsets, field.encoder.table, field.mlp.weights, field.mlp.biases)
    from nfrecon.geometry.rays import pixel_rays, ray_box, stratified_samples

    o, d = pixel_rays(geom, rays, dtype=torch.float64)
    t_near, t_far = ray_box(o, d, VG.box_min, VG.box_max)
    t, dt = stratified_samples(t_near, t_far, 16, offsets=offsets)
    want = (field(o[:, None] + t[..., None] * d[:, None]) * dt).sum(-1)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)


def test_fused_march_backward_is_deterministic_and_training_uses_no_per_sample_memory():
    geom = ConeGeometry.circular(sod=60, sdd=90, det_shape=(32, 32), pixel_size=(1.0, 1.0), n_views=8, arc_deg=200)
    marcher = RayMarcher(geom, VG, n_samples=64)
    field = _field("naf", torch.float32)
    field.backend = "cpp"
    rays = torch.randint(geom.n_rays, (2048,), generator=torch.Generator().manual_seed(0))
    grads = []
    for _ in range(2):
        pred = marcher(field, rays, generator=torch.Generator().manual_seed(1))
        grads.append(torch.autograd.grad(pred.square().sum(), list(field.parameters())))
    for a, b in zip(*grads):
        assert torch.equal(a, b)
    # the autograd graph holds the rays, offsets and parameters only: nothing of size rays x samples x features
    pred = marcher(field, rays, generator=torch.Generator().manual_seed(1))
    saved = pred.grad_fn.saved_tensors
    biggest = max(t.numel() for t in saved if t.numel() != field.encoder.table.numel())
    assert biggest <= len(rays) * marcher.n_samples  # the (R, N) jitter offsets


def test_fused_march_refuses_bad_input_before_running():
    geom = march_geometry()
    mg = MarchGeometry.make(geom, VG, 8)
    field = _field("naf", torch.float32)
    spec = NAFMarchField(field.cfg.encoder, (2,), "leaky_relu", "sigmoid", tuple(VG.box_min), tuple(VG.size), 0.05)
    args = (field.encoder.table, field.mlp.weights, field.mlp.biases, "cpp")
    with pytest.raises(InputError, match="ray indices must lie in"):
        naf_march(mg, spec, torch.tensor([geom.n_rays]), None, *args)
    with pytest.raises(InputError, match="1-D integer"):
        naf_march(mg, spec, torch.zeros(3, 2, dtype=torch.long), None, *args)
    with pytest.raises(InputError, match="offsets must have shape"):
        naf_march(mg, spec, torch.arange(4), torch.rand(4, 3), *args)
    with pytest.raises(InputError, match="table has shape"):
        naf_march(mg, spec, torch.arange(4), None, torch.zeros(5, 2), *args[1:])
    with pytest.raises(InputError, match="table's dtype"):
        naf_march(mg, spec, torch.arange(4), None, field.encoder.table, [w.double() for w in field.mlp.weights],
                  field.mlp.biases, "cpp")
    wide = [torch.zeros(300, 8), torch.zeros(1, 300)]
    with pytest.raises(InputError, match="widths up to 256"):
        naf_march(mg, spec, torch.arange(4), None, field.encoder.table, wide, [torch.zeros(300), torch.zeros(1)], "cpp")


# ---------------------------------------------------------------------- the conditioned march
def _conditioned(backbone_hidden, modulation_hidden, skips=(), scale=1.0):
    from nfrecon.fields.conditioned import Backbone, BackboneConfig, ConditionedField, ModulationConfig, ModulationField

    torch.manual_seed(0)
    backbone = Backbone(BackboneConfig(encoder=GRIDS["mixed"], mlp=MLPConfig(hidden=backbone_hidden, skips=skips)),
                        0.05)
    modulation = ModulationField(ModulationConfig(encoder=GRIDS["growth"], mlp=MLPConfig(
        hidden=modulation_hidden, skips=(), out_activation="none")), backbone.film_widths)
    with torch.no_grad():  # a modulation far from the identity, so that every FiLM term matters
        for p in modulation.mlp.parameters():
            p.normal_(0, 0.3)
        backbone.encoder.table.uniform_(-float(scale), float(scale))
    return ConditionedField(backbone, modulation, VG)


COND_SIZES = [((32, 32, 32), (16,), ()), ((64, 48), (32, 32), (1,)), ((128,), (8,), ())]
COND_IDS = ["condcbnt-fast", "uneven-skip", "published-width"]


def _cond_grads(field, backend, run):
    from nfrecon.fields.base import use_backend

    use_backend(field, backend)
    params = [p for p in field.parameters() if p.requires_grad]
    pred = run(field)
    weight = torch.linspace(-1, 2, len(pred), dtype=pred.dtype)
    return [pred.detach(), *torch.autograd.grad((pred * weight).sum(), params)]


@pytest.mark.parametrize("sizes", COND_SIZES, ids=COND_IDS)
@pytest.mark.parametrize("frozen", [False, True], ids=["all", "frozen-backbone"])
def test_fused_conditioned_march_matches_its_reference_in_float64(sizes, frozen):
    """The kernel (float64) against cond_march_reference (float64), jittered samples: values and
    the gradients of every trainable parameter (the modulation's only, with a frozen backbone)."""
    geom = march_geometry()
    marcher = RayMarcher(geom, VG, n_samples=20)
    rays = torch.arange(geom.n_rays)
    offsets = torch.rand(len(rays), 20, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    field = _conditioned(*sizes).double()
    field.backbone.requires_grad_(not frozen)
    got = _cond_grads(field, "cpp", lambda f: f.march(marcher.march_geom, rays, offsets))
    want = _cond_grads(field, "torch", lambda f: f.march(marcher.march_geom, rays, offsets))
    n_trainable = len(list(field.modulation.parameters())) + (0 if frozen else len(list(field.backbone.parameters())))
    assert len(got) == len(want) == 1 + n_trainable
    assert (want[0] == 0).sum() >= 4 and (want[0] > 0).sum() > geom.n_rays // 2
    for i, (g, w) in enumerate(zip(got, want)):
        assert_close_rel(g, w, 1e-8)


@pytest.mark.parametrize("sizes", COND_SIZES, ids=COND_IDS)
def test_fused_conditioned_march_in_float32_is_as_accurate_as_torch(sizes):
    """float32 kernel and float32 torch renderer against the float64 torch renderer (midpoint
    samples): the kernel's error is within 3x the torch path's, for values and gradients."""
    geom = march_geometry()
    marcher = RayMarcher(geom, VG, n_samples=20)
    rays = torch.arange(geom.n_rays)
    field = _conditioned(*sizes, scale=0.1)  # (a table of +-1 saturates the sigmoid: ill-conditioned)
    run = lambda f: marcher(f, rays, jitter=False)
    got = _cond_grads(field.float(), "cpp", run)
    f32 = _cond_grads(field.float(), "torch", run)
    ref = _cond_grads(field.double(), "torch", run)
    for i, (g, t, r) in enumerate(zip(got, f32, ref)):
        g, t, scale = g.double(), t.double(), float(r.abs().max())
        err_kernel, err_torch = float((g - r).abs().max()), float((t - r).abs().max())
        assert err_kernel <= 3 * err_torch + 2e-6 * scale, f"tensor {i}: kernel {err_kernel:.3g}, torch {err_torch:.3g}"


def test_the_torch_conditioned_march_is_the_generic_renderer():
    """cond_march_reference equals sampling points and calling the ConditionedField."""
    from nfrecon.geometry.rays import pixel_rays, ray_box, stratified_samples

    geom = march_geometry()
    field = _conditioned(*COND_SIZES[1]).double()
    mg = MarchGeometry.make(geom, VG, 16)
    rays = torch.arange(geom.n_rays)
    offsets = torch.rand(len(rays), 16, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    got = field.march(mg, rays, offsets)  # backend torch: the reference
    o, d = pixel_rays(geom, rays, dtype=torch.float64)
    t_near, t_far = ray_box(o, d, VG.box_min, VG.box_max)
    t, dt = stratified_samples(t_near, t_far, 16, offsets=offsets)
    want = (field(o[:, None] + t[..., None] * d[:, None]) * dt).sum(-1)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)
