"""RTK (``itk-rtk``) interoperability: geometry objects, geometry XML, images.

RTK's fixed frame rotates its circular scans about its y axis, with the source on +z at
gantry angle 0. nfrecon's world is mapped onto it by a proper rotation (no mirroring):

    RTK (x, y, z) = nfrecon (x, z, -y)        nfrecon (z, y, x) = RTK (y, -z, x)

Under this map an RTK circular scan with gantry angle ``a`` is exactly nfrecon's (and
ASTRA's) circular scan at angle ``a``, and RTK's projection images have the same
``[view, v, u]`` layout as ours. RTK volumes are ITK images whose numpy view is indexed
``[k, j, i]`` along RTK (z, y, x); converting rotates the array accordingly.
"""

from __future__ import annotations

import os

import numpy as np

from nfrecon.errors import InputError
from nfrecon.geometry.cone import ConeGeometry
from nfrecon.geometry.volume import VolumeGeometry


def _itk():
    try:
        import itk  # noqa: F401
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


def read_rtk_xml(path: str | os.PathLike, det_shape, spacing, origin) -> ConeGeometry:
    """Read an RTK geometry XML file (``rtksimulatedgeometry`` and friends)."""
    itk = _itk()
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise InputError(f"{path}: RTK geometry file not found")
    reader = itk.ThreeDCircularProjectionGeometryXMLFileReader.New()
    reader.SetFilename(path)
    try:
        reader.GenerateOutputInformation()
    except RuntimeError as exc:
        raise InputError(f"{path}: not a readable RTK geometry XML file ({str(exc).splitlines()[0]})") from exc
    return from_rtk_geometry(reader.GetOutputObject(), det_shape, spacing, origin)


def write_rtk_xml(geom: ConeGeometry, path: str | os.PathLike) -> None:
    """Write ``geom`` as an RTK geometry XML file (pair it with :func:`projection_image_frame`)."""
    itk = _itk()
    writer = itk.ThreeDCircularProjectionGeometryXMLFileWriter.New()
    writer.SetFilename(os.fspath(path))
    writer.SetObject(to_rtk_geometry(geom))
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
