"""CT volumes in ITK's formats (MetaImage, NRRD, DICOM series) and the MetaImage export.

References: files written by ITK itself (``itk.imwrite``, SimpleITK's DICOM writer), the same
volume written as NIfTI by nibabel, physical points from ITK's ``TransformIndexToPhysicalPoint``,
and an independent DICOM read with pydicom (slices sorted along the slice normal, rescale
applied here). The convention pinned: ITK's LPS (x Left, y Posterior, z Superior) becomes
nfrecon's world (z, y, x) = (S, A, R) = (LPS z, -LPS y, -LPS x).
"""

import json
import locale
import os
import sys

import nibabel as nib
import numpy as np
import pytest
from conftest import skip_outside_ci

from nfrecon.cli import main
from nfrecon.data.metaimage import write_metaimage
from nfrecon.data.nifti import write_nifti
from nfrecon.data.volumes import read_ct, read_mu_volume, read_volume_tagged, volume_sha256
from nfrecon.errors import InputError
from nfrecon.fit.config import OutputConfig
from nfrecon.geometry.volume import VolumeGeometry
from nfrecon.outputs.results import write_results


def _module(name: str):
    try:
        return __import__(name)
    except ImportError:
        skip_outside_ci(f"{name} is not installed (pip install 'nfrecon[test]')")


@pytest.fixture
def itk():
    return _module("itk")


@pytest.fixture
def sitk():
    return _module("SimpleITK")


@pytest.fixture
def pydicom():
    return _module("pydicom")


# ITK array [k, j, i] (ITK size (6, 5, 4)): every voxel its own value, anisotropic spacing (i, j, k) mm
SHAPE_KJI = (4, 5, 6)
SPACING_IJK = (0.6, 0.9, 2.5)
ORIGIN_LPS = (12.5, -30.0, 47.0)
K, J, I = np.meshgrid(*(np.arange(n) for n in SHAPE_KJI), indexing="ij")
VALUES = (I + 10 * J + 100 * K - 300).astype(np.float32)

# direction matrices: column c = LPS direction of ITK index axis c
DIRECTIONS = {
    "lps": np.eye(3),
    "flipped": np.diag([-1.0, 1.0, -1.0]),  # i towards Right, j Posterior, k Inferior
    "permuted": np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]]),  # i Anterior, j Inferior, k Left
}
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


def _itk_image(itk, values=VALUES, direction=None, spacing=SPACING_IJK, origin=ORIGIN_LPS):
    direction = np.eye(3) if direction is None else direction
    image = itk.image_from_array(np.ascontiguousarray(values))
    image.SetSpacing(list(spacing))
    image.SetOrigin(list(origin))
    image.SetDirection(itk.matrix_from_array(np.ascontiguousarray(direction, dtype=np.float64)))
    return image


def _nifti_of(path, values, direction, spacing=SPACING_IJK, origin=ORIGIN_LPS):
    """The same volume as a NIfTI file (nibabel): RAS affine = LPS->RAS of ITK's index->LPS map."""
    affine = np.eye(4)
    affine[:3, :3] = LPS_TO_RAS @ direction @ np.diag(spacing)
    affine[:3, 3] = LPS_TO_RAS @ np.asarray(origin)
    nib.save(nib.Nifti1Image(np.ascontiguousarray(values.transpose(2, 1, 0)), affine), path)
    return path


def _world_zyx(lps) -> np.ndarray:
    """nfrecon world (z, y, x) mm of LPS points (..., 3): z = S, y = A = -P, x = R = -L."""
    lps = np.asarray(lps, dtype=np.float64)
    return np.stack([lps[..., 2], -lps[..., 1], -lps[..., 0]], axis=-1)


def _value_at(vol, geom, world_zyx):
    """Values of ``vol`` at world points that must fall on voxel centres."""
    idx = geom.world_to_index(np.atleast_2d(world_zyx))
    np.testing.assert_allclose(idx, np.rint(idx), atol=1e-6)
    idx = np.rint(idx).astype(int)
    return vol[idx[:, 0], idx[:, 1], idx[:, 2]]


