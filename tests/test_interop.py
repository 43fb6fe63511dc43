"""Geometry interop: ASTRA dictionaries, tomosipo, TIGRE / NAF / R2-Gaussian configs and RTK.

References are the other toolkits' own code (astra's geom_2vec and create_*_geom, RTK's
geometry objects and XML writer) or conventions derived by hand from their documentation.
"""

import math

import numpy as np
import pytest
import torch

from nfrecon.errors import InputError
from nfrecon.geometry.cone import ConeGeometry
from nfrecon.geometry.interop import astra as ast
from nfrecon.geometry.interop import tigre as tg
from nfrecon.geometry.protocols import get_protocol
from nfrecon.geometry.rays import pixel_rays
from nfrecon.geometry.volume import VolumeGeometry

SOD, SDD = 700.0, 1100.0
SHAPE, PIXEL = (5, 8), (1.5, 2.0)  # (rows, cols), (dv, du): distinct, so swaps show


def _rotation(axis, angle):
    k = np.asarray(axis, dtype=np.float64) / np.linalg.norm(axis)
    K = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + math.sin(angle) * K + (1 - math.cos(angle)) * K @ K


def _general(n=6):
    """A non-circular geometry: rotated set-up, detectors tilted about their centres, shifted."""
    g = ConeGeometry.circular(sod=SOD, sdd=SDD, det_shape=SHAPE, pixel_size=PIXEL, n_views=n, det_offset=(4, -7))
    R, T = _rotation((1, 2, 3), 0.3), _rotation((0.3, 1, -0.2), 0.15)
    shift = np.linspace(0, 10, n)[:, None] * np.array([1.0, -2.0, 0.5])
    return ConeGeometry(SHAPE, g.src @ R.T + shift, g.det @ R.T + 2 * shift, g.u @ R.T @ T.T, g.v @ R.T @ T.T)


def _project(geom, points):
    """Fractional (row, col) where each world point (P, 3) lands on every view's detector (views, P, 2).

    Uses only the documented meaning of src/det/u/v: pixel (r, c) is at
    det + (c - (nu - 1) / 2) u + (r - (nv - 1) / 2) v.
    """
    nv, nu = geom.det_shape
    n = np.cross(geom.u, geom.v)
    ray = points[None] - geom.src[:, None]
    t = np.einsum("vj,vj->v", geom.det - geom.src, n)[:, None] / np.einsum("vpj,vj->vp", ray, n)
    hit = geom.src[:, None] + t[..., None] * ray - geom.det[:, None]
    col = np.einsum("vpj,vj->vp", hit, geom.u) / np.einsum("vj,vj->v", geom.u, geom.u)[:, None] + (nu - 1) / 2
    row = np.einsum("vpj,vj->vp", hit, geom.v) / np.einsum("vj,vj->v", geom.v, geom.v)[:, None] + (nv - 1) / 2
    return np.stack([row, col], -1)


# ---------------------------------------------------------------------------- ASTRA
@pytest.fixture
def astra():
    return pytest.importorskip("astra")


@pytest.mark.parametrize("angles", [[0.0], [0.0, 0.5, 1.0, 2.5, -0.7, 6.0], np.linspace(0, 2 * np.pi, 17)])
def test_circular_equals_astra_geom_2vec(astra, angles):
    angles = np.asarray(angles, dtype=np.float64)
    ours = ConeGeometry.circular(sod=SOD, sdd=SDD, det_shape=SHAPE, pixel_size=PIXEL, angles=angles)
    theirs = astra.functions.geom_2vec(
        astra.create_proj_geom("cone", PIXEL[1], PIXEL[0], SHAPE[0], SHAPE[1], angles, SOD, SDD - SOD)
    )
    mine = ast.to_astra(ours)
    assert (mine["type"], mine["DetectorRowCount"], mine["DetectorColCount"]) == ("cone_vec", *SHAPE)
    assert (theirs["DetectorRowCount"], theirs["DetectorColCount"]) == SHAPE
    np.testing.assert_allclose(mine["Vectors"], theirs["Vectors"], atol=1e-9)
    assert ast.from_astra(theirs).allclose(ours, atol=1e-9)


