"""``nfrecon import-rtk``: RTK projection stacks and geometry XML, made and checked by RTK itself.

The stack and the XML come from RTK (its circular geometry, its XML writer, its analytic
ray-ellipsoid projections, ``itk.imwrite``); the geometry we read is checked against RTK's own
projection matrices, and our FDK of the imported scan against RTK's FDK of the same stack.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nfrecon.data.rtk_import import read_rtk_scan
from nfrecon.data.scan import load_scan
from nfrecon.errors import InputError
from nfrecon.geometry.cone import ConeGeometry
from nfrecon.geometry.interop import rtk as rt
from nfrecon.recon.fdk import fdk

SID, SDD = 450.0, 700.0  # mm; fan angle 10.4 deg on 32 columns of 4 mm
NV, NU, DV, DU = 32, 32, 4.0, 4.0  # rows, columns, mm
ORIGIN = (-(NU - 1) / 2 * DU + 1.3, -(NV - 1) / 2 * DV - 0.7)  # (x, y) mm of pixel (0, 0): off-centre
PROJECTION_OFFSET = (4.0, -2.5)  # RTK ProjectionOffsetX, Y (mm)
SOURCE_OFFSET = (6.0, 3.0)  # RTK SourceOffsetX, Y (mm)
# (centre (x, y, z) mm in RTK's frame, semi-axes mm, density = mu 1/mm, angle deg about RTK's y)
ELLIPSOIDS = [((0.0, 0.0, 0.0), (30.0, 22.0, 26.0), 0.02, 0.0),
              ((8.0, -5.0, 3.0), (9.0, 7.0, 11.0), 0.01, 30.0),
              ((-10.0, 6.0, -4.0), (5.0, 6.0, 4.0), -0.005, 0.0)]


# ---------------------------------------------------------------------------- RTK-made inputs
def _rtk_geometry(rtk, angles_deg):
    g = rtk.ThreeDCircularProjectionGeometry.New()
    for a in angles_deg:
        g.AddProjection(SID, SDD, float(a), *PROJECTION_OFFSET, 0.0, 0.0, *SOURCE_OFFSET)
    return g


def _write_xml(rtk, geometry, path):
    writer = rtk.ThreeDCircularProjectionGeometryXMLFileWriter.New()
    writer.SetFilename(str(path))
    writer.SetObject(geometry)
    writer.WriteFile()
    return path


def _empty_stack(rtk, n_views, shape=(NV, NU), spacing=(DU, DV), origin=ORIGIN):
    image_type = rtk.Image[rtk.F, 3]
    source = rtk.ConstantImageSource[image_type].New()
    source.SetOrigin([float(origin[0]), float(origin[1]), 0.0])
    source.SetSpacing([float(spacing[0]), float(spacing[1]), 1.0])
    source.SetSize([int(shape[1]), int(shape[0]), int(n_views)])
    source.SetConstant(0.0)
    source.Update()
    return source.GetOutput()


def _ellipsoid_stack(rtk, geometry, n_views):
    """RTK's analytic line integrals of ELLIPSOIDS (an ITK image, RTK's projection frame)."""
    image_type = rtk.Image[rtk.F, 3]
    stack = _empty_stack(rtk, n_views)
    for centre, axes, density, angle in ELLIPSOIDS:
        f = rtk.RayEllipsoidIntersectionImageFilter[image_type, image_type].New()
        f.SetInput(stack)
        f.SetGeometry(geometry)
        f.SetCenter(centre)
        f.SetAxis(axes)
        f.SetDensity(density)
        f.SetAngle(angle)
        f.Update()
        stack = f.GetOutput()
    return stack


def _rtk_scan_files(rtk, tmp_path, angles_deg, name="scan"):
    """(stack .mha, geometry .xml, RTK geometry object, ITK stack) of ELLIPSOIDS."""
    geometry = _rtk_geometry(rtk, angles_deg)
    stack = _ellipsoid_stack(rtk, geometry, len(angles_deg))
    mha = tmp_path / f"{name}.mha"
    rtk.imwrite(stack, str(mha))
    return mha, _write_xml(rtk, geometry, tmp_path / f"{name}.xml"), geometry, stack


def _with_array(rtk, like, array):
    """An ITK image holding ``array`` [k, j, i] with the origin and spacing of ``like``."""
    image = rtk.image_from_array(np.ascontiguousarray(array, dtype=np.float32))
    image.SetOrigin(like.GetOrigin())
    image.SetSpacing(like.GetSpacing())
    return image


# ---------------------------------------------------------------------------- geometry
def _pixel_coordinates(geom: ConeGeometry, points_zyx: np.ndarray) -> np.ndarray:
    """(views, points, 2) (column, row) pixel coordinates where each point projects in our geometry:
    the ray from the source through the point meets the detector plane."""
    nv, nu = geom.det_shape
    out = np.empty((geom.n_views, len(points_zyx), 2))
    for i in range(geom.n_views):
        a = np.stack([points_zyx - geom.src[i], np.broadcast_to(-geom.u[i], points_zyx.shape),
                      np.broadcast_to(-geom.v[i], points_zyx.shape)], axis=2)
        t_col_row = np.linalg.solve(a, np.broadcast_to(geom.det[i] - geom.src[i], points_zyx.shape)[..., None])[..., 0]
        out[i] = t_col_row[:, 1:] + [(nu - 1) / 2, (nv - 1) / 2]
    return out


@pytest.mark.rtk
def test_geometry_projects_points_as_rtk_matrices(rtk, tmp_path):
    # every parameter varied per view, out-of-plane and in-plane angles included, on a
    # non-square detector with anisotropic pixels and an off-centre origin
    g = rtk.ThreeDCircularProjectionGeometry.New()
    for i, a in enumerate((0.0, 37.0, 101.0, 180.0, 263.0, 331.0)):
        g.AddProjection(SID + 7 * i, SDD - 5 * i, a, 4.0 - i, -2.5 + 0.5 * i, 2.0 - 0.8 * i, -1.5 + 0.6 * i,
                        6.0 - 2 * i, 3.0 + i)
    shape, spacing, origin = (24, 40), (2.0, 1.5), (-37.0, -20.0)
    mha = tmp_path / "p.mha"
    rtk.imwrite(_empty_stack(rtk, 6, shape, spacing, origin), str(mha))
    xml = _write_xml(rtk, g, tmp_path / "g.xml")
    scan = read_rtk_scan(mha, xml)
    geom = scan.geom
    assert geom.det_shape == shape and not geom.is_circular()  # the tilts took effect
    points = np.random.default_rng(0).uniform(-40.0, 40.0, (50, 3))  # RTK (x, y, z) mm
    ours = _pixel_coordinates(geom, rt.rtk_to_zyx(points))
    for i in range(6):
        m = np.asarray(rtk.array_from_matrix(g.GetMatrix(i)), dtype=np.float64)
        h = np.c_[points, np.ones(len(points))] @ m.T
        xy = h[:, :2] / h[:, 2:]  # RTK's projection coordinates (mm) -> pixel index (i, j)
        index = (xy - origin) / spacing
        np.testing.assert_allclose(ours[i], index, atol=1e-7)
        np.testing.assert_allclose(rt.zyx_to_rtk(geom.src[i]), np.asarray(g.GetSourcePosition(i))[:3], atol=1e-9)
    # the detector plane, not only the projection: pixel centres where RTK puts them
    assert geom.allclose(rt.from_rtk_geometry(g, shape, spacing, origin), atol=1e-9)
    np.testing.assert_allclose(rt.rtk_projection_matrices(rt.read_rtk_xml_parameters(xml)[0])[2],
                               rtk.array_from_matrix(g.GetMatrix(2)), atol=1e-9)


@pytest.mark.rtk
def test_our_geometry_round_trips_through_rtk_xml(rtk, tmp_path):
    base = ConeGeometry.circular(sod=500.0, sdd=800.0, det_shape=(24, 40), pixel_size=(1.5, 2.0), n_views=7,
                                 arc_deg=300.0, start_deg=-20.0, det_offset=(3.0, -5.0))
    # tilt the whole orbit and turn each detector in its own plane: a general geometry
    tilt = np.array([[1.0, 0.0, 0.0], [0.0, np.cos(0.05), -np.sin(0.05)], [0.0, np.sin(0.05), np.cos(0.05)]])
    turn = np.deg2rad(np.linspace(-2.0, 2.0, 7))[:, None]
    u = np.cos(turn) * base.u + np.sin(turn) * base.v * 2.0 / 1.5
    v = -np.sin(turn) * base.u * 1.5 / 2.0 + np.cos(turn) * base.v
    general = ConeGeometry(base.det_shape, base.src @ tilt.T, base.det @ tilt.T, u @ tilt.T, v @ tilt.T)
    path = tmp_path / "ours.xml"
    rt.write_rtk_xml(general, path)  # our -> RTK (its writer)
    origin, spacing = rt.projection_image_frame(general)
    assert rt.read_rtk_xml(path, general.det_shape, spacing[:2], origin[:2]).allclose(general, atol=1e-8)


def test_hand_computed_view_without_rtk(tmp_path):
    # gantry 90 deg: RTK's source on its +x axis, our source on +x; offsets move it along y, z
    xml = tmp_path / "g.xml"
    xml.write_text("""<?xml version="1.0"?>
