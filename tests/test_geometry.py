"""Volume and cone-beam geometry, rays, ray/box intersection, sampling, scan protocols."""

import math

import numpy as np
import pytest
import torch

from nfrecon.errors import InputError
from nfrecon.geometry.cone import ConeGeometry
from nfrecon.geometry.protocols import PROTOCOLS, Protocol, get_protocol
from nfrecon.geometry.rays import packed_step_samples, pixel_rays, ray_box, stratified_samples
from nfrecon.geometry.volume import VolumeGeometry

VG = VolumeGeometry((4, 6, 8), (2.0, 1.0, 0.5), center=(10.0, -5.0, 3.0))


def _rotation(axis, angle):
    """Rodrigues rotation matrix about ``axis`` (any 3-vector) by ``angle`` radians."""
    k = np.asarray(axis, dtype=np.float64) / np.linalg.norm(axis)
    K = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + math.sin(angle) * K + (1 - math.cos(angle)) * K @ K


# ---------------------------------------------------------------------------- volume
def test_volume_index_world_and_box():
    # The box is centre -+ size / 2 and voxel k's centre sits (k + 1/2) voxels above the lower face.
    np.testing.assert_allclose(VG.box_min, [10 - 4, -5 - 3, 3 - 2])
    np.testing.assert_allclose(VG.box_max, [10 + 4, -5 + 3, 3 + 2])
    rng = np.random.default_rng(0)
    idx = rng.integers(0, VG.shape, size=(20, 3))
    expected = VG.box_min + (idx + 0.5) * np.asarray(VG.voxel_size)
    np.testing.assert_allclose(VG.index_to_world(idx), expected)
    np.testing.assert_allclose(VG.world_to_index(expected), idx, atol=1e-12)
    centers = VG.voxel_centers()
    assert centers.shape == (4, 6, 8, 3)
    np.testing.assert_allclose(centers[tuple(idx.T)], expected)
    for axis in range(3):
        np.testing.assert_allclose(np.diff(VG.axis_coords(axis)), VG.voxel_size[axis])
    assert VG.n_voxels == 4 * 6 * 8
    assert VolumeGeometry.from_dict(VG.to_dict()) == VG
    finer = VG.with_shape((8, 12, 16))
    np.testing.assert_allclose([finer.box_min, finer.box_max], [VG.box_min, VG.box_max])
    assert "4x6x8 voxels" in VG.describe() and "centred at (10, -5, 3)" in VG.describe()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"shape": (0, 4, 4)},
        {"shape": (4, 4, 2.5)},
        {"shape": (4, 4)},
        {"shape": (4, 4, 4), "voxel_size": (1, -1, 1)},
        {"shape": (4, 4, 4), "voxel_size": 0},
        {"shape": (4, 4, 4), "center": (0, float("nan"), 0)},
    ],
)
def test_volume_validation(kwargs):
    with pytest.raises(InputError, match="volume geometry"):
        VolumeGeometry(**kwargs)


# ---------------------------------------------------------------------------- cone
GEOM = ConeGeometry.circular(sod=500, sdd=800, det_shape=(5, 7), pixel_size=(1.5, 2.0), n_views=16)


def test_circular_pixel_centres_follow_documented_layout():
    g = ConeGeometry.circular(sod=500, sdd=800, det_shape=(5, 7), pixel_size=(1.5, 2.0), angles=[0.0])
    pix = g.pixel_centers()[0]
    # Angle 0: source at -y, detector plane y = sdd - sod, columns along +x, rows along +z.
    np.testing.assert_allclose(g.src[0], [0, -500, 0])
    np.testing.assert_allclose(pix[..., 1], 300.0)
    np.testing.assert_allclose(pix[0, 0], [-2 * 1.5, 300, -3 * 2.0])
    np.testing.assert_allclose(pix[4, 6], [2 * 1.5, 300, 3 * 2.0])
    np.testing.assert_allclose(pix[2, 3], [0, 300, 0])  # central pixel on the central ray
    np.testing.assert_allclose(pix[:, 1:] - pix[:, :-1], np.broadcast_to([0, 0, 2.0], (5, 6, 3)))
    np.testing.assert_allclose(pix[1:] - pix[:-1], np.broadcast_to([1.5, 0, 0], (4, 7, 3)))
    # For any angle, every pixel centre lies in the plane at distance sdd from the source,
    # perpendicular to the central ray through the rotation axis.
    pix = GEOM.pixel_centers()
    axis_dir = -GEOM.src / np.linalg.norm(GEOM.src, axis=1, keepdims=True)
    dist = np.einsum("vrcj,vj->vrc", pix - GEOM.src[:, None, None], axis_dir)
    np.testing.assert_allclose(dist, 800.0)
    np.testing.assert_allclose(GEOM.sdd, 800.0)
    np.testing.assert_allclose(GEOM.sod_to(), 500.0)
    np.testing.assert_allclose(GEOM.pixel_size, (1.5, 2.0))
    assert GEOM.proj_shape == (16, 5, 7) and GEOM.n_rays == 16 * 35 and len(GEOM) == 16