def test_astra_round_trips_and_data_layout(astra):
    cone = astra.create_proj_geom("cone", PIXEL[1], PIXEL[0], SHAPE[0], SHAPE[1], np.array([0.1, 1.2, 3.0]), SOD, 300)
    expected = ConeGeometry.circular(sod=SOD, sdd=SOD + 300, det_shape=SHAPE, pixel_size=PIXEL, angles=[0.1, 1.2, 3.0])
    assert ast.from_astra(cone).allclose(expected, atol=1e-9)
    g = _general()
    assert ast.from_astra(ast.to_astra(g)).allclose(g, atol=0)
    # ASTRA itself accepts the dictionary and lays its projection data out as [v, view, u].
    sid = astra.data3d.create("-sino", ast.to_astra(g))
    try:
        assert astra.data3d.get(sid).shape == (SHAPE[0], g.n_views, SHAPE[1])
    finally:
        astra.data3d.delete(sid)
    with pytest.raises(InputError, match="'cone' or 'cone_vec'"):
        ast.from_astra(astra.create_proj_geom("parallel3d", 1.0, 1.0, 4, 4, np.zeros(2)))
    with pytest.raises(InputError, match="missing key"):
        ast.from_astra({"type": "cone_vec", "DetectorRowCount": 2})


def test_astra_volume_windows(astra):
    vg = VolumeGeometry((6, 4, 5), (0.5, 1.0, 0.4), center=(1.0, -2.0, 3.0))
    # Box faces by hand: z 1 -+ 1.5, y -2 -+ 2, x 3 -+ 1; astra's argument order is (Y, X, Z, x, y, z windows).
    theirs = astra.create_vol_geom(4, 5, 6, 2.0, 4.0, -4.0, 0.0, -0.5, 2.5)
    mine = ast.vol_geom_to_astra(vg)
    assert {k: mine[k] for k in ("GridRowCount", "GridColCount", "GridSliceCount")} == {
        k: theirs[k] for k in ("GridRowCount", "GridColCount", "GridSliceCount")
    }
    assert mine["option"] == pytest.approx(theirs["option"])
    assert ast.vol_geom_from_astra(theirs) == vg
    vid = astra.data3d.create("-vol", mine)
    try:
        assert astra.data3d.get(vid).shape == vg.shape  # ASTRA volume data are [z, y, x] too
    finally:
        astra.data3d.delete(vid)
    default = ast.vol_geom_from_astra(astra.create_vol_geom(4, 5, 6))  # unit voxels centred on 0
    assert default == VolumeGeometry((6, 4, 5), 1.0, (0.0, 0.0, 0.0))
    with pytest.raises(InputError, match="missing key"):
        ast.vol_geom_from_astra({"GridRowCount": 4, "GridColCount": 5, "GridSliceCount": 6, "option": {}})
    flipped = astra.create_vol_geom(4, 5, 6, 1.0, -1.0, -1.0, 1.0, -1.0, 1.0)
    with pytest.raises(InputError, match="WindowMax"):
        ast.vol_geom_from_astra(flipped)


# ---------------------------------------------------------------------------- tomosipo
def test_tomosipo_round_trip():
    """tomosipo is not installable here (NumPy 2); this runs only where it is."""
    ts = pytest.importorskip("tomosipo")
    from nfrecon.geometry.interop import tomosipo as tsi

    g = _general()
    pg = tsi.to_tomosipo(g)
    assert tsi.from_tomosipo(pg).allclose(g, atol=1e-9)
    np.testing.assert_allclose(pg.to_astra()["Vectors"], ast.to_astra(g)["Vectors"], atol=1e-9)
    vg = VolumeGeometry((6, 4, 5), (0.5, 1.0, 0.4), center=(1.0, -2.0, 3.0))
    tv = tsi.vol_geom_to_tomosipo(vg)
    assert tsi.vol_geom_from_tomosipo(tv) == vg
    assert tv.to_astra()["option"] == pytest.approx(ast.vol_geom_to_astra(vg)["option"])
    with pytest.raises(InputError):
        tsi.from_tomosipo(ts.parallel(angles=3, shape=4))


