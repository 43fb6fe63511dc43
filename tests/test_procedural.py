"""Procedural patients: reproducible per seed, plausible tissue mix, inside the grid and field of view."""

import dataclasses

import numpy as np
import pytest

from nfrecon.data.procedural import AIR_HU, PatientConfig, generate_patient
from nfrecon.data.resample import resample
from nfrecon.errors import InputError

SMALL = PatientConfig(shape=(40, 40, 40), voxel_size=(9.0, 9.0, 9.0))  # a 360 mm box


def tissue_fractions(hu: np.ndarray) -> dict:
    """Fractions of the body voxels (HU > -990) that are lung, bone and soft tissue (fixed HU windows)."""
    body = hu > -990
    n = body.sum()
    return {
        "lung": ((hu >= -950) & (hu <= -700)).sum() / n,
        "bone": (hu > 300).sum() / n,
        "soft": ((hu >= -100) & (hu <= 100)).sum() / n,
    }


def test_same_seed_is_bitwise_identical_and_seeds_differ():
    a, geom = generate_patient(7, SMALL)
    b, _ = generate_patient(7, SMALL)
    c, _ = generate_patient(8, SMALL)
    assert a.dtype == np.float32 and a.shape == SMALL.shape and geom == SMALL.geometry()
    assert np.array_equal(a, b)
    assert np.abs(a - c).mean() > 50.0  # another patient, not a little noise


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_tissue_fractions_and_hu_range_are_plausible(seed):
    hu, _ = generate_patient(seed, SMALL)
    f = tissue_fractions(hu)
    assert 0.05 <= f["lung"] <= 0.40, f
    assert 0.02 <= f["bone"] <= 0.20, f
    assert f["soft"] > 0.30, f
    assert hu.min() >= -1024.0 and hu.max() <= 3000.0
    assert hu.max() > 700.0  # some dense bone survives the partial volume
    assert np.count_nonzero(hu == -1000.0) > 0.2 * hu.size  # air around the body is exactly -1000


def test_body_stays_inside_the_grid_and_the_field_of_view():
    cfg = dataclasses.replace(SMALL, shape=(24, 48, 48), voxel_size=(15.0, 8.0, 8.0), fov_radius_mm=150.0)
    geom = cfg.geometry()
    centres = geom.voxel_centers()
    radius = np.hypot(centres[..., 1], centres[..., 2])
    for seed in range(3):
        hu, _ = generate_patient(seed, cfg)
        border = np.concatenate([hu[:, [0, -1], :].ravel(), hu[:, :, [0, -1]].ravel()])
        assert np.all(border == -1000.0)
        assert radius[hu != -1000.0].max() <= 150.0
        assert (hu > -990).mean() > 0.1  # a real body, not a speck


def test_table_is_a_slab_below_the_body():
    cfg = dataclasses.replace(SMALL, table=True)
    hu, geom = generate_patient(3, cfg)
    without, _ = generate_patient(3, dataclasses.replace(cfg, table=False))
    table = hu != without  # the flag adds the table and changes nothing else
    rows = np.flatnonzero(table.any(axis=(0, 2)))
    body_rows = np.flatnonzero((without > -990).any(axis=(0, 2)))
    assert len(rows) and rows.max() < body_rows.min()  # entirely below (towards -y) the body
    assert table[:, rows[len(rows) // 2], :].mean() > 0.5  # wide, along every slice
    # partial volume integrates to the slab: thickness (12-20 mm) = voxel size * sum of occupancies
    occupancy = (hu - without)[:, :, geom.shape[2] // 2] / (cfg.table_hu + 1000.0)
    thickness = occupancy.sum(axis=1) * geom.voxel_size[1]
    assert np.all((thickness > 12.0 - 1e-3) & (thickness < 20.0 + 1e-3)) and np.ptp(thickness) < 1e-3


def test_same_patient_at_two_resolutions():
    coarse = dataclasses.replace(SMALL, shape=(20, 20, 20), voxel_size=(18.0,) * 3, texture_hu=0.0)
    fine = dataclasses.replace(coarse, shape=(40, 40, 40), voxel_size=(9.0,) * 3)
    a, ga = generate_patient(5, coarse)
    b, gb = generate_patient(5, fine)
    other, _ = generate_patient(6, coarse)
    down = resample(b, gb, ga)
    assert np.corrcoef(a.ravel(), down.ravel())[0, 1] > 0.97
    assert np.abs(a - down).mean() < 0.3 * np.abs(a - other).mean()


def test_scan_length_keeps_a_contiguous_range_of_the_same_patient():
    full, _ = generate_patient(4, SMALL)
    short, _ = generate_patient(4, dataclasses.replace(SMALL, scan_length=(0.5, 0.5)))
    kept = np.flatnonzero((short != AIR_HU).any(axis=(1, 2)))
    assert len(kept) == 20 and np.array_equal(kept, np.arange(kept[0], kept[0] + 20))
    np.testing.assert_array_equal(short[kept], full[kept])  # the other draws are unchanged
    assert np.all(short[: kept[0]] == AIR_HU) and np.all(short[kept[-1] + 1:] == AIR_HU)


@pytest.mark.parametrize("change, message", [
    ({"body_aspect": (0.8, 0.6)}, "body_aspect"),
    ({"shape": (0, 10, 10)}, "shape"),
    ({"fov_radius_mm": -5.0}, "fov_radius_mm"),
    ({"lung_nodules": (-1, 2)}, "lung_nodules"),
    ({"scan_length": (0.0, 0.5)}, "scan_length"),
])
def test_bad_config_is_an_input_error(change, message):
    with pytest.raises(InputError, match=message):
        dataclasses.replace(SMALL, **change)


def test_body_that_cannot_fit_is_an_input_error():
    with pytest.raises(InputError, match="does not fit"):
        generate_patient(0, dataclasses.replace(SMALL, fov_radius_mm=20.0))
    with pytest.raises(InputError, match="seed"):
        generate_patient(-1, SMALL)
