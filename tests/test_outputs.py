"""PNG previews (size in mm, orientation, atomic write), TensorBoard logging, progress."""

import sys
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from nfrecon.errors import InputError
from nfrecon.geometry.volume import VolumeGeometry
from nfrecon.outputs import TBLogger, compare_preview, format_duration, progress, save_preview
from nfrecon.outputs import tensorboard as tb_module

# (nz, ny, nx) voxels of (3, 1, 2) mm: the box is 120 (z) x 90 (y) x 140 (x) mm.
GEOM = VolumeGeometry((40, 90, 70), (3.0, 1.0, 2.0))


def _blocks():
    """One bright block in each mid-slice (mid indices z 20, y 45, x 35), in no other."""
    vol = np.zeros(GEOM.shape, np.float32)
    vol[20, 10:20, 5:15] = 1  # axial: z mid, low y (posterior), low x (patient left)
    vol[30:36, 40:50, 60:70] = 1  # coronal: high z (superior), high x (patient right)
    vol[2:6, 70:80, 30:40] = 1  # sagittal: low z (inferior), high y (anterior)
    return vol


def _centroid(img):
    rows, cols = np.indices(img.shape)
    w = img.astype(np.float64)
    return (rows * w).sum() / w.sum(), (cols * w).sum() / w.sum()


def test_preview_panels_are_square_in_mm_and_oriented(tmp_path):
    path = tmp_path / "preview.png"
    boxes = save_preview(path, _blocks(), GEOM, title="blocks", vmin=0, vmax=1)
    assert [p.name for p in tmp_path.iterdir()] == ["preview.png"]  # no temporary file left
    img = np.asarray(Image.open(path))
    assert img.ndim == 2 and img.dtype == np.uint8
    # 1 mm pixels (the smallest voxel size): panel sides are the box extents in mm.
    expected = {"axial": (140, 90), "coronal": (140, 120), "sagittal": (90, 120)}  # (width, height)
    assert {k: (b.width, b.height) for k, b in boxes.items()} == expected
    assert img.shape[1] >= 140 + 140 + 90 and img.shape[0] >= 120
    # Block centres in mm from the low faces, then radiological flips (row = H - 0.5 - mm
    # for the anterior/superior-up axes, col = W - 0.5 - mm for patient right / anterior on the left).
    centres_mm = {"axial": (15, 20), "coronal": (99, 130), "sagittal": (12, 75)}  # (row axis, col axis)
    for name, box in boxes.items():
        panel = img[box.top : box.top + box.height, box.left : box.left + box.width]
        row_mm, col_mm = centres_mm[name]
        r, c = _centroid(panel)
        assert abs(r - (box.height - 0.5 - row_mm)) < 0.5 and abs(c - (box.width - 0.5 - col_mm)) < 0.5, name
        assert panel.max() == 255 and (panel > 128).sum() == pytest.approx(
            {"axial": 10 * 20, "coronal": 18 * 20, "sagittal": 12 * 10}[name], rel=0.15
        )


def test_default_window_is_percentiles_and_resampling_is_linear(tmp_path):
    """A ramp in x (value = x index): 1 mm voxels, 32 mm -> enlarged to 128 px (0.25 mm)."""
    vol = torch.arange(32, dtype=torch.float64).expand(32, 32, 32)
    boxes = save_preview(tmp_path / "a.png", vol)
    b = boxes["axial"]
    assert b.width == b.height == 128
    img = np.asarray(Image.open(tmp_path / "a.png"))
    panel = img[b.top : b.top + b.height, b.left : b.left + b.width].astype(int)
    lo, hi = np.percentile(vol.numpy(), [0.5, 99.5])
    x_index = np.clip((np.arange(128) + 0.5) * 0.25 - 0.5, 0, 31)[::-1]  # patient right (high x) on the left
    expected = np.rint(np.clip((x_index - lo) / (hi - lo), 0, 1) * 255)
    assert np.abs(panel - expected[None, :]).max() <= 1