# ---------------------------------------------------------------------------- TIGRE / NAF
NAF_CFG = {  # NAF/R2-Gaussian file layout: voxel triples (x, y, z), offDetector (u, v), detector (v, u)
    "mode": "cone",
    "DSO": 1000.0,
    "DSD": 1500.0,
    "nDetector": [40, 60],
    "dDetector": [1.5, 2.0],
    "offDetector": [4.0, -3.0],
    "nVoxel": [10, 12, 14],
    "dVoxel": [1.0, 2.0, 3.0],
    "offOrigin": [5.0, -6.0, 7.0],
}
NV, NU, DV, DU, OFF_U, OFF_V = 40, 60, 1.5, 2.0, 4.0, -3.0


def _tigre_pixel(points_xyz, a):
    """Raw tigre.Ax (row, col) hit by each TIGRE-world point (X, Y, Z) at gantry angle a.

    Derived from TIGRE's documented set-up: the source circles the Z axis at DSO, at
    (DSO cos a, DSO sin a, 0); the flat detector faces it at DSD, its columns run along
    (-sin a, cos a, 0) and (raw) rows along +Z, shifted by offDetector.
    """
    s_hat = np.array([math.cos(a), math.sin(a), 0.0])
    u_hat = np.array([-math.sin(a), math.cos(a), 0.0])
    mag = 1500.0 / (1000.0 - points_xyz @ s_hat)
    y_det, z_det = points_xyz @ u_hat * mag, points_xyz[:, 2] * mag
    return np.stack([(z_det - OFF_V) / DV + (NV - 1) / 2, (y_det - OFF_U) / DU + (NU - 1) / 2], -1)


def test_tigre_convention_hand_derived():
    angles = np.array([0.0, 0.4, np.pi / 2, 2.0, -1.0])
    geom, vol = tg.from_tigre(NAF_CFG, angles)
    assert vol == VolumeGeometry((14, 12, 10), (3.0, 2.0, 1.0), center=(7.0, -6.0, 5.0))
    assert geom.det_shape == (NV, NU) and geom.pixel_size == pytest.approx((DV, DU))
    np.testing.assert_allclose(geom.src[0], [0, 0, 1000.0], atol=1e-9)  # angle 0: source on +X
    np.testing.assert_allclose(geom.src[2], [0, 1000.0, 0], atol=1e-9)  # 90 deg: on +Y
    rng = np.random.default_rng(0)
    xyz = rng.uniform(-60, 60, size=(7, 3))
    got = _project(geom, xyz[:, ::-1])  # our points are (z, y, x)
    for i, a in enumerate(angles):
        np.testing.assert_allclose(got[i], _tigre_pixel(xyz, a), atol=1e-9)
    # No offsets: the origin projects onto the detector centre.
    plain = dict(NAF_CFG, offDetector=[0, 0])
    np.testing.assert_allclose(_project(tg.from_tigre(plain, angles)[0], np.zeros((1, 3))), [[[19.5, 29.5]]] * 5)
    # TIGRE angle a is our (ASTRA) angle a + 90 degrees.
    plain_geom = tg.from_tigre(plain, angles)[0]
    ours = ConeGeometry.circular(sod=1000, sdd=1500, det_shape=(NV, NU), pixel_size=(DV, DU), angles=angles + np.pi / 2)
    assert plain_geom.allclose(ours, atol=1e-9)