# ---------------------------------------------------------------------- MetaImage, NRRD vs NIfTI
@pytest.mark.parametrize("name", sorted(DIRECTIONS))
def test_mha_mhd_nrrd_and_nifti_of_one_volume_read_identically_with_itk_placement(tmp_path, itk, name):
    direction = DIRECTIONS[name]
    image = _itk_image(itk, direction=direction)
    for suffix in (".mha", ".mhd", ".nrrd"):
        itk.imwrite(image, str(tmp_path / f"ct{suffix}"))
    _nifti_of(tmp_path / "ct.nii.gz", VALUES, direction)
    ref_vol, ref_geom, ref_tag = read_volume_tagged(tmp_path / "ct.nii.gz")
    assert ref_tag["format"] == "NIfTI"
    for suffix, fmt in ((".mha", "MetaImage"), (".mhd", "MetaImage"), (".nrrd", "NRRD")):
        vol, geom, tag = read_volume_tagged(tmp_path / f"ct{suffix}")
        assert tag == {"units": "HU", "format": fmt}
        np.testing.assert_array_equal(vol, ref_vol)
        assert geom.shape == ref_geom.shape
        np.testing.assert_allclose(geom.voxel_size, ref_geom.voxel_size, rtol=1e-7)  # NIfTI: float32 affine
        np.testing.assert_allclose(geom.center, ref_geom.center, atol=1e-5)
        # every voxel where ITK says it is: index -> LPS by ITK, LPS -> world by the convention
        pts = [image.TransformIndexToPhysicalPoint([int(i), int(j), int(k)])
               for k, j, i in zip(K.ravel(), J.ravel(), I.ravel())]
        np.testing.assert_array_equal(_value_at(vol, geom, _world_zyx(pts)), VALUES.ravel())
        # placement: centred on the world origin unless asked
        hu, centred = read_ct(tmp_path / f"ct{suffix}")
        np.testing.assert_array_equal(hu, vol)
        assert centred.center == (0.0, 0.0, 0.0) and centred.shape == geom.shape
        assert read_ct(tmp_path / f"ct{suffix}", keep_position=True)[1] == geom


def test_lps_aligned_image_is_flipped_in_x_and_y_and_a_permuted_one_transposed(tmp_path, itk):
    itk.imwrite(_itk_image(itk), str(tmp_path / "lps.mha"))
    vol, geom, _ = read_volume_tagged(tmp_path / "lps.mha")
    np.testing.assert_array_equal(vol, VALUES[:, ::-1, ::-1])  # +x Right = -L, +y Anterior = -P
    assert geom.voxel_size == pytest.approx(SPACING_IJK[::-1])
    # the centre of voxel (0, 0, 0) of the file is the ITK origin: world (S, A, R) = (47, 30, -12.5)
    np.testing.assert_allclose(geom.index_to_world((0, 5 - 1, 6 - 1)), (47.0, 30.0, -12.5), atol=1e-9)

    itk.imwrite(_itk_image(itk, direction=DIRECTIONS["permuted"]), str(tmp_path / "perm.mha"))
    vol, geom, _ = read_volume_tagged(tmp_path / "perm.mha")
    # i -> Anterior (+y), j -> Inferior (-z), k -> Left (-x): world [z, y, x] = [j reversed, i, k reversed]
    np.testing.assert_array_equal(vol, VALUES[::-1, ::-1, :].transpose(1, 2, 0))
    assert geom.voxel_size == pytest.approx((SPACING_IJK[1], SPACING_IJK[0], SPACING_IJK[2]))


# ---------------------------------------------------------------------- DICOM series
def _dicom_series(sitk, folder, hu_kji, *, direction, spacing=(0.8, 0.9, 2.5), origin=(10.0, -20.0, 30.0),
                  order=None, intercept=-1024, slope=2):
    """A CT series written by SimpleITK: int16 stored values with a rescale, one file per slice,
    named and numbered in ``order`` (not the slice order)."""
    folder.mkdir()
    vol = sitk.GetImageFromArray(hu_kji.astype(np.int16))
    vol.SetSpacing(spacing)
    vol.SetOrigin(origin)
    vol.SetDirection(tuple(np.asarray(direction, dtype=np.float64).ravel()))
    uid = "1.2.826.0.1.3680043.2.1125.7"
    order = list(range(hu_kji.shape[0])) if order is None else order
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    saved_locale = locale.setlocale(locale.LC_ALL)  # GDCM's writer switches the process to the C locale
    try:
        _write_slices(writer, vol, hu_kji.shape[0], folder, order, uid, intercept, slope)
    finally:
        locale.setlocale(locale.LC_ALL, saved_locale)
    return folder