def test_det_offset_and_angles():
    g = ConeGeometry.circular(sod=500, sdd=800, det_shape=(5, 7), pixel_size=1.0, n_views=4, det_offset=(3.0, -2.0))
    base = ConeGeometry.circular(sod=500, sdd=800, det_shape=(5, 7), pixel_size=1.0, n_views=4)
    np.testing.assert_allclose(g.det - base.det, 3.0 * base.v - 2.0 * base.u, atol=1e-12)
    np.testing.assert_allclose(g.circular_angles(), np.arange(4) * np.pi / 2)
    arc = ConeGeometry.circular(sod=5, sdd=8, det_shape=(1, 1), pixel_size=1, n_views=11, arc_deg=200, endpoint=True)
    assert arc.arc_deg() == pytest.approx(200.0)
    assert arc.is_circular()


def test_subsets_and_serialisation():
    np.testing.assert_allclose(GEOM[::8].circular_angles(), [0.0, np.pi])
    sub = GEOM[[1, 5, 9]]
    np.testing.assert_array_equal(sub.src, GEOM.src[[1, 5, 9]])
    assert sub.n_views == 3 and sub.det_shape == GEOM.det_shape
    assert GEOM[3].n_views == 1
    back = ConeGeometry.from_dict(GEOM.to_dict())
    assert back.allclose(GEOM, atol=0)
    assert not back.allclose(GEOM[:-1])


def _tilted(geom):
    """Rotate the whole set-up, then tilt each detector about its own centre, then shift it."""
    R, T = _rotation((1, 2, 3), 0.3), _rotation((0.2, 1, 0), 0.1)
    src, det, u, v = (getattr(geom, k) @ R.T for k in ("src", "det", "u", "v"))
    return ConeGeometry(geom.det_shape, src + [1, 2, 3], det + [4, -5, 6], u @ T.T, v @ T.T)


def test_describe_and_general_geometry():
    assert "circular arc" in GEOM.describe() and "5x7" in GEOM.describe()
    tilted = _tilted(GEOM)
    assert not tilted.is_circular()
    assert "general" in tilted.describe()
    # Normals point from the source to the detector for any orientation.
    assert np.all(np.einsum("ij,ij->i", tilted.normal, tilted.det - tilted.src) > 0)


def test_cone_validation():
    ok = {"det_shape": (2, 2), "src": [[0, -5, 0]], "det": [[0, 3, 0]], "u": [[0, 0, 1]], "v": [[1, 0, 0]]}
    ConeGeometry(**ok)
    bad = [
        {"det_shape": (0, 2)},
        {"det_shape": (2, 2, 2)},
        {"src": [[0, -5]]},
        {"det": [[0, 3, 0], [0, 3, 0]]},
        {"u": [[0, 0, float("nan")]]},
        {"u": [[2, 0, 0]]},  # parallel to v
        {"u": [[0, 0, 0]]},
        {"det": [[0, -5, 1]]},  # source in the detector plane
    ]
    for change in bad:
        with pytest.raises(InputError, match="cone geometry"):
            ConeGeometry(**{**ok, **change})
    for kwargs in ({"sod": 5, "sdd": 4}, {"sod": float("nan"), "sdd": 4}, {"sod": 1, "sdd": 2, "pixel_size": -1}):
        with pytest.raises(InputError, match="circular geometry"):
            ConeGeometry.circular(det_shape=(1, 1), **{"pixel_size": 1, "n_views": 2, **kwargs})
    with pytest.raises(InputError, match="angles or n_views"):
        ConeGeometry.circular(sod=1, sdd=2, det_shape=(1, 1), pixel_size=1)