def test_naf_arrays_to_ours():
    # Stored NAF image is [x, y, z]; stored projections are tigre.Ax output with rows flipped.
    image = np.arange(10 * 12 * 14, dtype=np.float32).reshape(10, 12, 14)
    vol = tg.tigre_volume_to_zyx(image)
    assert vol.shape == (14, 12, 10) and vol[5, 3, 2] == image[2, 3, 5]
    assert np.array_equal(tg.tigre_volume_to_zyx(vol), image)  # its own inverse
    np.testing.assert_array_equal(tg.tigre_volume_to_zyx(vol, layout="tigre"), vol)
    projs = np.arange(3 * 4 * 5, dtype=np.float32).reshape(3, 4, 5)
    ours = tg.tigre_projections_to_vu(projs)
    assert ours[1, 0, 2] == projs[1, 3, 2]
    np.testing.assert_array_equal(tg.tigre_projections_to_vu(projs, layout="tigre"), projs)
    assert tg.tigre_projections_to_vu(projs[0]).shape == (1, 4, 5)
    # NAF's get_voxels: image[i, j, k] sits at (x_i, y_j, z_k), linspace(-s, s) per axis.
    _, vg = tg.from_tigre(dict(NAF_CFG, offOrigin=[0, 0, 0]), [0.0])
    sx, sy, sz = (np.array(NAF_CFG["nVoxel"]) * NAF_CFG["dVoxel"] - NAF_CFG["dVoxel"]) / 2
    i, j, k = 2, 3, 5
    naf_xyz = [np.linspace(-s, s, n)[m] for s, n, m in zip((sx, sy, sz), NAF_CFG["nVoxel"], (i, j, k))]
    np.testing.assert_allclose(vg.index_to_world((k, j, i)), naf_xyz[::-1])
    with pytest.raises(InputError, match="3-D"):
        tg.tigre_volume_to_zyx(np.zeros((2, 2)))
    with pytest.raises(InputError, match="view, v, u"):
        tg.tigre_projections_to_vu(np.zeros((1, 2, 3, 4)))


def test_naf_loader_rays_agree():
    """NAF's own ray generator (src/dataset/tigre.py) rebuilt from its description: pose
    R = Rz(a) Rz(90) Rx(-90) at DSO (cos a, sin a, 0), camera ray (uu / DSD, vv / DSD, 1)
    with uu, vv the stored column / row offsets from the detector centre. NAF's loader
    reads nDetector as (W, H) and dDetector[0] as the column pitch, so only a square
    detector is unambiguous, and it applies the v offset along its stored rows (-Z), the
    opposite of TIGRE, which made the data: we follow TIGRE, so v offsets are left out."""
    cfg = dict(NAF_CFG, nDetector=[16, 16], dDetector=[2.5, 2.5], offDetector=[4.0, 0.0])
    angles = np.array([0.0, 0.7, 2.9])
    geom, _ = tg.from_tigre(cfg, angles)
    n, d = 16, 2.5

    def rz(t):
        return np.array([[math.cos(t), -math.sin(t), 0], [math.sin(t), math.cos(t), 0], [0, 0, 1.0]])

    rx = np.array([[1.0, 0, 0], [0, 0, 1.0], [0, -1.0, 0]])  # rotation about x by -90 degrees
    jj, ii = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")  # stored row j, column i
    uu = (ii + 0.5 - n / 2) * d + cfg["offDetector"][0]
    vv = (jj + 0.5 - n / 2) * d + cfg["offDetector"][1]
    cam = np.stack([uu / 1500.0, vv / 1500.0, np.ones_like(uu)], -1)
    for view, a in enumerate(angles):
        world = cam @ (rz(a) @ rz(np.pi / 2) @ rx).T  # (X, Y, Z) per stored pixel
        world /= np.linalg.norm(world, axis=-1, keepdims=True)
        flat = view * n * n + (n - 1 - jj) * n + ii  # stored row j is our row n - 1 - j
        o, dirs = pixel_rays(geom, torch.as_tensor(flat.ravel()), dtype=torch.float64)
        np.testing.assert_allclose(dirs.numpy(), world.reshape(-1, 3)[:, ::-1], atol=1e-12)
        np.testing.assert_allclose(o[0].numpy(), [0, 1000 * math.sin(a), 1000 * math.cos(a)], atol=1e-9)


