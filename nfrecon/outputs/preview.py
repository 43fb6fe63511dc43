"""PNG previews of volumes: the three orthogonal mid-slices, square pixels in mm.

Orientation. nfrecon exports NIfTI with a positive-diagonal affine in RAS mm, so the array
indices of a volume [z, y, x] grow toward patient Right (x), Anterior (y) and Superior (z).
Previews use the radiological convention on that assumption:

- axial (z = nz // 2): rows y with anterior at the top, columns x with patient right on
  the image's left (viewed from the feet);
- coronal (y = ny // 2): rows z with superior at the top, columns x with patient right on
  the left (viewed from the front);
- sagittal (x = nx // 2): rows z with superior at the top, columns y with anterior on the
  left.

So every panel is the slice [rows, cols] flipped along both axes: array index 0 of the
row axis is the bottom row, index 0 of the column axis the rightmost column.

Each panel is resampled (linear interpolation, voxel centres as samples) onto square
pixels of ``pixel_mm``; a panel covers the slice's full extent in mm, so it is
round(n * voxel_mm / pixel_mm) pixels along each axis. Grey levels map the window
vmin..vmax to 0..255 (default: the 0.5 and 99.5 percentiles of the finite voxels of the
first volume); NaN and Inf show black.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from nfrecon.errors import InputError
from nfrecon.fsutil import atomic_path
from nfrecon.geometry.volume import VolumeGeometry

PANELS = ("axial", "coronal", "sagittal")
_AXIS = {"axial": 0, "coronal": 1, "sagittal": 2}  # the axis each panel is perpendicular to
_MIN_SIDE, _MAX_SIDE = 128, 1024  # bounds on the default panel size (pixels, longest side)
_GAP = 4  # pixels between panels, rows and the border


class Box(NamedTuple):
    """A panel's place in the PNG, in pixels."""

    left: int
    top: int
    width: int
    height: int


