"""Images in the formats of ITK (MetaImage ``.mha``/``.mhd``, NRRD, DICOM series), read with SimpleITK.

SimpleITK is an optional dependency (``pip install 'nfrecon[formats]'``), imported only when
such a file is read. The image is returned as ITK holds it: the voxel array indexed
``[k, j, i]`` (slowest axis first, i.e. ITK index (i, j, k) reversed) and the physical frame
of ITK and DICOM, LPS (x towards the patient's Left, y Posterior, z Superior), in mm.
Conversion to nfrecon's world frame is the caller's job (CT volumes: :mod:`nfrecon.data.volumes`).

What ITK, GDCM and MetaIO print on the process's stderr during a read is collected: it goes
into the one-line InputError when the read fails, and is dropped when it succeeds. A DICOM
series whose slices are unevenly spaced (missing slices: ITK would stretch the volume) is
refused.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nfrecon.errors import InputError

ITK_SUFFIXES = (".mha", ".mhd", ".nrrd", ".nhdr")
"""File suffixes read through ITK (besides DICOM series, which are folders)."""

NO_DICOM_SERIES = "no DICOM series in this folder"
"""The error text (after the folder's name) for a folder that holds no DICOM series."""

UNEVEN_SLICES_FRACTION = 0.1
"""Largest deviation of a DICOM series' slice positions from even spacing, relative to the spacing."""


@dataclass(frozen=True)
class ItkImage:
    """A 3D image as ITK describes it.

    array: float32 [k, j, i] voxel values (i the fastest ITK index); spacing: (i, j, k) mm;
    origin: LPS (x, y, z) mm of voxel (0, 0, 0); direction: 3x3, column c is the LPS unit
    vector of ITK index axis c; metadata: the file's key/value tags (e.g. DICOM tags "0028|1053").
    """

    array: np.ndarray
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: np.ndarray
    metadata: dict


def _sitk(path: Path):
    try:
        import SimpleITK
    except ImportError as exc:
        raise InputError(f"{path}: reading this format needs SimpleITK; install it with "
                         f"pip install 'nfrecon[formats]' (or pip install SimpleITK)") from exc
    return SimpleITK


@contextlib.contextmanager
def _native_stderr(lines: list[str]):
    """Redirect file descriptor 2 (where ITK's C++ code prints) while in the block; on exit,
    put what was printed, as stripped non-empty lines, into ``lines``."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            lines.extend(ln.strip() for ln in sink.read().decode("utf-8", "replace").splitlines() if ln.strip())


def _reason(exc: RuntimeError, printed: list[str]) -> str:
    """One short line from SimpleITK's error (without its "ITK ERROR: Class(0x...):" prefix and
    source locations) and the first thing ITK printed."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    reason = next((ln for ln in lines if "rror" in ln or "annot" in ln), lines[-1] if lines else "unreadable")
    reason = re.sub(r"^.*?ERROR:\s*\w+\s*\(0x[0-9a-fA-F]+\):\s*", "", reason)
    extra = next((ln for ln in printed if not ln.startswith("WARNING: In ")), None)
    return (reason if extra is None else f"{reason}; {extra}")[:200]


def _check_even_slices(path: Path, reader, image) -> None:
    """InputError when the slice positions (ImagePositionPatient along the slice normal, mm) leave
    even steps by more than UNEVEN_SLICES_FRACTION of the spacing ITK gave the volume."""
    try:
        positions = np.array([[float(v) for v in reader.GetMetaData(i, "0020|0032").split("\\")]
                              for i in range(image.GetDepth())])
    except (RuntimeError, ValueError):  # no usable positions: keep ITK's placement
        return
    along = positions @ np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)[:, 2]
    step = image.GetSpacing()[2]
    deviation = float(np.max(np.abs(along - along[0] - step * np.arange(len(along)))))
    if deviation > UNEVEN_SLICES_FRACTION * step:
        raise InputError(f"{path}: the DICOM slices are unevenly spaced (up to {deviation:.3g} mm off a "
                         f"{step:.3g} mm spacing); missing slices?")


def is_itk_path(path: str | Path) -> bool:
    """Whether ``path`` is read through ITK: a file with an ITK suffix, or a folder (a DICOM series)."""
    path = Path(path)
    return path.is_dir() or path.name.lower().endswith(ITK_SUFFIXES)


def read_itk_image(path: str | Path) -> ItkImage:
    """Read a 3D image file (``.mha``, ``.mhd``, ``.nrrd``, ``.nhdr``) or a DICOM series (a folder
    holding one series); InputError naming the path when it is missing, unreadable or not 3D."""
    path = Path(path)
    sitk = _sitk(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    printed: list[str] = []
    try:
        with _native_stderr(printed):
            if path.is_dir():
                reader = sitk.ImageSeriesReader()
                series = reader.GetGDCMSeriesIDs(str(path))
                if not series:
                    raise InputError(f"{path}: {NO_DICOM_SERIES}")
                if len(series) > 1:
                    raise InputError(f"{path}: {len(series)} DICOM series in this folder; pass a folder with one")
                reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(path), series[0]))
                reader.MetaDataDictionaryArrayUpdateOn()
                image = reader.Execute()
                metadata = {k: reader.GetMetaData(0, k) for k in reader.GetMetaDataKeys(0)}
            else:
                image = sitk.ReadImage(str(path))
                metadata = {k: image.GetMetaData(k) for k in image.GetMetaDataKeys()}
    except RuntimeError as exc:  # SimpleITK reports every reading fault as a RuntimeError
        raise InputError(f"{path}: cannot read the image ({_reason(exc, printed)})") from exc
    if path.is_dir() and image.HasMetaDataKey("ITK_non_uniform_sampling_deviation"):  # ITK's own flag
        _check_even_slices(path, reader, image)
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{path}: expected a 3D scalar image, got {image.GetDimension()}D with "
                         f"{image.GetNumberOfComponentsPerPixel()} components per voxel")
    array = np.ascontiguousarray(sitk.GetArrayFromImage(image), dtype=np.float32)
    if not np.all(np.isfinite(array)):
        raise InputError(f"{path}: the image contains NaN or Inf")
    return ItkImage(
        array=array,
        spacing=tuple(float(s) for s in image.GetSpacing()),
        origin=tuple(float(o) for o in image.GetOrigin()),
        direction=np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3),
        metadata=metadata,
    )
