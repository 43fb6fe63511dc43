"""Simulated cone-beam scans: from a mu volume (CT) or from the analytic Shepp-Logan phantom.

A simulated scan holds noiseless projections (``clean``), noisy ones (Poisson counts with
``photons`` per pixel, optional Gaussian read noise; see nfrecon.data.counts.add_noise)
and the ground truth resampled onto the reconstruction grid.

Before projecting, the object's support (mu > ``SUPPORT_MU``) is checked against the
cone-beam field of view and the reconstruction box: an object partly outside either gives
a warning with the numbers (truncated projections are common with real CTs: the 360 mm
wide chest CT in the CondCBNT protocol's field of view of radius 168 mm loses about 9% of
its voxels in some views); an object entirely outside is an InputError.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch

from nfrecon.data.counts import add_noise
from nfrecon.data.hu import MU_WATER
from nfrecon.data.phantom import EllipsoidPhantom
from nfrecon.data.resample import resample
from nfrecon.data.scan import Scan
from nfrecon.errors import InputError
from nfrecon.geometry.cone import ConeGeometry
from nfrecon.geometry.volume import VolumeGeometry
from nfrecon.ops.projector import VoxelProjector

SUPPORT_MU = 1e-3  # 1/mm (about -950 HU at 0.0206/mm): voxels above this are "the object"
_FOV_CELLS = 32  # the support is checked on at most this many cells per axis


def _support_points(mu: np.ndarray, mu_geom: VolumeGeometry) -> tuple[np.ndarray, np.ndarray]:
    """World centres (P, 3) of coarse cells holding support voxels, and their voxel counts (P,)."""
    mask = mu > SUPPORT_MU
    f = [math.ceil(n / _FOV_CELLS) for n in mask.shape]
    padded = np.zeros([math.ceil(n / k) * k for n, k in zip(mask.shape, f)], dtype=np.int64)
    padded[: mask.shape[0], : mask.shape[1], : mask.shape[2]] = mask
    cells = padded.reshape(padded.shape[0] // f[0], f[0], padded.shape[1] // f[1], f[1], -1, f[2]).sum((1, 3, 5))
    idx = np.argwhere(cells > 0)
    first = idx * np.asarray(f)
    last = np.minimum(first + np.asarray(f), np.asarray(mask.shape)) - 1
    return mu_geom.index_to_world((first + last) / 2), cells[cells > 0].astype(np.float64)


def _seen(geom: ConeGeometry, points: np.ndarray) -> np.ndarray:
    """Number of views (P,) in which each world point projects onto the detector."""
    nv, nu = geom.det_shape
    count = np.zeros(len(points), dtype=np.int64)
    normals = geom.normal
    for i in range(geom.n_views):
        s, n, u, v = geom.src[i], normals[i], geom.u[i], geom.v[i]
        d = points - s
        depth = d @ n
        with np.errstate(divide="ignore", invalid="ignore"):
            rel = s + d * (np.dot(geom.det[i] - s, n) / depth)[:, None] - geom.det[i]
        gram = np.array([[u @ u, u @ v], [u @ v, v @ v]])
        a, b = np.linalg.solve(gram, np.stack([rel @ u, rel @ v]))
        count += (depth > 0) & (np.abs(a) <= nu / 2) & (np.abs(b) <= nv / 2)
    return count


def check_field_of_view(mu, mu_geom: VolumeGeometry, geom: ConeGeometry, recon_geom: VolumeGeometry) -> dict:
    """Fractions of the object (mu > SUPPORT_MU) outside the field of view / the reconstruction box.

    Warns (UserWarning, with the numbers) for a partly covered object; raises InputError
    "volume outside the field of view" when no part of it is seen by any view or lies in
    the reconstruction box. Returns ``{"outside_fov": f, "outside_recon_box": f}``.
    """
    points, weight = _support_points(np.asarray(mu), mu_geom)
    if weight.sum() == 0:
        warnings.warn(f"the volume is empty: no voxel has mu > {SUPPORT_MU}/mm", stacklevel=3)
        return {"outside_fov": 0.0, "outside_recon_box": 0.0}
    seen = _seen(geom, points)
    if not np.any(seen > 0):
        raise InputError("volume outside the field of view: no part of the object projects onto the detector")
    in_box = np.all((points >= recon_geom.box_min) & (points <= recon_geom.box_max), axis=1)
    if not np.any(in_box):
        raise InputError(f"volume outside the field of view: the object does not overlap the reconstruction box "
                         f"({recon_geom.describe()})")
    report = {
        "outside_fov": float(weight[seen < geom.n_views].sum() / weight.sum()),
        "outside_recon_box": float(weight[~in_box].sum() / weight.sum()),
    }
    if report["outside_fov"] > 0:
        extent = ""
        if geom.is_circular():
            r_obj = float(np.hypot(points[:, 1], points[:, 2]).max())
            extent = (f" (object radius about {r_obj:.0f} mm from the rotation axis, "
                      f"field of view radius {geom.fov_radius():.0f} mm)")
        warnings.warn(f"volume outside the field of view: {100 * report['outside_fov']:.1f}% of the object "
                      f"(mu > {SUPPORT_MU}/mm) is missed by some views{extent}; the projections are truncated",
                      stacklevel=3)
    if report["outside_recon_box"] > 0:
        warnings.warn(f"{100 * report['outside_recon_box']:.1f}% of the object lies outside the reconstruction box "
                      f"({recon_geom.describe()})", stacklevel=3)
    return report


def _noisy(clean: np.ndarray, photons: float | None, read_noise: float, seed: int) -> tuple[np.ndarray, float | None]:
    """(projections, photons): noiseless when photons is None or 0. Noise is drawn on the CPU (reproducible)."""
    if photons is None or photons == 0:
        return clean, None
    return add_noise(clean, photons, read_noise, torch.Generator().manual_seed(int(seed))), float(photons)


def simulate_scan(
    mu,
    mu_geom: VolumeGeometry,
    geom: ConeGeometry,
    recon_geom: VolumeGeometry,
    *,
    photons: float | None = 1e5,
    read_noise: float = 0.0,
    seed: int = 0,
    step_mm: float | None = None,
    device: str | torch.device | None = None,
    metadata: dict | None = None,
    backend: str = "auto",
) -> Scan:
    """Simulate a scan of the mu volume ``mu`` [z, y, x] (1/mm, numpy or torch) on ``mu_geom``.

    The clean projections are the VoxelProjector line integrals of ``mu`` on its own grid
    (sample step ``step_mm``, default half its smallest voxel), computed on ``device``
    (default: CUDA when available, else CPU). photons: I0 per pixel (None or 0: noiseless);
    read_noise: Gaussian std in counts; seed: the noise seed. The ground truth is ``mu``
    resampled (with anti-aliasing) onto ``recon_geom``. ``metadata`` is merged over the
    simulation's own record (photons, read_noise, seed, step_mm, field-of-view report).
    ``backend``: the projector's implementation (auto, torch, cpp, cuda; see VoxelProjector).
    """
    vol = mu.detach().float().cpu() if isinstance(mu, torch.Tensor) else torch.from_numpy(np.asarray(mu, np.float32))
    if tuple(vol.shape) != mu_geom.shape:
        raise InputError(f"mu: volume has shape {tuple(vol.shape)}, its geometry says {mu_geom.shape}")
    if not torch.isfinite(vol).all():
        raise InputError("mu: the volume contains NaN or Inf")
    if photons is not None and not (np.isfinite(photons) and photons >= 0):
        raise InputError(f"photons: photon count must be positive (or 0 for noiseless), got {photons}")
    report = check_field_of_view(vol.numpy(), mu_geom, geom, recon_geom)
    device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    projector = VoxelProjector(mu_geom, geom, step_mm=step_mm, backend=backend)
    with torch.no_grad():
        clean = projector(vol.to(device)).cpu().numpy()
    projections, photons = _noisy(clean, photons, read_noise, seed)
    record = {"simulation": "voxel projection", "photons": photons, "read_noise": float(read_noise),
              "seed": int(seed), "step_mm": projector.step, "mu_geometry": mu_geom.to_dict(), **report}
    return Scan(projections, geom, gt=resample(vol, mu_geom, recon_geom).numpy(), gt_geom=recon_geom,
                recon_geom=recon_geom, clean=clean, photons=photons, metadata={**record, **(metadata or {})})


def phantom_scan(
    geom: ConeGeometry,
    recon_geom: VolumeGeometry,
    *,
    radius_mm: float | None = None,
    mu_water: float = MU_WATER,
    photons: float | None = 1e5,
    read_noise: float = 0.0,
    seed: int = 0,
    supersample: int = 2,
    metadata: dict | None = None,
) -> Scan:
    """A 3D Shepp-Logan scan with analytic (exact) clean projections.

    radius_mm: phantom radius (default: 90% of the smaller of the recon box's half-width in
    y and x and, for circular scans, the field-of-view radius); its brain has mu = ``mu_water``.
    The ground truth is the phantom voxelised on ``recon_geom`` (``supersample``^3 points per
    voxel). Noise as in :func:`simulate_scan`.
    """
    if radius_mm is None:
        half_width = float(min(recon_geom.size[1:])) / 2
        radius_mm = 0.9 * (min(half_width, geom.fov_radius()) if geom.is_circular() else half_width)
    if not (np.isfinite(radius_mm) and radius_mm > 0):
        raise InputError(f"radius_mm: must be positive, got {radius_mm}")
    phantom = EllipsoidPhantom.shepp_logan(radius_mm=radius_mm, mu_water=mu_water)
    gt = phantom.voxelize(recon_geom, supersample=supersample)
    report = check_field_of_view(gt, recon_geom, geom, recon_geom)
    clean = phantom.project(geom).astype(np.float32)
    projections, photons = _noisy(clean, photons, read_noise, seed)
    record = {"simulation": "analytic Shepp-Logan", "radius_mm": float(radius_mm), "mu_water": float(mu_water),
              "photons": photons, "read_noise": float(read_noise), "seed": int(seed), **report}
    return Scan(projections, geom, gt=gt, gt_geom=recon_geom, recon_geom=recon_geom, clean=clean,
                photons=photons, metadata={**record, **(metadata or {})})