# ---------------------------------------------------------------------------- rays
def test_pixel_rays_pass_through_pixel_centres():
    geom = _tilted(GEOM)
    flat = torch.arange(geom.n_rays)
    o, d = pixel_rays(geom, flat, dtype=torch.float64)
    np.testing.assert_allclose(torch.linalg.norm(d, dim=1).numpy(), 1.0, atol=1e-12)
    pix = geom.pixel_centers().reshape(-1, 3)  # [view, row, col] order = flat index order
    to_pix = pix - o.numpy()
    np.testing.assert_allclose(np.cross(to_pix, d.numpy()), 0.0, atol=1e-9)
    assert np.all(np.einsum("ij,ij->i", to_pix, d.numpy()) > 0)
    np.testing.assert_array_equal(o.numpy(), np.repeat(geom.src, 35, axis=0))
    o32, d32 = pixel_rays(geom, flat[::7])
    assert o32.dtype == torch.float32 and torch.allclose(d32.double(), d[::7], atol=1e-6)


def _brute_force_box(o, d, lo, hi, t_max, n=20001):
    t = np.linspace(0.0, t_max, n)
    pts = o[:, None] + t[None, :, None] * d[:, None]
    inside = np.all((pts >= lo) & (pts <= hi), axis=-1)
    near = np.where(inside.any(1), t[np.argmax(inside, 1)], np.nan)
    far = np.where(inside.any(1), t[n - 1 - np.argmax(inside[:, ::-1], 1)], np.nan)
    return near, far, t[1] - t[0]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_ray_box_matches_brute_force(dtype):
    rng = np.random.default_rng(1)
    lo, hi = np.array([-3.0, -2.0, -1.0]), np.array([2.0, 4.0, 1.5])
    o = rng.uniform(-8, 8, size=(64, 3))
    o[:8] = rng.uniform(lo, hi, size=(8, 3))  # some start inside the box
    target = rng.uniform(lo - 1, hi + 1, size=(64, 3))  # most hit, some miss
    d = (target - o) / np.linalg.norm(target - o, axis=1, keepdims=True)
    t_near, t_far = ray_box(torch.tensor(o, dtype=dtype), torch.tensor(d, dtype=dtype), lo, hi)
    near, far, h = _brute_force_box(o, d, lo, hi, 30.0)
    hit = ~np.isnan(near)
    assert 10 < hit.sum() < 64
    tol = h + (1e-4 if dtype == torch.float32 else 1e-9)
    np.testing.assert_allclose(t_near.numpy()[hit], near[hit], atol=tol)
    np.testing.assert_allclose(t_far.numpy()[hit], far[hit], atol=tol)
    np.testing.assert_array_equal(t_far.numpy()[~hit], t_near.numpy()[~hit])  # misses: (0, 0)
    np.testing.assert_array_equal(t_near.numpy()[:8], 0.0)


def test_ray_box_axis_parallel_rays_and_misses():
    lo, hi = (-1.0, -1.0, -1.0), (1.0, 1.0, 1.0)
    o = torch.tensor([[-5.0, 0.2, 0.3], [-5.0, 2.0, 0.0], [0.0, 0.0, 0.0], [5.0, 0.5, -0.5], [0.0, 5.0, 5.0]])
    d = torch.tensor([[1.0, 0, 0], [1.0, 0, 0], [0, 0, 1.0], [1.0, 0, 0], [0, -1.0, 0]])
    t_near, t_far = ray_box(o, d, lo, hi)
    assert (t_near[0], t_far[0]) == (4.0, 6.0)
    assert (t_near[2], t_far[2]) == (0.0, 1.0)  # starts inside
    # Misses: parallel to x but outside the y slab; box behind the origin; outside the z slab.
    # They come back as (0, 0), so that their samples stay finite (o + t * d with t = inf
    # and d = 0 would be NaN).
    assert t_near[[1, 3, 4]].tolist() == [0.0] * 3 and t_far[[1, 3, 4]].tolist() == [0.0] * 3
    t, dt = stratified_samples(t_near, t_far, 4)
    ray2, t2, dt2 = packed_step_samples(t_near, t_far, 0.5)
    points = torch.cat([(o[:, None] + t[..., None] * d[:, None]).reshape(-1, 3), o[ray2] + t2[:, None] * d[ray2]])
    assert torch.isfinite(points).all() and dt[[1, 3, 4]].eq(0).all() and dt2[[1, 3, 4]].eq(0).all()
    assert not torch.isin(ray2, torch.tensor([1, 3, 4])).any()  # misses get no fixed-step samples