def _numpy_volume(volume, name: str) -> np.ndarray:
    if hasattr(volume, "detach"):
        volume = volume.detach().cpu().numpy()
    arr = np.asarray(volume)
    if arr.ndim != 3 or min(arr.shape) < 1:
        raise InputError(f"preview: {name} must be a non-empty 3D volume [z, y, x], got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.number):
        raise InputError(f"preview: {name} must be numeric, got dtype {arr.dtype}")
    return arr.astype(np.float64, copy=False)


def default_pixel_mm(vol_geom: VolumeGeometry) -> float:
    """The smallest voxel size, changed only as needed so that the longest panel side is
    between 128 and 1024 pixels."""
    extent = float(np.max(vol_geom.size))
    p = min(vol_geom.voxel_size)
    return float(np.clip(p, extent / _MAX_SIDE, extent / _MIN_SIDE))


def _resample(a: np.ndarray, axis: int, voxel_mm: float, pixel_mm: float) -> np.ndarray:
    """Linear resampling along ``axis`` onto pixels of ``pixel_mm`` covering the same extent."""
    n = a.shape[axis]
    m = max(1, round(n * voxel_mm / pixel_mm))
    src = np.clip((np.arange(m) + 0.5) * (n / m) - 0.5, 0, n - 1)
    i0 = np.floor(src).astype(int)
    i1 = np.minimum(i0 + 1, n - 1)
    w = (src - i0).reshape([-1 if d == axis else 1 for d in range(a.ndim)])
    return np.take(a, i0, axis=axis) * (1 - w) + np.take(a, i1, axis=axis) * w


def orthogonal_panels(volume, vol_geom: VolumeGeometry | None = None, pixel_mm: float | None = None) -> dict:
    """The axial, coronal and sagittal mid-slices of ``volume`` [z, y, x] as float64 images
    [row, col] in the module's orientation, resampled to square ``pixel_mm`` pixels.

    ``vol_geom`` gives the voxel sizes (default 1 mm); ``pixel_mm`` defaults to
    ``default_pixel_mm(vol_geom)``.
    """
    vol = _numpy_volume(volume, "volume")
    vol_geom = _geometry(vol.shape, vol_geom)
    pixel_mm = default_pixel_mm(vol_geom) if pixel_mm is None else float(pixel_mm)
    if not (np.isfinite(pixel_mm) and pixel_mm > 0):
        raise InputError(f"preview: pixel_mm must be finite and > 0, got {pixel_mm}")
    panels = {}
    for name, axis in _AXIS.items():
        sl = np.take(vol, vol.shape[axis] // 2, axis=axis)
        rows, cols = (d for d in range(3) if d != axis)
        sl = _resample(sl, 0, vol_geom.voxel_size[rows], pixel_mm)
        sl = _resample(sl, 1, vol_geom.voxel_size[cols], pixel_mm)
        panels[name] = sl[::-1, ::-1]
    return panels


def _geometry(shape, vol_geom: VolumeGeometry | None) -> VolumeGeometry:
    if vol_geom is None:
        return VolumeGeometry(tuple(shape))
    if tuple(vol_geom.shape) != tuple(shape):
        raise InputError(f"preview: volume shape {tuple(shape)} differs from vol_geom shape {vol_geom.shape}")
    return vol_geom


def window(volume, vmin: float | None = None, vmax: float | None = None) -> tuple[float, float]:
    """The grey window: given bounds, else the 0.5 / 99.5 percentiles of the finite voxels."""
    vol = _numpy_volume(volume, "volume")
    finite = vol[np.isfinite(vol)]
    lo = float(np.percentile(finite, 0.5)) if vmin is None and finite.size else vmin
    hi = float(np.percentile(finite, 99.5)) if vmax is None and finite.size else vmax
    lo = 0.0 if lo is None else float(lo)
    hi = lo + 1.0 if hi is None else float(hi)
    if vmin is None and vmax is None and hi <= lo:  # a constant volume
        hi = lo + 1.0
    if not (np.isfinite(lo) and np.isfinite(hi) and hi > lo):
        raise InputError(f"preview: window needs finite vmin < vmax, got vmin={lo:g}, vmax={hi:g}")
    return lo, hi


def to_grey(image: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """uint8 grey levels: lo..hi -> 0..255, clipped; NaN and Inf -> 0."""
    g = np.clip((np.asarray(image, dtype=np.float64) - lo) / (hi - lo), 0.0, 1.0) * 255.0
    return np.where(np.isfinite(image), np.rint(g), 0).astype(np.uint8)


def _caption(name: str, panel: str, vol_geom: VolumeGeometry) -> str:
    axis = _AXIS[panel]
    k = vol_geom.shape[axis] // 2
    mm = vol_geom.axis_coords(axis)[k]
    label = f"{panel} {'zyx'[axis]}[{k}] = {mm:.1f} mm"
    return f"{name}: {label}" if name else label


def compare_preview(
    path: str | os.PathLike,
    volumes: dict,
    vol_geom: VolumeGeometry | None = None,
    title: str | None = None,
    vmin: float | None = None,
    vmax: float | None = None,
    pixel_mm: float | None = None,
) -> dict[str, dict[str, Box]]:
    """Write a PNG with one row of axial | coronal | sagittal mid-slices per volume.

    ``volumes`` maps row names to volumes [z, y, x] of one shape (e.g. {"ground truth": gt,
    "recon": x}); all rows share one grey window (default: percentiles of the first
    volume). A header line shows ``title`` and the window. Returns each row's panel boxes.
    """
    if not volumes:
        raise InputError("preview: volumes is empty")
    vols = {str(k): _numpy_volume(v, f"volume '{k}'") for k, v in volumes.items()}
    first = next(iter(vols.values()))
    for name, v in vols.items():
        if v.shape != first.shape:
            raise InputError(f"preview: volume '{name}' has shape {v.shape}, expected {first.shape}")
    vol_geom = _geometry(first.shape, vol_geom)
    pixel_mm = default_pixel_mm(vol_geom) if pixel_mm is None else pixel_mm
    lo, hi = window(first, vmin, vmax)
    rows = {name: orthogonal_panels(v, vol_geom, pixel_mm) for name, v in vols.items()}

    font = ImageFont.load_default()
    text_h = font.getbbox("Ag[]")[3] + 2
    sizes = [p.shape for p in next(iter(rows.values())).values()]
    width = sum(w for _, w in sizes) + _GAP * (len(sizes) + 1)
    row_h = text_h + max(h for h, _ in sizes) + _GAP
    header = f"{title}   " if title else ""
    canvas = Image.new("L", (width, _GAP + text_h + len(rows) * row_h), 0)
    draw = ImageDraw.Draw(canvas)
    draw.text((_GAP, _GAP), f"{header}window {lo:.4g} .. {hi:.4g}", fill=255, font=font)

    boxes: dict[str, dict[str, Box]] = {}
    top = _GAP + text_h
    for name, panels in rows.items():
        left, boxes[name] = _GAP, {}
        for panel, image in panels.items():
            draw.text((left, top), _caption(name, panel, vol_geom), fill=255, font=font)
            box = Box(left, top + text_h, image.shape[1], image.shape[0])
            canvas.paste(Image.fromarray(to_grey(image, lo, hi)), (box.left, box.top))
            boxes[name][panel] = box
            left += box.width + _GAP
        top += row_h
    with atomic_path(path) as tmp:
        canvas.save(tmp, format="PNG")
    return boxes


def save_preview(
    path: str | os.PathLike,
    volume,
    vol_geom: VolumeGeometry | None = None,
    title: str | None = None,
    vmin: float | None = None,
    vmax: float | None = None,
    pixel_mm: float | None = None,
) -> dict[str, Box]:
    """Write a PNG of the axial | coronal | sagittal mid-slices of ``volume`` [z, y, x].

    Orientation, pixel size and window as in the module doc; returns the panel boxes.
    """
    return compare_preview(path, {"": volume}, vol_geom, title, vmin, vmax, pixel_mm)[""]