def _write_slices(writer, vol, n_slices, folder, order, uid, intercept, slope):
    d = vol.GetDirection()
    for k in range(n_slices):
        s = vol[:, :, k]
        tags = {"0008|0060": "CT", "0020|000d": f"{uid}.1", "0020|000e": f"{uid}.2", "0008|0018": f"{uid}.3.{k}",
                "0028|1052": str(intercept), "0028|1053": str(slope), "0020|0013": str(order[k]),
                "0020|0032": "\\".join(map(str, vol.TransformIndexToPhysicalPoint((0, 0, k)))),
                "0020|0037": "\\".join(map(str, (d[0], d[3], d[6], d[1], d[4], d[7])))}
        for tag, value in tags.items():
            s.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"IM{order[k]:03d}.dcm"))
        writer.Execute(s)


def _pydicom_hu(pydicom, folder):
    """(HU [slice, row, column], LPS mm of every voxel, file names in slice order) read by pydicom:
    slices sorted by ImagePositionPatient along the normal (row x column direction), HU = stored *
    slope + intercept."""
    slices = [pydicom.dcmread(p) for p in sorted(folder.iterdir())]
    row_dir = np.array(slices[0].ImageOrientationPatient[:3], dtype=np.float64)  # along a row: columns advance
    col_dir = np.array(slices[0].ImageOrientationPatient[3:], dtype=np.float64)  # down a column: rows advance
    normal = np.cross(row_dir, col_dir)
    slices.sort(key=lambda ds: float(np.dot(np.array(ds.ImagePositionPatient, dtype=np.float64), normal)))
    hu = np.stack([ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept) for ds in slices])
    dr, dc = (float(v) for v in slices[0].PixelSpacing)  # between rows, between columns
    n_rows, n_cols = hu.shape[1:]
    r, c = np.meshgrid(np.arange(n_rows), np.arange(n_cols), indexing="ij")
    lps = np.stack([np.array(ds.ImagePositionPatient, dtype=np.float64)[None, None]
                    + (c * dc)[..., None] * row_dir + (r * dr)[..., None] * col_dir for ds in slices])
    return hu, lps, [os.path.basename(ds.filename) for ds in slices]


@pytest.mark.parametrize("direction", [np.eye(3), np.diag([-1.0, 1.0, -1.0])], ids=["axial", "flipped"])
def test_dicom_series_in_hu_matches_an_independent_pydicom_read(tmp_path, sitk, pydicom, direction):
    n_k, n_j, n_i = 5, 4, 6
    k, j, i = np.meshgrid(np.arange(n_k), np.arange(n_j), np.arange(n_i), indexing="ij")
    hu_kji = -1024 + 2 * (i + 10 * j + 100 * k)  # even: exact under intercept -1024, slope 2
    folder = _dicom_series(sitk, tmp_path / "series", hu_kji, direction=direction, order=[3, 0, 4, 1, 2])
    first = pydicom.dcmread(folder / "IM000.dcm")
    assert first.RescaleIntercept == -1024 and first.RescaleSlope == 2
    assert not np.array_equal(first.pixel_array, hu_kji[1])  # stored values are not HU

    hu_ref, lps, names = _pydicom_hu(pydicom, folder)
    assert names == ["IM003.dcm", "IM000.dcm", "IM004.dcm", "IM001.dcm", "IM002.dcm"]  # not the file order
    np.testing.assert_array_equal(hu_ref, hu_kji)  # pydicom agrees with what was written
    hu, geom = read_ct(folder, keep_position=True)
    _, _, tag = read_volume_tagged(folder)
    assert tag == {"units": "HU", "format": "DICOM"} and hu.dtype == np.float32
    assert sorted(geom.voxel_size) == pytest.approx(sorted((0.8, 0.9, 2.5)))
    np.testing.assert_array_equal(_value_at(hu, geom, _world_zyx(lps.reshape(-1, 3))), hu_ref.ravel())
    np.testing.assert_allclose(read_mu_volume(folder)[0], np.clip(0.0206 * (1 + hu / 1000), 0, None), atol=1e-8)


# ---------------------------------------------------------------------- bad input
def _truncated_mha(tmp_path, itk):
    itk.imwrite(_itk_image(itk), str(tmp_path / "good.mha"))
    data = (tmp_path / "good.mha").read_bytes()
    (tmp_path / "bad.mha").write_bytes(data[: len(data) - 200])
    return tmp_path / "bad.mha"