<RTKThreeDCircularGeometry version="3">
  <SourceToIsocenterDistance>500</SourceToIsocenterDistance>
  <SourceToDetectorDistance>800</SourceToDetectorDistance>
  <Projection><GantryAngle>90</GantryAngle><ProjectionOffsetX>2</ProjectionOffsetX>
    <ProjectionOffsetY>-1</ProjectionOffsetY><SourceOffsetX>3</SourceOffsetX><SourceOffsetY>0.5</SourceOffsetY>
  </Projection>
</RTKThreeDCircularGeometry>""")
    g = rt.read_rtk_xml(xml, (4, 6), (2.0, 1.0), (-4.0, -3.0))
    np.testing.assert_allclose(g.src[0], [0.5, 3.0, 500.0], atol=1e-12)  # (z, y, x)
    # centre at projection coordinates (-4 + 2.5 * 2, -3 + 1.5 * 1) = (1, -1.5), plus the offsets
    np.testing.assert_allclose(g.det[0], [-2.5, 3.0, -300.0], atol=1e-12)
    np.testing.assert_allclose(g.u[0], [0.0, 2.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(g.v[0], [1.0, 0.0, 0.0], atol=1e-12)
    circular = ConeGeometry.circular(sod=500.0, sdd=800.0, det_shape=(4, 6), pixel_size=(1.0, 2.0),
                                     angles=[np.pi / 2])
    for key in ("u", "v"):  # the detector faces as our circular scan's at 90 deg
        np.testing.assert_allclose(getattr(g, key), getattr(circular, key), atol=1e-12)


# ---------------------------------------------------------------------------- FDK against RTK
def _rtk_fdk_of_stack(rtk, stack, geometry, vol_geom, parker: bool) -> np.ndarray:
    """RTK's FDK of its own stack and geometry object onto ``vol_geom`` (no nfrecon conversion of
    the geometry or the stack; only the volume frame of :mod:`nfrecon.geometry.interop.rtk`)."""
    image_type = rtk.Image[rtk.F, 3]
    if parker:
        weighting = rtk.ParkerShortScanImageFilter[image_type].New()
        weighting.SetInput(stack)
        weighting.SetGeometry(geometry)
        weighting.Update()
        stack = weighting.GetOutput()
    recon = rtk.FDKConeBeamReconstructionFilter[image_type].New()
    recon.SetInput(0, rt.volume_to_rtk_image(np.zeros(vol_geom.shape, np.float32), vol_geom))
    recon.SetInput(1, stack)
    recon.SetGeometry(geometry)
    recon.GetRampFilter().SetTruncationCorrection(0.0)
    recon.Update()
    return rt.volume_from_rtk_image(recon.GetOutput())[0]


@pytest.mark.rtk
# Bounds about 3x the values measured (relative RMSE over the data range, 1 - correlation, relative
# mean difference): 6.9e-5, 1.9e-9, 1.1e-4 (full scan) and 4.0e-4, 1.9e-6, 1.2e-4 (short scan,
# Parker). Without the source offsets the full scan agrees to 1.2e-7: our FDK scales by the source's
# distance to the axis (450.04 mm here), RTK by SourceToIsocenterDistance (450 mm), a 8.9e-5 ratio.
@pytest.mark.parametrize("angles_deg, bounds", [
    (np.linspace(0.0, 360.0, 40, endpoint=False), (2e-4, 7e-9, 3.5e-4)),
    (np.linspace(-20.0, 240.0, 40), (1.2e-3, 6e-6, 3.5e-4)),
], ids=["full", "short-parker"])
def test_fdk_of_imported_scan_matches_rtk_fdk(rtk, tmp_path, cli, angles_deg, bounds):
    mha, xml, geometry, stack = _rtk_scan_files(rtk, tmp_path, angles_deg)
    code, _, err = cli("import-rtk", "--projections", mha, "--geometry", xml, "--out", tmp_path / "scan.h5")
    assert code == 0, err
    scan = load_scan(tmp_path / "scan.h5")
    assert scan.photons is None and scan.metadata["stack"] == "line integrals"
    grid = scan.recon_geom  # the default grid: the field of view at the pixel size at the isocentre
    assert grid.voxel_size[0] == pytest.approx(DU * SID / SDD) and grid.shape[0] == NV
    ours = fdk(torch.from_numpy(scan.projections), scan.geom, grid, backend="torch").numpy()
    ref = _rtk_fdk_of_stack(rtk, stack, geometry, grid, parker=np.ptp(angles_deg) < 300)
    c = grid.voxel_centers()
    inside = (np.hypot(c[..., 1], c[..., 2]) < 28.0) & (np.abs(c[..., 0]) < 12.0)  # central slab
    rel_rmse = np.sqrt(np.mean((ours[inside] - ref[inside]) ** 2)) / np.ptp(ref[inside])
    decorrelation = 1 - np.corrcoef(ours[inside], ref[inside])[0, 1]
    mean_rel = abs(np.mean(ours[inside], dtype=np.float64) / np.mean(ref[inside], dtype=np.float64) - 1)
    assert rel_rmse < bounds[0] and decorrelation < bounds[1] and mean_rel < bounds[2], (rel_rmse, decorrelation,
                                                                                        mean_rel)
    assert np.mean(ref[inside]) == pytest.approx(0.0178, rel=0.05)  # mu of the phantom's body, 1/mm


# ---------------------------------------------------------------------------- raw intensities
@pytest.mark.rtk
def test_raw_intensities_with_i0_give_the_same_scan(rtk, tmp_path, cli):
    mha, xml, _, stack = _rtk_scan_files(rtk, tmp_path, np.linspace(0.0, 360.0, 12, endpoint=False))
    i0 = 2.5e4
    raw = tmp_path / "raw.mha"
    rtk.imwrite(_with_array(rtk, stack, i0 * np.exp(-rtk.array_from_image(stack).astype(np.float64))), str(raw))
    assert cli("import-rtk", "--projections", mha, "--geometry", xml, "--out", tmp_path / "line.h5")[0] == 0
    assert cli("import-rtk", "--projections", raw, "--geometry", xml, "--i0", i0, "--out", tmp_path / "raw.h5",
               "--size", 24, "--voxel-mm", 3.0)[0] == 0
    line, counts = load_scan(tmp_path / "line.h5"), load_scan(tmp_path / "raw.h5")
    np.testing.assert_allclose(counts.projections, line.projections, atol=2e-5)
    assert counts.geom.allclose(line.geom, atol=0) and counts.photons == i0 and line.photons is None
    assert counts.recon_geom.shape == (24, 24, 24) and counts.recon_geom.voxel_size == (3.0, 3.0, 3.0)
    assert "--size and --voxel-mm" in counts.metadata["recon_grid"]
    assert counts.metadata["stack"] == "raw intensities, -ln(I/I0)" and counts.metadata["i0"] == i0
    with pytest.warns(UserWarning, match="look like raw intensities"):
        read_rtk_scan(raw, xml)


# ---------------------------------------------------------------------------- bad input
@pytest.mark.rtk
def test_bad_inputs_exit_2_with_one_line_and_no_output(rtk, tmp_path, cli):
    angles = np.linspace(0.0, 360.0, 10, endpoint=False)
    mha, xml, _, stack = _rtk_scan_files(rtk, tmp_path, angles)
    short_xml = _write_xml(rtk, _rtk_geometry(rtk, angles[:9]), tmp_path / "nine.xml")
    corrupt = tmp_path / "corrupt.xml"
    corrupt.write_text(xml.read_text()[:300])
    inconsistent = tmp_path / "inconsistent.xml"  # a view's angle no longer matches its Matrix
    inconsistent.write_text(
        xml.read_text().replace("<GantryAngle>36</GantryAngle>", "<GantryAngle>37</GantryAngle>", 1))
    raw = rtk.array_from_image(stack).astype(np.float64)
    raw = 1e4 * np.exp(-raw)
    raw[3, 5, 7], raw[8, 0, 1] = 0.0, -2.0
    bad_raw = tmp_path / "bad_raw.mha"
    rtk.imwrite(_with_array(rtk, stack, raw), str(bad_raw))
    flat = tmp_path / "flat.mha"
    rtk.imwrite(rtk.image_from_array(np.ones((NV, NU), np.float32)), str(flat))
    turned = _with_array(rtk, stack, rtk.array_from_image(stack))
    turned.SetDirection(rtk.matrix_from_array(np.array([[0.0, 1, 0], [1, 0, 0], [0, 0, 1]])))
    rotated = tmp_path / "rotated.mha"
    rtk.imwrite(turned, str(rotated))
    cases = [
        ((tmp_path / "missing.mha", xml), (), "missing.mha"),
        ((mha, tmp_path / "missing.xml"), (), "missing.xml"),
        ((mha, corrupt), (), "corrupt.xml: not a readable RTK geometry XML"),
        ((mha, short_xml), (), "nine.xml has 9 projections but"),
        ((mha, inconsistent), (), "projection 1: <Matrix> disagrees"),
        ((bad_raw, xml), ("--i0", 1e4), "2 of 10240 intensities are not positive (first at [view, v, u] = [3, 5, 7]"),
        ((flat, xml), (), "expected a 3D scalar image"),
        ((rotated, xml), (), "direction is not the identity"),
        ((mha, xml), ("--i0", 0), "--i0: the unattenuated intensity must be positive"),
        ((mha, xml), ("--size", 0), "--size"),
    ]
    out = tmp_path / "out" / "scan.h5"
    for (projections, geometry_file), extra, message in cases:
        code, _, err = cli("import-rtk", "--projections", projections, "--geometry", geometry_file, "--out", out,
                           *extra)
        assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, (message, err)
        assert message in err, (message, err)
        assert not out.exists() and not (out.parent.exists() and any(out.parent.iterdir())), message
    code, _, err = cli("import-rtk", "--projections", mha, "--geometry", short_xml, "--out", out)
    assert str(mha) in err and str(short_xml) in err  # both files named
    (tmp_path / "folder.h5").mkdir()
    code, _, err = cli("import-rtk", "--projections", mha, "--geometry", xml, "--out", tmp_path / "folder.h5")
    assert code == 2 and "--out" in err and "is a folder" in err


def test_options_are_checked_where_they_are_born():
    from nfrecon.cli.import_rtk import ImportRtkArgs

    with pytest.raises(InputError, match="--voxel-mm"):
        ImportRtkArgs(projections="p.mha", geometry="g.xml", voxel_mm=-1.0)