# ---------------------------------------------------------------------------- sampling
def test_stratified_samples_one_per_bin_inside():
    gen = torch.Generator().manual_seed(0)
    near = torch.tensor([0.0, 2.0, 5.0, 3.0], dtype=torch.float64)
    far = torch.tensor([1.0, 7.0, 5.5, 1.0], dtype=torch.float64)  # last ray misses
    t, dt = stratified_samples(near, far, 16, generator=gen)
    assert t.shape == (4, 16) and dt.shape == (4, 1)
    np.testing.assert_allclose(dt[:, 0].numpy(), [1 / 16, 5 / 16, 0.5 / 16, 0.0])
    hit = dt[:, 0] > 0
    assert torch.all(t[hit] >= near[hit, None]) and torch.all(t[hit] <= far[hit, None])
    bins = torch.floor((t[hit] - near[hit, None]) / dt[hit]).long()
    assert torch.equal(bins, torch.arange(16).expand_as(bins))
    mid, _ = stratified_samples(near, far, 4, jitter=False)
    np.testing.assert_allclose(mid[1].numpy(), 2.0 + (np.arange(4) + 0.5) * 1.25)


def test_stratified_estimate_is_unbiased():
    """The mean of jittered sums of f(t) dt tends to the exact integral; midpoints stay biased."""
    draws, n = 20000, 3
    near = torch.full((draws,), 0.5, dtype=torch.float64)
    far = torch.full((draws,), 2.0, dtype=torch.float64)
    f = lambda t: torch.exp(2.0 * t)  # convex: the midpoint rule underestimates
    exact = (math.exp(4.0) - math.exp(1.0)) / 2.0
    t, dt = stratified_samples(near, far, n, generator=torch.Generator().manual_seed(3))
    est = (f(t) * dt).sum(1)
    stderr = est.std().item() / math.sqrt(draws)
    assert abs(est.mean().item() - exact) < 4 * stderr
    t_mid, dt_mid = stratified_samples(near[:1], far[:1], n, jitter=False)
    midpoint = (f(t_mid) * dt_mid).sum().item()
    assert exact - midpoint > 20 * stderr  # the test can tell a biased estimator apart


def test_packed_step_samples():
    near = torch.tensor([0.0, 1.0, 4.0, 2.0], dtype=torch.float64)
    far = torch.tensor([10.0, 1.5, 4.0, 3.05], dtype=torch.float64)
    ray, t, dt = packed_step_samples(near, far, 0.5)
    counts = torch.bincount(ray, minlength=4)
    assert counts.tolist() == [20, 1, 0, 3] and torch.equal(ray, torch.sort(ray).values)
    assert dt.shape == (4,) and torch.all(dt <= 0.5 + 1e-12)
    np.testing.assert_allclose((dt * counts).numpy(), [10.0, 0.5, 0.0, 1.05])
    assert torch.all((t >= near[ray]) & (t <= far[ray]))
    np.testing.assert_allclose(t[ray == 3].numpy(), 2.0 + (np.arange(3) + 0.5) * 0.35)
    # A ray's samples do not depend on the other rays in the batch.
    ray1, t1, dt1 = packed_step_samples(near[3:], far[3:], 0.5)
    assert torch.equal(ray1, torch.zeros(3, dtype=torch.long)) and torch.equal(t1, t[ray == 3])
    assert torch.equal(dt1[0], dt[3])