def _no_dicom(tmp_path, itk):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("no images here\n")
    return tmp_path / "notes"


def _oblique(tmp_path, itk):
    c, s = np.cos(0.3), np.sin(0.3)
    itk.imwrite(_itk_image(itk, direction=np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])),
                str(tmp_path / "oblique.nrrd"))
    return tmp_path / "oblique.nrrd"


def _missing_slice(tmp_path, itk):
    import SimpleITK as sitk

    folder = _dicom_series(sitk, tmp_path / "gappy", np.zeros((5, 3, 3)), direction=np.eye(3))
    (folder / "IM002.dcm").unlink()
    return folder


def _two_d(tmp_path, itk):
    itk.imwrite(itk.image_from_array(np.zeros((4, 5), np.float32)), str(tmp_path / "flat.mha"))
    return tmp_path / "flat.mha"


@pytest.mark.parametrize("make, message", [
    (_truncated_mha, "cannot read the image"),
    (_no_dicom, "no DICOM series in this folder"),
    (_oblique, "rotated or oblique"),
    (_missing_slice, "unevenly spaced"),
    (_two_d, "expected a 3D scalar image"),
])
def test_bad_itk_inputs_are_one_line_errors_naming_the_path(tmp_path, itk, capfd, make, message):
    path = make(tmp_path, itk)
    capfd.readouterr()
    with pytest.raises(InputError) as err:
        read_ct(path)
    text = str(err.value)
    assert text.startswith(f"{path}: ") and message in text and "\n" not in text
    assert capfd.readouterr().err == ""  # what ITK printed went into the message, not onto stderr


def test_simulate_from_a_corrupt_mha_exits_2_with_one_line_and_writes_nothing(tmp_path, itk, capfd):
    bad = _truncated_mha(tmp_path, itk)
    before = sorted(p.name for p in tmp_path.iterdir())
    capfd.readouterr()
    code = main(["simulate", "--volume", str(bad), "--protocol", "small", "--size", "8", "--views", "4",
                 "--out", str(tmp_path / "scan.h5")])
    out, err = capfd.readouterr()
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and str(bad) in err and "cannot read the image" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_simulate_from_mha_dicom_and_nifti_copies_gives_identical_scans(tmp_path, itk, sitk):
    from nfrecon.data.scan import load_scan

    k, j, i = np.meshgrid(np.arange(12), np.arange(10), np.arange(11), indexing="ij")
    hu = np.where((i - 5) ** 2 + (j - 4.5) ** 2 + (k - 5.5) ** 2 < 16, 400, -1000) + 2 * (i % 3)
    spacing, origin = (30.0, 35.0, 40.0), (-20.0, 30.0, 5.0)  # the small protocol's box is 512 mm wide
    itk.imwrite(_itk_image(itk, hu.astype(np.float32), spacing=spacing, origin=origin), str(tmp_path / "ct.mha"))
    _dicom_series(sitk, tmp_path / "dicom", hu, direction=np.eye(3), spacing=spacing, origin=origin)
    _nifti_of(tmp_path / "ct.nii.gz", hu.astype(np.float32), np.eye(3), spacing=spacing, origin=origin)
    scans = []
    for name in ("ct.mha", "dicom", "ct.nii.gz"):
        out = tmp_path / f"scan_{name.split('.')[0]}_{len(scans)}.h5"
        assert main(["simulate", "--volume", str(tmp_path / name), "--protocol", "small", "--size", "8",
                     "--views", "4", "--noiseless", "--backend", "torch", "--out", str(out)]) == 0
        scans.append(load_scan(out))
    for other in scans[1:]:
        np.testing.assert_array_equal(other.projections, scans[0].projections)
        np.testing.assert_array_equal(other.gt, scans[0].gt)
    assert scans[0].projections.max() > 1.0 and scans[0].gt.max() > 0.02


# ---------------------------------------------------------------------- MetaImage export
GEOM = VolumeGeometry((5, 6, 7), (2.5, 1.5, 0.75), center=(10.0, -4.0, 3.0))


def _mu(seed=0):
    return (np.random.default_rng(seed).random(GEOM.shape) * 0.05).astype(np.float32)