def test_protocols_match_their_tigre_configs():
    naf = get_protocol("naf")
    cfg = {"DSO": 1000, "DSD": 1500, "nDetector": [256, 256], "dDetector": [2, 2], "nVoxel": [128] * 3,
           "dVoxel": [2] * 3, "offOrigin": [0, 0, 0], "offDetector": [0, 0]}
    geom, vol = tg.from_tigre(cfg, np.linspace(0, np.pi, 51)[:-1])  # NAF's angle rule
    assert geom.allclose(naf.cone_geometry(), atol=1e-9) and vol == naf.volume_geometry()
    # R2-Gaussian's scanner file (lengths in units of the [-1, 1] cube), scaled by 128 mm.
    scanner = {"DSO": 5.0, "DSD": 7.0, "nDetector": [512, 512], "sDetector": [4.0, 4.0], "nVoxel": [256] * 3,
               "sVoxel": [2.0] * 3, "offOrigin": [0, 0, 0], "offDetector": [0, 0]}
    mm = {k: (np.asarray(v) * 128.0).tolist() if k[0] in "Ds" or k.startswith("off") else v for k, v in scanner.items()}
    geom, vol = tg.from_tigre(mm, np.linspace(0, 2 * np.pi, 51)[:-1])
    r2 = get_protocol("r2gaussian")
    assert geom.allclose(r2.cone_geometry(), atol=1e-9) and vol == r2.volume_geometry()


def test_tigre_layouts_round_trip_and_errors():
    angles = np.linspace(0, 3, 4)
    cfg = dict(NAF_CFG, DSD=[1500.0, 1510.0, 1490.0, 1500.0], offDetector=[[4.0, -3.0], [5, -3], [4, -2], [0, 0]])
    geom, vol = tg.from_tigre(cfg, angles)
    assert not np.allclose(geom.sdd, geom.sdd[0])
    for layout in ("naf", "tigre"):
        back_cfg, back_angles = tg.to_tigre(geom, vol, layout=layout)
        back = tg.from_tigre(back_cfg, back_angles, layout=layout)
        assert back[0].allclose(geom, atol=1e-9) and back[1] == vol
    # The same scan written in TIGRE's own (z, y, x) / (v, u) orders.
    tigre_cfg = dict(NAF_CFG, nVoxel=[14, 12, 10], dVoxel=[3, 2, 1], offOrigin=[7, -6, 5], offDetector=[-3, 4, 0])
    g1, v1 = tg.from_tigre(NAF_CFG, angles)
    g2, v2 = tg.from_tigre(tigre_cfg, np.stack([angles, 0 * angles, 0 * angles], 1), layout="tigre")
    assert g1.allclose(g2, atol=1e-9) and v1 == v2
    with pytest.raises(InputError, match="TIGRE circular"):
        tg.to_tigre(_general(), vol)
    for change, match in (
        ({"mode": "parallel"}, "mode"),
        ({"rotDetector": [0, 0.1, 0]}, "rotDetector"),
        ({"DSD": 900.0}, "DSO < DSD"),
        ({"DSO": None}, "missing DSO"),
        ({"nDetector": [40]}, "nDetector"),
        ({"offOrigin": [0, 0]}, "offOrigin has shape"),
        ({"offOrigin": [[0, 0, 0]] * 3 + [[1, 0, 0]]}, "per-view offOrigin"),
    ):
        with pytest.raises(InputError, match=match):
            tg.from_tigre(dict(NAF_CFG, **change), angles)
    with pytest.raises(InputError, match="layout"):
        tg.from_tigre(NAF_CFG, angles, layout="matlab")
    with pytest.raises(InputError, match="angles"):
        tg.from_tigre(NAF_CFG, [[0.0, 0.1, 0.0]])


