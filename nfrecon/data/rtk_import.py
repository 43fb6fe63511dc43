"""RTK projection stacks and geometry XML files read into an nfrecon :class:`Scan`.

Input, as RTK writes it:

- a projection stack (``.mha``/``.mhd``/``.nrrd``, read by :func:`read_itk_image`): array
  ``[k, j, i] = [view, v, u]``, ITK spacing ``(sx, sy, -)`` mm and origin ``(ox, oy, -)`` mm:
  pixel (j, i) of every view sits at projection coordinates ``(ox + i sx, oy + j sy)``
  (RTK's detector frame, before its ProjectionOffsets); the direction must be the identity
  (RTK's tools write no other), the third spacing and origin are ignored. The stack holds
  line integrals (RTK's convention), or raw intensities I converted here to ``-ln(I / I0)``;
- an ``rtk::ThreeDCircularProjectionGeometry`` XML file, one ``<Projection>`` per view
  (parsed without ITK, converted as :mod:`nfrecon.geometry.interop.rtk` states).

RTK files carry no reconstruction grid; :func:`default_recon_grid` gives one (the
field of view at the detector's pixel size at the isocentre), recorded in the metadata.
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path

import numpy as np

from nfrecon.data.itk_image import read_itk_image
from nfrecon.data.scan import Scan
from nfrecon.errors import InputError
from nfrecon.geometry.cone import ConeGeometry
from nfrecon.geometry.interop.rtk import from_rtk_parameters, read_rtk_xml_parameters
from nfrecon.geometry.volume import VolumeGeometry

# a stack of line integrals has zeros (air) or small values; transmissions of e^-50 do not occur
_INTENSITY_HINT = 50.0


def check_import_options(i0: float | None = None, size: int | None = None, voxel_mm: float | None = None) -> None:
    """InputError naming the option when I0, the grid size or the voxel size is not positive."""
    if i0 is not None and not (math.isfinite(i0) and i0 > 0):
        raise InputError(f"--i0: the unattenuated intensity must be positive, got {i0:g}")
    if size is not None and size < 1:
        raise InputError(f"--size: voxels per axis must be >= 1, got {size}")
    if voxel_mm is not None and not (math.isfinite(voxel_mm) and voxel_mm > 0):
        raise InputError(f"--voxel-mm: the voxel size must be positive, got {voxel_mm:g}")


def _outer_fov_radius(geom: ConeGeometry) -> float:
    """Radius (mm) about the z axis inside which every view sees the central row's farther edge:
    the field of view of a full scan, also with a displaced (half-fan) detector."""
    radii = []
    for side in (-0.5, 0.5):
        edge = geom.det + side * geom.det_shape[1] * geom.u
        s, e = geom.src[:, 1:], edge[:, 1:] - geom.src[:, 1:]
        radii.append(float((np.abs(s[:, 0] * e[:, 1] - s[:, 1] * e[:, 0]) / np.linalg.norm(e, axis=1)).min()))
    return max(radii)


def default_recon_grid(geom: ConeGeometry, size: int | None = None,
                       voxel_mm: float | None = None) -> tuple[VolumeGeometry, str]:
    """A reconstruction grid centred on the isocentre (the world origin) and its description.

    Voxel: ``voxel_mm``, else the smaller detector pixel pitch at the isocentre (pitch times
    source-isocentre / source-detector distance, means over views). Shape: ``size``^3 when
    given (its voxel then spans the field-of-view diameter unless ``voxel_mm`` is given), else
    (nz, n, n) holding the field-of-view cylinder: diameter ``2 r`` (r: the radius every view
    sees through its central row's farther edge) and the detector's height at the isocentre.
    """
    check_import_options(size=size, voxel_mm=voxel_mm)
    magnification = float(geom.sdd.mean() / geom.sod_to((0.0, 0.0, 0.0)).mean())
    dv, du = geom.pixel_size
    diameter = 2 * _outer_fov_radius(geom)
    height = geom.det_shape[0] * dv / magnification
    if size is not None:
        voxel = voxel_mm if voxel_mm is not None else diameter / size
        shape = (size, size, size)
    else:
        voxel = voxel_mm if voxel_mm is not None else min(du, dv) / magnification
        n = max(1, math.ceil(diameter / voxel - 1e-6))
        shape = (max(1, math.ceil(height / voxel - 1e-6)), n, n)
    grid = VolumeGeometry(shape, voxel, (0.0, 0.0, 0.0))
    how = ("--size and --voxel-mm" if size is not None and voxel_mm is not None
           else "--size over the field-of-view diameter" if size is not None
           else "field of view at --voxel-mm" if voxel_mm is not None
           else "field of view at the detector pixel size at the isocentre")
    return grid, f"{grid.describe()} ({how}; field-of-view diameter {diameter:.4g} mm, height {height:.4g} mm)"


def _line_integrals(array: np.ndarray, path: Path, i0: float | None) -> np.ndarray:
    """float32 line integrals of the stack: as stored, or -ln(I / I0) of raw intensities."""
    if i0 is None:
        if array.min() > 0 and float(np.median(array)) > _INTENSITY_HINT:
            warnings.warn(f"{path}: values {array.min():.4g}..{array.max():.4g} look like raw intensities, "
                          f"not line integrals; pass --i0 I0 to convert them", stacklevel=3)
        return np.ascontiguousarray(array, dtype=np.float32)
    bad = array <= 0
    if bad.any():
        k, j, i = np.argwhere(bad)[0]
        raise InputError(f"{path}: {int(bad.sum())} of {array.size} intensities are not positive (first at "
                         f"[view, v, u] = [{k}, {j}, {i}], value {array[k, j, i]:g}); -ln(I/I0) needs I > 0")
    out = np.empty(array.shape, dtype=np.float32)
    for k in range(array.shape[0]):  # one view at a time in float64: no full-size float64 copy
        out[k] = np.log(np.float64(i0)) - np.log(array[k], dtype=np.float64)
    return out


def read_rtk_scan(projections: str | os.PathLike, geometry: str | os.PathLike, *, i0: float | None = None,
                  size: int | None = None, voxel_mm: float | None = None) -> Scan:
    """A Scan from an RTK projection stack and its geometry XML (module docstring).

    i0: the stack holds raw intensities with this unattenuated intensity (also the scan's
    photons per pixel); None: it holds line integrals and the noise is unknown. size,
    voxel_mm: the reconstruction grid (:func:`default_recon_grid`). InputError naming the
    file for any bad input (missing, unreadable, not 3D, a non-identity direction, a view
    count that differs between the two files, non-positive intensities).
    """
    check_import_options(i0, size, voxel_mm)
    projections, geometry = Path(projections), Path(geometry)
    params, facts = read_rtk_xml_parameters(geometry)
    image = read_itk_image(projections)
    n_views, nv, nu = image.array.shape
    if n_views != params.n_views:
        raise InputError(f"{geometry} has {params.n_views} projections but {projections} holds {n_views} "
                         f"(its third dimension); they must be one scan")
    if not np.allclose(image.direction, np.eye(3), atol=1e-6):
        raise InputError(f"{projections}: the stack's direction is not the identity "
                         f"({np.round(image.direction, 4).tolist()}); "
                         "RTK's projection frame is origin + index * spacing")
    geom = from_rtk_parameters(params, (nv, nu), image.spacing[:2], image.origin[:2])
    proj = _line_integrals(image.array, projections, i0)
    grid, grid_text = default_recon_grid(geom, size, voxel_mm)
    metadata = {
        "source": "rtk",
        "projections_file": str(projections),
        "geometry_file": str(geometry),
        "rtk_geometry_version": facts["version"],
        "stack": "raw intensities, -ln(I/I0)" if i0 is not None else "line integrals",
        "i0": i0,
        "recon_grid": grid_text,
    }
    return Scan(projections=proj, geom=geom, recon_geom=grid, photons=i0, metadata=metadata)