def test_metaimage_export_read_by_itk_sits_where_itk_puts_the_nifti_export(tmp_path, itk):
    mu = _mu()
    write_metaimage(tmp_path / "v.mha", mu, GEOM)
    write_nifti(tmp_path / "v.nii.gz", mu, GEOM)
    header = (tmp_path / "v.mha").read_bytes().split(b"ElementDataFile = LOCAL\n")[0].decode()
    assert header.startswith("ObjectType = Image\nNDims = 3\n") and "ElementType = MET_FLOAT" in header
    assert os.path.getsize(tmp_path / "v.mha") == len(header) + len("ElementDataFile = LOCAL\n") + mu.size * 4
    mha, nii = itk.imread(str(tmp_path / "v.mha")), itk.imread(str(tmp_path / "v.nii.gz"))
    np.testing.assert_array_equal(itk.array_from_image(mha), mu)  # ITK [k, j, i] = our [z, y, x]
    np.testing.assert_allclose(np.asarray(mha.GetSpacing()), GEOM.voxel_size[::-1])
    np.testing.assert_allclose(itk.array_from_matrix(mha.GetDirection()), np.diag([-1.0, -1.0, 1.0]))
    z, y, x = GEOM.index_to_world((0, 0, 0))
    np.testing.assert_allclose(np.asarray(mha.GetOrigin()), (-x, -y, z))  # LPS of voxel (0, 0, 0)
    assert dict(mha)["nfrecon"] == "units=mu"
    # ITK reads nfrecon's NIfTI (RAS) into the same LPS placement
    np.testing.assert_array_equal(itk.array_from_image(nii), itk.array_from_image(mha))
    np.testing.assert_allclose(np.asarray(nii.GetOrigin()), np.asarray(mha.GetOrigin()), atol=1e-6)
    np.testing.assert_allclose(np.asarray(nii.GetSpacing()), np.asarray(mha.GetSpacing()), rtol=1e-6)
    np.testing.assert_allclose(itk.array_from_matrix(nii.GetDirection()), itk.array_from_matrix(mha.GetDirection()),
                               atol=1e-6)
    for point in ((1, 2, 3), (6, 0, 4)):
        np.testing.assert_allclose(mha.TransformIndexToPhysicalPoint(point), nii.TransformIndexToPhysicalPoint(point),
                                   atol=1e-5)
    # and our reader gives both back as written, in mu
    for name in ("v.mha", "v.nii.gz"):
        vol, geom, tag = read_volume_tagged(tmp_path / name)
        np.testing.assert_array_equal(vol, mu)
        assert tag["units"] == "mu"
        assert geom.shape == GEOM.shape
        np.testing.assert_allclose(geom.center, GEOM.center, atol=1e-9)
        np.testing.assert_allclose(geom.voxel_size, GEOM.voxel_size, rtol=1e-7)


def test_metaimage_hu_export_is_int16_like_the_nifti_and_reads_back(tmp_path, itk, sitk):
    mu = _mu(1)
    write_metaimage(tmp_path / "hu.mha", mu, GEOM, hu=True, mu_water=0.02)
    write_nifti(tmp_path / "hu.nii.gz", mu, GEOM, hu=True, mu_water=0.02)
    assert sitk.ReadImage(str(tmp_path / "hu.mha")).GetPixelIDTypeAsString() == "16-bit signed integer"
    np.testing.assert_array_equal(itk.array_from_image(itk.imread(str(tmp_path / "hu.mha"))),
                                  np.asarray(nib.load(tmp_path / "hu.nii.gz").dataobj).transpose(2, 1, 0))
    _, _, tag = read_volume_tagged(tmp_path / "hu.mha")
    assert tag == {"units": "HU", "mu_water": 0.02, "mu_slope": 0.02, "format": "MetaImage"}
    np.testing.assert_array_equal(read_ct(tmp_path / "hu.mha")[0], read_ct(tmp_path / "hu.nii.gz")[0])
    np.testing.assert_allclose(read_mu_volume(tmp_path / "hu.mha")[0], mu, atol=0.02 / 1000)