# ---------------------------------------------------------------------------- RTK
@pytest.mark.rtk
def test_rtk_circular_and_general_geometries(rtk):
    from nfrecon.geometry.interop import rtk as rt

    angles_deg = [0.0, 30.0, 135.0, 200.0, 359.0]
    g = rtk.ThreeDCircularProjectionGeometry.New()
    for a in angles_deg:
        g.AddProjection(SOD, SDD, a, 5.0, -3.0)  # projection offsets X (along u), Y (along v)
    ours = ConeGeometry.circular(
        sod=SOD, sdd=SDD, det_shape=SHAPE, pixel_size=PIXEL, angles=np.deg2rad(angles_deg), det_offset=(-3.0, 5.0)
    )
    origin, spacing = rt.projection_image_frame(ours)
    assert rt.from_rtk_geometry(g, SHAPE, spacing[:2], origin[:2]).allclose(ours, atol=1e-9)
    general = _general()
    origin, spacing = rt.projection_image_frame(general)
    back = rt.from_rtk_geometry(rt.to_rtk_geometry(general), SHAPE, spacing[:2], origin[:2])
    assert back.allclose(general, atol=1e-8)


@pytest.mark.rtk
def test_rtk_xml_from_rtk_writer(rtk, tmp_path):
    from nfrecon.geometry.interop import rtk as rt

    g = rtk.ThreeDCircularProjectionGeometry.New()
    for i, a in enumerate((10.0, 100.0, 250.0)):  # all nine parameters, varied per view
        g.AddProjection(SOD, SDD + 5 * i, a, 2.0 - i, 1.0 + i, 1.5 * i, -2.0 + i, 0.5 * i, -0.7)
    path = tmp_path / "geometry.xml"
    writer = rtk.ThreeDCircularProjectionGeometryXMLFileWriter.New()
    writer.SetFilename(str(path))
    writer.SetObject(g)
    writer.WriteFile()
    frame = ((-3.5 * PIXEL[1], -2.0 * PIXEL[0]), (PIXEL[1], PIXEL[0]))
    expected = rt.from_rtk_geometry(g, SHAPE, frame[1], frame[0])
    assert rt.read_rtk_xml(path, SHAPE, frame[1], frame[0]).allclose(expected, atol=1e-6)
    assert not expected.is_circular()  # the out-of-plane angles took effect
    with pytest.raises(InputError, match="not found"):
        rt.read_rtk_xml(tmp_path / "missing.xml", SHAPE, frame[1], frame[0])
    bad = tmp_path / "bad.xml"
    bad.write_text("<RTKThreeDCircularGeometry><Projection><GantryAngle>oops")
    with pytest.raises(InputError, match="bad.xml"):
        rt.read_rtk_xml(bad, SHAPE, frame[1], frame[0])


@pytest.mark.rtk
def test_rtk_volume_images(rtk):
    from nfrecon.geometry.interop import rtk as rt

    vg = VolumeGeometry((6, 4, 5), (0.5, 1.0, 0.4), center=(1.0, -2.0, 3.0))
    vol = np.arange(np.prod(vg.shape), dtype=np.float32).reshape(vg.shape)
    image = rt.volume_to_rtk_image(vol, vg)
    back, back_geom = rt.volume_from_rtk_image(image)
    np.testing.assert_array_equal(back, vol)
    assert back_geom.shape == vg.shape
    np.testing.assert_allclose(back_geom.voxel_size, vg.voxel_size)
    np.testing.assert_allclose(back_geom.center, vg.center)
    # Each of our voxels, found in the ITK image by its unique value, sits where ITK says.
    arr = rtk.array_from_image(image)  # numpy view of the ITK image, [k, j, i]
    for idx in ((0, 0, 0), (5, 3, 4), (2, 1, 3)):
        k, j, i = np.argwhere(arr == vol[idx])[0]
        point = image.TransformIndexToPhysicalPoint([int(i), int(j), int(k)])
        np.testing.assert_allclose(rt.rtk_to_zyx(np.array(point)), vg.index_to_world(idx), atol=1e-6)