# ---------------------------------------------------------------------------- protocols
def test_presets():
    assert set(PROTOCOLS) == {"condcbnt", "naf", "r2gaussian", "small"}
    c = get_protocol("condcbnt")
    assert (c.sod, c.sdd, c.det_shape, c.pixel_size, c.n_views, c.arc_deg, c.endpoint) == (
        1000.0, 1500.0, (256, 256), (2.0, 2.0), 400, 205.0, True
    )
    assert (c.vol_shape, c.voxel_size, c.photons) == ((256,) * 3, (2.0,) * 3, 1e5)
    hu = np.array([-3000.0, -1024.0, 0.0, 1000.0, 5000.0])
    # mu(-1024) = 0.0206 - 0.0202 * 1.024 < 0 is clipped to 0; HU above 2000 saturate.
    np.testing.assert_allclose(c.hu_to_mu(hu), [0.0, 0.0, 0.0206, 0.0408, 0.0206 + 0.0404])
    torch.testing.assert_close(c.hu_to_mu(torch.tensor(hu)), torch.tensor(c.hu_to_mu(hu)))
    r2 = get_protocol("r2gaussian")  # density (HU + 1000) / 3000 per 128 mm unit, clipped to [0, 1]
    np.testing.assert_allclose(r2.hu_to_mu(np.array([-1500.0, 0.0, 2500.0])) * 128, [0.0, 1 / 3, 1.0])
    for p in PROTOCOLS.values():
        g, v = p.cone_geometry(), p.volume_geometry()
        assert g.n_views == p.n_views and v.shape == p.vol_shape
    with pytest.raises(InputError, match="known: condcbnt, naf, r2gaussian, small"):
        get_protocol("lire")


def test_every_eighth_condcbnt_view_is_the_50_view_scan():
    full = get_protocol("condcbnt")
    sparse = full.with_views(50)
    assert sparse.views == tuple(range(0, 400, 8))
    step = 205.0 / 399  # 400 views with both ends of the 205 degree arc
    expected = ConeGeometry.circular(
        sod=1000, sdd=1500, det_shape=(256, 256), pixel_size=2.0, angles=np.deg2rad(8 * step * np.arange(50))
    )
    g = sparse.cone_geometry()
    assert g.allclose(expected, atol=1e-9)
    assert g.allclose(full.cone_geometry()[::8], atol=0)
    np.testing.assert_allclose(np.diff(np.rad2deg(g.circular_angles())), 8 * step)
    assert sparse.with_views(400).views == tuple(range(400))  # always from the full set
    odd = full.with_views(7).views
    assert odd[0] == 0 and len(odd) == 7 and np.ptp(np.diff(odd)) <= 1
    for n in (0, 401):
        with pytest.raises(InputError, match="cannot take"):
            full.with_views(n)


def test_scaled_keeps_field_of_view():
    base = Protocol(
        name="b", sod=700, sdd=1100, det_shape=(96, 128), pixel_size=(1.5, 1.25), n_views=10, arc_deg=360,
        vol_shape=(80, 100, 120), voxel_size=(1.0, 1.2, 1.5), vol_center=(1.0, 2.0, 3.0), det_offset=(2.0, -1.0),
    )
    s = base.scaled(32)
    assert s.det_shape == (24, 32) and s.vol_shape == (32, 32, 32)
    np.testing.assert_allclose(np.multiply(s.det_shape, s.pixel_size), np.multiply(base.det_shape, base.pixel_size))
    vb, vs = base.volume_geometry(), s.volume_geometry()
    np.testing.assert_allclose([vs.box_min, vs.box_max], [vb.box_min, vb.box_max])
    gb, gs = base.cone_geometry(), s.cone_geometry()
    np.testing.assert_allclose(gs.src, gb.src)
    np.testing.assert_allclose(gs.det, gb.det)  # same detector centre (offsets kept)
    assert gs.fan_angle_deg() == pytest.approx(gb.fan_angle_deg())
    small = get_protocol("small")
    condcbnt_64 = get_protocol("condcbnt").scaled(64).to_dict()
    assert small == Protocol.from_dict({**condcbnt_64, "name": "small", "n_views": 50})
    assert small.cone_geometry().arc_deg() == pytest.approx(205.0)


def test_protocol_serialisation_and_validation():
    p = get_protocol("naf").with_views(10)
    assert Protocol.from_dict(p.to_dict()) == p
    good = get_protocol("small").to_dict()
    for change, match in (
        ({"bogus": 1}, "unknown field"),
        ({"sdd": 900.0}, "sod < sdd"),
        ({"det_shape": [64, 0]}, "det_shape"),
        ({"voxel_size": [1, 1, -1]}, "voxel_size must be positive"),
        ({"views": [0, 0, 3]}, "views"),
        ({"views": [0, 60]}, "views"),
        ({"photons": float("nan")}, "photons must be finite"),
    ):
        with pytest.raises(InputError, match=match):
            Protocol.from_dict({**good, **change})
    bad = dict(good)
    del bad["sod"]
    with pytest.raises(InputError, match="sod"):
        Protocol.from_dict(bad)
