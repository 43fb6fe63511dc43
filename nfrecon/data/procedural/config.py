"""Configuration of procedural patients: :class:`PatientConfig` and the model's fixed constants.

Grids are (z, y, x) as in DESIGN.md §2: shapes (nz, ny, nx), voxel sizes (dz, dy, dx) mm,
centres (z, y, x) mm; lengths in mm, tissue values in HU.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from nfrecon.errors import InputError
from nfrecon.geometry.volume import VolumeGeometry

Range = tuple[float, float]
IntRange = tuple[int, int]

AIR_HU = -1000.0
HU_MIN, HU_MAX = -1024.0, 3000.0
BODY_Z_VARIATION = 0.06  # relative amplitude of the body's half-axes along z
BODY_DRIFT_MM = 5.0  # amplitude of the body centre's drift along z
MIN_SCALE = 0.25  # smallest body scale accepted to fit a grid / field of view
TABLE_MM = (12.0, 20.0)  # table thickness range
TABLE_GAP_MM = (3.0, 15.0)  # air between the back and the table
TABLE_HALF_WIDTH_MM = 240.0


@dataclass(frozen=True)
class PatientConfig:
    """Grid and ranges of a procedural patient; every range is (low, high), drawn uniformly.

    Grid: ``shape`` (nz, ny, nx), ``voxel_size`` (dz, dy, dx) mm, ``center`` (z, y, x) mm.
    ``fov_radius_mm``: keep the body within this radius of the world z axis (None: only the
    grid); ``margin_mm``: air kept between the body (and table) and the grid's y/x faces.
    Body: lateral half-width (mm), AP/lateral aspect, subcutaneous fat and muscle wall
    thickness as fractions of the AP half-axis, in-plane offset (up to +-mm in y and x),
    rotation about z (up to +-deg). Anatomy: ``diaphragm_level`` (fraction of the grid's z
    extent, from its bottom, where the right diaphragm dome sits), lung height (mm),
    ``organ_scale`` (per-organ size factor), ``vessel_generations`` (branchings of each lung
    vessel), lesion counts and radii, gas pockets in the bowel, the probability of an
    iodine-contrast (enhanced blood) patient, tissue HU ranges. ``table``: add a couch slab
    of ``table_hu``. Texture: ``smooth_hu`` (amplitude of a smooth intensity variation),
    ``texture_hu`` (std of a fine noise of correlation length ``texture_mm``). Extent:
    ``scan_length`` (fraction of the grid's z extent the scan covers: a random contiguous
    range of slices of that length keeps the patient, the others are air, as in a CT shorter
    than the box; (1, 1): the whole box).
    """

    shape: tuple[int, int, int] = (128, 128, 128)
    voxel_size: tuple[float, float, float] = (3.0, 3.0, 3.0)
    center: tuple[float, float, float] = (0.0, 0.0, 0.0)
    fov_radius_mm: float | None = None
    margin_mm: float = 6.0
    body_half_width_mm: Range = (140.0, 185.0)
    body_aspect: Range = (0.62, 0.80)
    fat_fraction: Range = (0.05, 0.22)
    muscle_fraction: Range = (0.08, 0.13)
    offset_mm: float = 15.0
    rotation_deg: float = 8.0
    diaphragm_level: Range = (0.3, 0.6)
    lung_height_mm: Range = (200.0, 260.0)
    organ_scale: Range = (0.85, 1.15)
    vessel_generations: int = 5
    lung_nodules: IntRange = (0, 4)
    liver_lesions: IntRange = (0, 3)
    lesion_radius_mm: Range = (2.5, 12.0)
    gas_pockets: IntRange = (0, 6)
    contrast_probability: float = 0.3
    lung_hu: Range = (-880.0, -820.0)
    fat_hu: Range = (-115.0, -85.0)
    muscle_hu: Range = (35.0, 55.0)
    liver_hu: Range = (50.0, 70.0)
    kidney_hu: Range = (25.0, 40.0)
    cancellous_hu: Range = (300.0, 700.0)
    cortical_hu: Range = (1000.0, 1600.0)
    rib_hu: Range = (700.0, 1200.0)
    table: bool = False
    table_hu: float = 200.0
    smooth_hu: float = 15.0
    texture_hu: float = 10.0
    texture_mm: float = 2.0
    scan_length: Range = (1.0, 1.0)

    def __post_init__(self):
        self.geometry()  # validates shape, voxel size, centre
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.type in ("Range", "IntRange"):
                ok = len(value) == 2 and all(np.isfinite(v) for v in value) and value[0] <= value[1]
                ok = ok and (f.type == "Range" or all(float(v).is_integer() for v in value))
                if not ok:
                    raise InputError(f"patient config: {f.name} must be a range (low, high) with low <= high, "
                                     f"got {value!r}")
        positive = ("margin_mm", "offset_mm", "rotation_deg", "smooth_hu", "texture_hu", "texture_mm")
        for name in positive:
            if not getattr(self, name) >= 0:
                raise InputError(f"patient config: {name} must be >= 0, got {getattr(self, name)!r}")
        checks = {
            "fov_radius_mm": self.fov_radius_mm is None or self.fov_radius_mm > 0,
            "body_half_width_mm": self.body_half_width_mm[0] > 0,
            "body_aspect": 0 < self.body_aspect[0] and self.body_aspect[1] <= 1.5,
            "fat_fraction": self.fat_fraction[0] >= 0 and self.fat_fraction[1] + 2 * self.muscle_fraction[1] < 0.7,
            "muscle_fraction": self.muscle_fraction[0] > 0,
            "diaphragm_level": 0 <= self.diaphragm_level[0] and self.diaphragm_level[1] <= 1,
            "lung_height_mm": self.lung_height_mm[0] > 0,
            "organ_scale": self.organ_scale[0] > 0,
            "vessel_generations": 0 <= self.vessel_generations <= 7,
            "lung_nodules": self.lung_nodules[0] >= 0,
            "liver_lesions": self.liver_lesions[0] >= 0,
            "lesion_radius_mm": self.lesion_radius_mm[0] > 0,
            "gas_pockets": self.gas_pockets[0] >= 0,
            "contrast_probability": 0 <= self.contrast_probability <= 1,
            "scan_length": 0 < self.scan_length[0] and self.scan_length[1] <= 1,
        }
        for name, ok in checks.items():
            if not ok:
                raise InputError(f"patient config: {name} is out of range: {getattr(self, name)!r}")

    def geometry(self) -> VolumeGeometry:
        return VolumeGeometry(self.shape, self.voxel_size, self.center)