def test_compare_preview_rows_share_one_window(tmp_path):
    gt = _blocks()
    recon = 0.5 * gt
    boxes = compare_preview(tmp_path / "c.png", {"ground truth": gt, "recon": recon}, GEOM, vmin=0, vmax=1)
    img = np.asarray(Image.open(tmp_path / "c.png"))
    top, low = boxes["ground truth"]["axial"], boxes["recon"]["axial"]
    assert low.top >= top.top + top.height and (low.width, low.height) == (top.width, top.height)
    a = img[top.top : top.top + top.height, top.left : top.left + top.width].astype(int)
    b = img[low.top : low.top + low.height, low.left : low.left + low.width].astype(int)
    assert a.max() == 255 and b.max() == 128 and np.abs(b - a / 2).max() <= 1


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda p: save_preview(p, np.zeros((4, 4))), r"must be a non-empty 3D volume \[z, y, x\], got shape \(4, 4\)"),
        (lambda p: save_preview(p, np.zeros((4, 5, 6)), VolumeGeometry((4, 5, 7))),
         r"volume shape \(4, 5, 6\) differs from vol_geom shape \(4, 5, 7\)"),
        (lambda p: save_preview(p, np.zeros((4, 5, 6)), vmin=1, vmax=0),
         "needs finite vmin < vmax, got vmin=1, vmax=0"),
        (lambda p: compare_preview(p, {"a": np.zeros((4, 5, 6)), "b": np.zeros((4, 5, 5))}),
         r"volume 'b' has shape \(4, 5, 5\), expected \(4, 5, 6\)"),
        (lambda p: compare_preview(p, {}), "volumes is empty"),
    ],
)
def test_preview_bad_input(tmp_path, call, message):
    with pytest.raises(InputError, match=message):
        call(tmp_path / "x.png")
    assert list(tmp_path.iterdir()) == []


def test_tensorboard_scalars_and_slices_read_back(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    values = [0.5, 0.25, 1e-3, 123.456]
    with TBLogger(tmp_path) as tb:
        assert tb.enabled
        for step, v in enumerate(values):
            tb.scalar("loss", v, step)
        tb.scalar("psnr", torch.tensor(31.5), 7)
        tb.slices("recon", _blocks(), 3, GEOM)
    acc = EventAccumulator(str(tmp_path), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    loss = acc.Scalars("loss")
    assert [e.step for e in loss] == [0, 1, 2, 3]
    np.testing.assert_allclose([e.value for e in loss], values, rtol=1e-6)  # stored as float32
    assert [(e.step, e.value) for e in acc.Scalars("psnr")] == [(7, 31.5)]
    sizes = {t: (acc.Images(t)[0].width, acc.Images(t)[0].height) for t in acc.Tags()["images"]}
    assert sizes == {"recon/axial": (140, 90), "recon/coronal": (140, 120), "recon/sagittal": (90, 120)}


def test_tensorboard_missing_is_a_noop_with_one_warning(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import raises ImportError
    monkeypatch.setattr(tb_module, "_warned", False)
    with pytest.warns(UserWarning, match="tensorboard"):
        tb = TBLogger(tmp_path / "a")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tb2 = TBLogger(tmp_path / "b")
    for logger in (tb, tb2):
        assert not logger.enabled
        logger.scalar("x", 1.0, 0)
        logger.slices("v", np.zeros((8, 8, 8)), 0)
        logger.close()
    assert list(tmp_path.iterdir()) == []


def test_progress_bar_counts_and_format_duration(capsys):
    with progress(5, desc="fit", unit="step") as bar:
        for _ in range(5):
            bar.update()
        assert bar.n == 5 and bar.total == 5 and bar.unit == "step"
    err = capsys.readouterr().err
    assert "fit" in err and "5/5" in err and "step/s" in err
    assert format_duration(0.4234) == "0.42 s"
    assert format_duration(12.34) == "12.3 s"
    assert format_duration(125) == "2 min 05 s"
    assert format_duration(3723) == "1 h 02 min"
    with pytest.raises(InputError, match="seconds must be >= 0, got -1"):
        format_duration(-1)
