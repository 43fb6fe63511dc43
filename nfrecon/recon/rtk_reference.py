"""RTK (``itk-rtk``) run on nfrecon data: the independent reference for tests and benchmarks.

Thin glue around RTK's own filters (FDK with Parker weights, Joseph forward projection);
all frame conversions are those of :mod:`nfrecon.geometry.interop.rtk`. Arrays in and out
follow nfrecon's conventions ([view, v, u] line integrals, [z, y, x] mu in 1/mm).
"""

from __future__ import annotations

import numpy as np

from nfrecon.errors import InputError
from nfrecon.geometry.cone import ConeGeometry
from nfrecon.geometry.interop import rtk as rtk_io
from nfrecon.geometry.volume import VolumeGeometry


def _rtk():
    try:
        from itk import RTK
    except ImportError as exc:  # pragma: no cover - exercised only without itk-rtk
        raise InputError("the RTK reference needs the 'itk-rtk' package: pip install itk-rtk") from exc
    return RTK


def rtk_fdk(proj: np.ndarray, geom: ConeGeometry, vol_geom: VolumeGeometry, *, hann: float = 0.0,
            parker: bool = False) -> np.ndarray:
    """RTK's FDK of line integrals ``proj`` onto ``vol_geom``: float32 [z, y, x] mu (1/mm).

    hann: RTK's Hann cut frequency (0: plain ramp); parker: apply RTK's Parker short-scan
    weights first. The ramp filter zero-pads (no truncation correction), as nfrecon's FDK.
    """
    RTK = _rtk()
    stack = rtk_io.projections_to_rtk_image(proj, geom)
    rtk_geom = rtk_io.to_rtk_geometry(geom)
    image_type = type(stack)
    if parker:
        weighting = RTK.ParkerShortScanImageFilter[image_type].New()
        weighting.SetInput(stack)
        weighting.SetGeometry(rtk_geom)
        weighting.Update()
        stack = weighting.GetOutput()
    recon = RTK.FDKConeBeamReconstructionFilter[image_type].New()
    recon.SetInput(0, rtk_io.volume_to_rtk_image(np.zeros(vol_geom.shape, np.float32), vol_geom))
    recon.SetInput(1, stack)
    recon.SetGeometry(rtk_geom)
    recon.GetRampFilter().SetTruncationCorrection(0.0)
    recon.GetRampFilter().SetHannCutFrequency(float(hann))
    recon.Update()
    volume, out_geom = rtk_io.volume_from_rtk_image(recon.GetOutput())
    if not (np.allclose(out_geom.center, vol_geom.center) and np.allclose(out_geom.voxel_size, vol_geom.voxel_size)):
        raise RuntimeError("RTK returned a volume on another grid")
    return volume


def rtk_joseph(volume: np.ndarray, vol_geom: VolumeGeometry, geom: ConeGeometry) -> np.ndarray:
    """RTK's Joseph forward projection of ``volume`` [z, y, x]: float32 [view, v, u]."""
    import itk

    RTK = _rtk()
    origin, spacing = rtk_io.projection_image_frame(geom)
    stack = rtk_io.constant_image(geom.proj_shape, origin, spacing)
    joseph = RTK.JosephForwardProjectionImageFilter[type(stack), type(stack)].New()
    joseph.SetInput(0, stack)
    joseph.SetInput(1, rtk_io.volume_to_rtk_image(volume, vol_geom))
    joseph.SetGeometry(rtk_io.to_rtk_geometry(geom))
    joseph.Update()
    return np.asarray(itk.array_from_image(joseph.GetOutput()), dtype=np.float32)


def rtk_joseph_adjoint(proj: np.ndarray, geom: ConeGeometry, vol_geom: VolumeGeometry) -> np.ndarray:
    """RTK's Joseph backprojection (the transpose of its forward projector) of ``proj``
    [view, v, u] onto ``vol_geom``: float32 [z, y, x]."""
    RTK = _rtk()
    volume = rtk_io.volume_to_rtk_image(np.zeros(vol_geom.shape, np.float32), vol_geom)
    stack = rtk_io.projections_to_rtk_image(proj, geom)
    back = RTK.JosephBackProjectionImageFilter[type(volume), type(volume)].New()
    back.SetInput(0, volume)
    back.SetInput(1, stack)
    back.SetGeometry(rtk_io.to_rtk_geometry(geom))
    back.Update()
    out, out_geom = rtk_io.volume_from_rtk_image(back.GetOutput())
    if not np.allclose(out_geom.center, vol_geom.center):
        raise RuntimeError("RTK returned a volume on another grid")
    return out