def test_metaimage_export_bad_input_leaves_no_file(tmp_path):
    with pytest.raises(InputError, match="must end with .mha"):
        write_metaimage(tmp_path / "v.mhd", _mu(), GEOM)
    with pytest.raises(InputError, match="NaN"):
        write_metaimage(tmp_path / "v.mha", np.full(GEOM.shape, np.nan, np.float32), GEOM)
    with pytest.raises(InputError, match="shape"):
        write_metaimage(tmp_path / "v.mha", _mu()[1:], GEOM)
    assert os.listdir(tmp_path) == []
    with pytest.raises(InputError, match="--output.format"):
        OutputConfig(format="tiff")
    with pytest.raises(InputError, match="--format"):
        write_results(tmp_path / "run", _mu(), GEOM, format="tiff")
    assert os.listdir(tmp_path) == []


def test_results_in_one_format_replace_the_other(tmp_path):
    write_results(tmp_path, _mu(), GEOM)
    assert (tmp_path / "volume.nii.gz").is_file()
    write_results(tmp_path, _mu(2), GEOM, format="mha")
    assert sorted(os.listdir(tmp_path)) == ["metrics.json", "preview.png", "volume.mha"]


# ---------------------------------------------------------------------- command line
@pytest.fixture(scope="module")
def scan(tmp_path_factory):
    d = tmp_path_factory.mktemp("formats")
    assert main(["simulate", "--volume", "phantom", "--protocol", "small", "--size", "16", "--views", "10",
                 "--out", str(d / "scan.h5")]) == 0
    return d / "scan.h5"


def test_fdk_format_mha_then_eval_and_info_read_it(scan, tmp_path, cli, itk):
    code, out, _ = cli("fdk", "--scan", scan, "--out", tmp_path / "run", "--format", "mha", "--backend", "torch")
    assert code == 0 and "volume.mha" in out
    assert sorted(os.listdir(tmp_path / "run")) == ["config.yaml", "metrics.json", "preview.png", "volume.mha"]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    gt = scan.with_name("scan_gt.nii.gz")
    code, out, _ = cli("eval", "--recon", tmp_path / "run" / "volume.mha", "--gt", gt)
    assert code == 0
    assert json.loads(out)["psnr_db"] == pytest.approx(metrics["vs_ground_truth"]["psnr_db"], abs=1e-4)
    code, out, _ = cli("info", tmp_path / "run" / "volume.mha")
    assert code == 0 and "MetaImage volume" in out and "16x16x16" in out and "mu (1/mm)" in out
    # the same reconstruction as the NIfTI export, voxel for voxel
    assert cli("fdk", "--scan", scan, "--out", tmp_path / "nii", "--backend", "torch")[0] == 0
    a = read_mu_volume(tmp_path / "run" / "volume.mha", keep_position=True)
    b = read_mu_volume(tmp_path / "nii" / "volume.nii.gz", keep_position=True)
    np.testing.assert_array_equal(a[0], b[0])
    assert a[1] == b[1]


def test_info_summarises_a_dicom_series(tmp_path, cli, sitk):
    hu = np.full((3, 4, 5), -1000) + 2 * np.arange(5)
    folder = _dicom_series(sitk, tmp_path / "ct", hu, direction=np.eye(3))
    code, out, _ = cli("info", folder)
    assert code == 0 and "DICOM series, 3x4x5 voxels (z,y,x) of 2.5x0.9x0.8 mm" in out
    assert "values (HU)" in out and "min -1000" in out
    assert volume_sha256(folder) != volume_sha256(tmp_path / "ct" / "IM000.dcm")


def test_fit_output_format_mha_exports_volume_mha(scan, tmp_path, cli):
    code, _, _ = cli("fit", "--scan", scan, "--steps", 2, "--out", tmp_path / "fit", "--output.format", "mha",
                     "--output.no-tensorboard", "--output.no-progress", "--sampling.rays-per-step", 64,
                     "--sampling.n-samples", 8, "--device", "cpu")
    assert code == 0
    assert (tmp_path / "fit" / "volume.mha").is_file() and not (tmp_path / "fit" / "volume.nii.gz").exists()
    vol, geom, tag = read_volume_tagged(tmp_path / "fit" / "volume.mha")
    assert tag["units"] == "mu" and geom.shape == (16, 16, 16) and np.all(np.isfinite(vol))


def test_without_simpleitk_reading_fails_in_one_line_and_export_still_works(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "SimpleITK", None)  # import SimpleITK now raises ImportError
    write_metaimage(tmp_path / "v.mha", _mu(), GEOM)
    with pytest.raises(InputError, match=r"v.mha: reading this format needs SimpleITK; install it with pip install"):
        read_ct(tmp_path / "v.mha")
