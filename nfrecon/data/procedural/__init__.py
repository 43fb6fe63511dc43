"""Procedural patients: random but anatomically plausible thorax/abdomen CT volumes in HU.

:func:`generate_patient` draws one patient from a seed and renders it on the grid of a
:class:`PatientConfig`. Volumes are float32 ``[z, y, x]`` in HU; air is exactly -1000.

Frames. World (z, y, x) mm as in DESIGN.md §2: x towards the patient's right, y anterior,
z superior; the patient lies supine (the optional table is below, at -y). Anatomy is laid
out in a patient frame (z, w, u): u towards the patient's right, w anterior, z superior,
z = 0 at the top of the right diaphragm dome. World = patient frame scaled by ``s`` (so
that the body fits the grid and field of view), rotated about z by ``theta`` (counter-
clockwise from +x towards +y) and shifted; the patient frame is continuous, so the same
seed renders the same anatomy at any resolution of the same box (only the fine texture
noise, drawn per voxel, differs).

Shapes are signed distances (mm, negative inside) turned into partial-volume occupancies
``clip(0.5 - sd / h, 0, 1)`` with ``h`` the voxel size, and painted in order
(``hu += occ * (value - hu)``): body fat, muscle wall, abdominal/mediastinal filler,
abdominal organs, lungs, heart and great vessels, lung vessel trees, nodules, airways,
liver lesions, bones (vertebrae, ribs, sternum), table; then a smooth intensity field and
a fine texture are added inside the body.

Modules: ``config`` (:class:`PatientConfig`, the model's constants), ``shapes`` (signed
distances, occupancies, smooth random fields), ``anatomy`` (the random anatomy in the patient
frame), ``rendering`` (placement on the grid, painting, :func:`generate_patient`).
"""

from nfrecon.data.procedural.config import AIR_HU, HU_MAX, HU_MIN, IntRange, PatientConfig, Range
from nfrecon.data.procedural.rendering import generate_patient

__all__ = ["AIR_HU", "HU_MAX", "HU_MIN", "IntRange", "PatientConfig", "Range", "generate_patient"]
