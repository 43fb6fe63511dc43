"""RTK (``itk-rtk``) interoperability: geometry objects, geometry XML, images.

RTK's fixed frame rotates its circular scans about its y axis, with the source on +z at
gantry angle 0. nfrecon's world is mapped onto it by a proper rotation (no mirroring):

    RTK (x, y, z) = nfrecon (x, z, -y)        nfrecon (z, y, x) = RTK (y, -z, x)

Under this map an RTK circular scan with gantry angle ``a`` is exactly nfrecon's (and
ASTRA's) circular scan at angle ``a``, and RTK's projection images have the same
``[view, v, u]`` layout as ours. RTK volumes are ITK images whose numpy view is indexed
``[k, j, i]`` along RTK (z, y, x); converting rotates the array accordingly.

RTK's circular-geometry parameters (reading them needs no ITK; :func:`rtk_projection_matrices`
and :func:`from_rtk_parameters`), per view, degrees and mm as RTK defines them:

- the rotation R = Rz(-InPlaneAngle) Rx(-OutOfPlaneAngle) Ry(-GantryAngle) (ITK's Euler ZXY
  order) takes RTK's fixed frame to the view's rotated frame;
- in the rotated frame the source is at (SourceOffsetX, SourceOffsetY,
  SourceToIsocenterDistance) and the detector is the plane z = SID - SDD, its projection
  coordinates (p, q) (mm, the physical coordinates of the projection image) at
  (p + ProjectionOffsetX, q + ProjectionOffsetY, SID - SDD): x along the image's columns
  (u, ITK index i), y along its rows (v, index j);
- a projection image pixel (j, i) sits at (p, q) = origin + (i, j) * spacing (identity direction);
- RTK's 3x4 ``Matrix`` maps fixed-frame homogeneous points to homogeneous projection
  coordinates: translate(SOx - POx, SOy - POy) * [[-SDD, 0, 0, 0], [0, -SDD, 0, 0],
  [0, 0, 1, -SID]] * translate(-SOx, -SOy, 0) * R.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass, fields

import numpy as np

from nfrecon.errors import InputError
from nfrecon.geometry.cone import ConeGeometry
from nfrecon.geometry.volume import VolumeGeometry


def _itk():
    try:
        import itk
        from itk import RTK  # noqa: F401
    except ImportError as exc:  # pragma: no cover - exercised only without itk-rtk
        raise InputError("RTK interop needs the 'itk-rtk' package: pip install itk-rtk") from exc
    return itk


def zyx_to_rtk(vectors) -> np.ndarray:
    """nfrecon (..., 3) (z, y, x) vectors -> RTK (x, y, z)."""
    a = np.asarray(vectors, dtype=np.float64)
    return np.stack([a[..., 2], a[..., 0], -a[..., 1]], axis=-1)


def rtk_to_zyx(vectors) -> np.ndarray:
    """RTK (..., 3) (x, y, z) vectors -> nfrecon (z, y, x)."""
    a = np.asarray(vectors, dtype=np.float64)
    return np.stack([a[..., 1], -a[..., 2], a[..., 0]], axis=-1)


def to_rtk_geometry(geom: ConeGeometry):
    """An ``itk.ThreeDCircularProjectionGeometry`` with one entry per view.

    Built from source, detector and pixel directions, so any orthogonal-pixel geometry
    converts; the projection image must use :func:`projection_image_frame`.
    """
    itk = _itk()
    out = itk.ThreeDCircularProjectionGeometry.New()
    src, det = zyx_to_rtk(geom.src), zyx_to_rtk(geom.det)
    row = zyx_to_rtk(geom.u / np.linalg.norm(geom.u, axis=1, keepdims=True))
    col = zyx_to_rtk(geom.v / np.linalg.norm(geom.v, axis=1, keepdims=True))
    point = itk.Point[itk.D, 3]
    vector = itk.Vector[itk.D, 3]
    for i in range(geom.n_views):
        ok = out.AddProjection(
            point([float(x) for x in src[i]]),
            point([float(x) for x in det[i]]),
            vector([float(x) for x in row[i]]),
            vector([float(x) for x in col[i]]),
        )
        if not ok:
            raise InputError(f"RTK cannot represent view {i} of this geometry (non-orthogonal detector axes?)")
    return out


def projection_image_frame(geom: ConeGeometry) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """(origin, spacing) of the RTK projection stack image matching :func:`to_rtk_geometry`.

    Projection coordinates (0, 0) sit at the detector centre, so the first pixel centre is
    at minus half the detector extent.
    """
    nv, nu = geom.det_shape
    dv, du = geom.pixel_size
    return (-(nu - 1) / 2 * du, -(nv - 1) / 2 * dv, 0.0), (du, dv, 1.0)


def from_rtk_geometry(
    rtk_geometry, det_shape: tuple[int, int], spacing: tuple[float, float], origin: tuple[float, float]
) -> ConeGeometry:
    """ConeGeometry from an RTK geometry and its projection image grid.

    det_shape: (rows, cols); spacing: (sx, sy) mm of the projection image (x along columns);
    origin: (ox, oy) mm, projection coordinates of pixel (0, 0).
    """
    itk = _itk()
    nv, nu = (int(s) for s in det_shape)
    sx, sy = (float(s) for s in spacing)
    ox, oy = (float(s) for s in origin)
    n = len(rtk_geometry.GetGantryAngles())
    if n == 0:
        raise InputError("RTK geometry has no projections")
    src, det, u, v = (np.empty((n, 3)) for _ in range(4))
    centre = np.array([ox + (nu - 1) / 2 * sx, oy + (nv - 1) / 2 * sy, 0.0, 1.0])
    for i in range(n):
        m = np.asarray(itk.array_from_matrix(rtk_geometry.GetProjectionCoordinatesToFixedSystemMatrix(i)), np.float64)
        src[i] = np.array(rtk_geometry.GetSourcePosition(i), dtype=np.float64)[:3]
        det[i] = (m @ centre)[:3]
        u[i] = m[:3, 0] * sx
        v[i] = m[:3, 1] * sy
    return ConeGeometry((nv, nu), rtk_to_zyx(src), rtk_to_zyx(det), rtk_to_zyx(u), rtk_to_zyx(v))


# ---------------------------------------------------------------------- RTK parameters
@dataclass(frozen=True)
class RtkParameters:
    """The nine per-view parameters of an ``rtk::ThreeDCircularProjectionGeometry``.

    Each field is a float64 (views,) array named after RTK's XML element (mm for distances
    and offsets, degrees for angles); see the module docstring for their meaning.
    """

    SourceToIsocenterDistance: np.ndarray
    SourceToDetectorDistance: np.ndarray
    GantryAngle: np.ndarray
    ProjectionOffsetX: np.ndarray
    ProjectionOffsetY: np.ndarray
    OutOfPlaneAngle: np.ndarray
    InPlaneAngle: np.ndarray
    SourceOffsetX: np.ndarray
    SourceOffsetY: np.ndarray

    def __post_init__(self):
        arrays = [np.atleast_1d(np.asarray(getattr(self, f.name), dtype=np.float64)) for f in fields(self)]
        n = arrays[0].shape
        for f, arr in zip(fields(self), arrays):
            if arr.ndim != 1 or arr.shape != n or not np.all(np.isfinite(arr)):
                raise InputError(f"RTK geometry: {f.name} must be {n[0]} finite numbers, got shape {arr.shape}")
            arr.setflags(write=False)
            object.__setattr__(self, f.name, arr)
        if n[0] == 0:
            raise InputError("RTK geometry has no projections")
        if np.any(self.SourceToDetectorDistance == 0):
            raise InputError("RTK geometry: SourceToDetectorDistance 0 is RTK's parallel beam; "
                             "nfrecon needs a cone beam")
        if np.any(self.SourceToIsocenterDistance <= 0) or np.any(self.SourceToDetectorDistance < 0):
            raise InputError("RTK geometry: SourceToIsocenterDistance and SourceToDetectorDistance must be positive")

    @property
    def n_views(self) -> int:
        return self.GantryAngle.shape[0]


def _euler(axis: int, angle: np.ndarray) -> np.ndarray:
    """(views, 3, 3) right-handed rotations by ``angle`` (radians) about axis 0 (x), 1 (y) or 2 (z)."""
    c, s = np.cos(angle), np.sin(angle)
    m = np.zeros((angle.shape[0], 3, 3))
    a, b = [(1, 2), (2, 0), (0, 1)][axis]
    m[:, axis, axis] = 1.0
    m[:, a, a], m[:, a, b], m[:, b, a], m[:, b, b] = c, -s, s, c
    return m


def rtk_rotations(params: RtkParameters) -> np.ndarray:
    """(views, 3, 3) rotations R from RTK's fixed frame to each view's rotated frame (module doc)."""
    rad = {k: np.deg2rad(getattr(params, k)) for k in ("GantryAngle", "OutOfPlaneAngle", "InPlaneAngle")}
    return _euler(2, -rad["InPlaneAngle"]) @ _euler(0, -rad["OutOfPlaneAngle"]) @ _euler(1, -rad["GantryAngle"])


def rtk_projection_matrices(params: RtkParameters) -> np.ndarray:
    """(views, 3, 4) RTK projection matrices (``GetMatrix(i)``): fixed-frame (x, y, z, 1) mm ->
    homogeneous projection coordinates (mm on the detector, before the image's origin/spacing)."""
    n = params.n_views
    rot = np.zeros((n, 4, 4))
    rot[:, :3, :3], rot[:, 3, 3] = rtk_rotations(params), 1.0
    source = np.tile(np.eye(4), (n, 1, 1))
    source[:, 0, 3], source[:, 1, 3] = -params.SourceOffsetX, -params.SourceOffsetY
    magnification = np.zeros((n, 3, 4))
    magnification[:, 0, 0] = magnification[:, 1, 1] = -params.SourceToDetectorDistance
    magnification[:, 2, 2], magnification[:, 2, 3] = 1.0, -params.SourceToIsocenterDistance
    shift = np.tile(np.eye(3), (n, 1, 1))
    shift[:, 0, 2] = params.SourceOffsetX - params.ProjectionOffsetX
    shift[:, 1, 2] = params.SourceOffsetY - params.ProjectionOffsetY
    return shift @ magnification @ source @ rot


def from_rtk_parameters(params: RtkParameters, det_shape: tuple[int, int], spacing: tuple[float, float],
                        origin: tuple[float, float]) -> ConeGeometry:
    """ConeGeometry from RTK's circular-geometry parameters and the projection image grid.

    det_shape: (rows, cols) = the stack's (size[1], size[0]); spacing: (sx, sy) mm of the
    projection image (x along columns, u); origin: (ox, oy) mm, the projection coordinates
    of pixel (0, 0). Needs no ITK. The same geometry as :func:`from_rtk_geometry` of the
    RTK object built from ``params``.
    """
    nv, nu = (int(s) for s in det_shape)
    sx, sy = (float(s) for s in spacing)
    ox, oy = (float(s) for s in origin)
    if not (sx > 0 and sy > 0):
        raise InputError(f"RTK projection image: spacing must be positive, got {(sx, sy)}")
    back = np.transpose(rtk_rotations(params), (0, 2, 1))  # rotated frame -> fixed frame
    sid, sdd = params.SourceToIsocenterDistance, params.SourceToDetectorDistance
    src = np.stack([params.SourceOffsetX, params.SourceOffsetY, sid], axis=1)
    centre = np.stack([ox + (nu - 1) / 2 * sx + params.ProjectionOffsetX,
                       oy + (nv - 1) / 2 * sy + params.ProjectionOffsetY, sid - sdd], axis=1)
    to_fixed = lambda a: np.einsum("nij,nj->ni", back, a)
    return ConeGeometry((nv, nu), rtk_to_zyx(to_fixed(src)), rtk_to_zyx(to_fixed(centre)),
                        rtk_to_zyx(back[:, :, 0] * sx), rtk_to_zyx(back[:, :, 1] * sy))


# Elements of RTK's geometry XML (rtk::ThreeDCircularProjectionGeometryXMLFileWriter, version 3):
# each parameter is written once under the root when all views share it, else in every
# <Projection>; an absent one is 0 (RTK's default). Collimation bounds do not move any ray.
_IGNORED = {"CollimationUInf", "CollimationUSup", "CollimationVInf", "CollimationVSup"}
# RTK's reader refuses a file whose Matrix and parameters differ by more than this (absolute)
_MATRIX_TOLERANCE = 1e-3


def _number(element: ET.Element, where: str) -> float:
    try:
        value = float((element.text or "").strip())
    except ValueError:
        raise InputError(f"{where}: <{element.tag}> is not a number: {(element.text or '').strip()[:40]!r}") from None
    if not np.isfinite(value):
        raise InputError(f"{where}: <{element.tag}> is not finite")
    return value


def read_rtk_xml_parameters(path: str | os.PathLike) -> tuple[RtkParameters, dict]:
    """Parse an RTK geometry XML file (``rtksimulatedgeometry``, RTK's XML writer) without ITK.

    Returns the per-view parameters and a dict of file facts (``version``, ``matrices``: how
    many views carried a Matrix, each checked against the parameters as RTK's reader does).
    InputError naming the file for a missing or malformed file, a non-RTK root, an unknown
    element, a cylindrical detector, or a Matrix that disagrees with the parameters.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise InputError(f"{path}: RTK geometry file not found")
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise InputError(f"{path}: not a readable RTK geometry XML file ({exc})") from exc
    if root.tag != "RTKThreeDCircularGeometry":
        raise InputError(f"{path}: root element is <{root.tag}>, expected <RTKThreeDCircularGeometry>")
    names = [f.name for f in fields(RtkParameters)]
    known = {*names, *_IGNORED, "RadiusCylindricalDetector"}
    shared = {"ProjectionOffsetX": 0.0, "ProjectionOffsetY": 0.0, "OutOfPlaneAngle": 0.0, "InPlaneAngle": 0.0,
              "SourceOffsetX": 0.0, "SourceOffsetY": 0.0}
    views, matrices = [], []
    for child in root:
        if child.tag == "Projection":
            views.append(child)
        elif child.tag in known:
            shared[child.tag] = _number(child, path)
        else:
            raise InputError(f"{path}: unknown element <{child.tag}> in an RTK geometry file")
    if shared.get("RadiusCylindricalDetector", 0.0) != 0.0:
        raise InputError(f"{path}: cylindrical detector (RadiusCylindricalDetector "
                         f"{shared['RadiusCylindricalDetector']:g} mm); nfrecon models flat detectors only")
    if not views:
        raise InputError(f"{path}: RTK geometry has no <Projection> elements")
    values = {name: [] for name in names}
    for i, view in enumerate(views):
        own, matrix = dict(shared), None
        for child in view:
            where = f"{path}, projection {i}"
            if child.tag == "Matrix":
                try:
                    matrix = np.array((child.text or "").split(), dtype=np.float64).reshape(3, 4)
                except ValueError:
                    raise InputError(f"{where}: <Matrix> must hold 3 x 4 numbers") from None
            elif child.tag == "RadiusCylindricalDetector":
                if _number(child, where) != 0.0:
                    raise InputError(f"{where}: cylindrical detector; nfrecon models flat detectors only")
            elif child.tag in known:
                own[child.tag] = _number(child, where)
            else:
                raise InputError(f"{where}: unknown element <{child.tag}> in an RTK geometry file")
        for name in names:
            if name not in own:
                raise InputError(f"{path}, projection {i}: no <{name}> (neither shared nor in the projection)")
            values[name].append(own[name])
        matrices.append(matrix)
    try:
        params = RtkParameters(**values)
    except InputError as exc:
        raise InputError(f"{path}: {exc}") from exc
    computed = rtk_projection_matrices(params)
    for i, matrix in enumerate(matrices):
        if matrix is not None and np.abs(matrix - computed[i]).max() > _MATRIX_TOLERANCE:
            raise InputError(f"{path}, projection {i}: <Matrix> disagrees with the projection's parameters by "
                             f"{np.abs(matrix - computed[i]).max():.3g} (RTK refuses such files too)")
    facts = {"version": root.get("version"), "matrices": sum(m is not None for m in matrices)}
    return params, facts


def read_rtk_xml(path: str | os.PathLike, det_shape, spacing, origin) -> ConeGeometry:
    """Read an RTK geometry XML file (``rtksimulatedgeometry`` and friends) without ITK;
    the projection image grid as in :func:`from_rtk_parameters`."""
    return from_rtk_parameters(read_rtk_xml_parameters(path)[0], det_shape, spacing, origin)


def write_rtk_xml(geom: ConeGeometry, path: str | os.PathLike) -> None:
    """Write ``geom`` as an RTK geometry XML file (pair it with :func:`projection_image_frame`)."""
    itk = _itk()
    writer = itk.ThreeDCircularProjectionGeometryXMLFileWriter.New()
    writer.SetFilename(os.fspath(path))
    rtk_geometry = to_rtk_geometry(geom)  # the writer keeps a raw pointer: hold the object until written
    writer.SetObject(rtk_geometry)
    writer.WriteFile()


def volume_to_rtk_image(volume: np.ndarray, vol_geom: VolumeGeometry):
    """An ITK float image holding ``volume`` [z, y, x] in RTK's frame."""
    itk = _itk()
    arr = np.ascontiguousarray(np.asarray(volume, dtype=np.float32).transpose(1, 0, 2)[::-1])
    img = itk.image_from_array(arr)
    first = vol_geom.index_to_world((0, vol_geom.shape[1] - 1, 0))  # RTK index (0,0,0)
    img.SetOrigin([float(x) for x in zyx_to_rtk(first)])
    dz, dy, dx = vol_geom.voxel_size
    img.SetSpacing([float(dx), float(dz), float(dy)])
    return img


def volume_from_rtk_image(image) -> tuple[np.ndarray, VolumeGeometry]:
    """Inverse of :func:`volume_to_rtk_image` (identity direction matrix assumed)."""
    itk = _itk()
    if not np.allclose(itk.array_from_matrix(image.GetDirection()), np.eye(3)):
        raise InputError("RTK volume image has a non-identity direction matrix")
    arr = np.asarray(itk.array_from_image(image), dtype=np.float32)
    vol = np.ascontiguousarray(arr[::-1].transpose(1, 0, 2))
    sx, sy, sz = (float(s) for s in image.GetSpacing())
    first = rtk_to_zyx(np.array(image.GetOrigin(), dtype=np.float64))  # world of our (0, ny-1, 0)
    shape = vol.shape
    size = np.array(shape) * np.array((sy, sz, sx))
    corner = first - np.array((0.0, (shape[1] - 1) * sz, 0.0))  # our voxel (0, 0, 0)
    center = corner + (size - np.array((sy, sz, sx))) / 2
    return vol, VolumeGeometry(shape, (sy, sz, sx), tuple(center))


def projections_to_rtk_image(proj: np.ndarray, geom: ConeGeometry):
    """An ITK float image of a [view, v, u] stack, framed as :func:`projection_image_frame`."""
    itk = _itk()
    img = itk.image_from_array(np.ascontiguousarray(np.asarray(proj, dtype=np.float32)))
    origin, spacing = projection_image_frame(geom)
    img.SetOrigin(origin)
    img.SetSpacing(spacing)
    return img


def constant_image(shape_zyx, origin_xyz, spacing_xyz, value: float = 0.0):
    """An ITK float image (RTK-style source) of the given numpy shape, origin and spacing."""
    itk = _itk()
    img = itk.image_from_array(np.full(shape_zyx, value, dtype=np.float32))
    img.SetOrigin([float(x) for x in origin_xyz])
    img.SetSpacing([float(x) for x in spacing_xyz])
    return img
