"""export_series: NIfTI against dcm2niix, NPY + JSON, PNG montage, CSV, DICOM copies."""
from __future__ import annotations

import json
import math

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from dicomprep.dicomio import read_dataset
from dicomprep.errors import DicomprepError
from dicomprep.export.files import export_series
from test_arrays import assert_matches_reference


@pytest.fixture(scope="module")
def ge_fmri(testdata):
    root = testdata / "dcm_qa_nih"
    return sorted((root / "In" / "20180918GE" / "mr_0005").glob("*.dcm")), root / "Ref" / "DCM2NIIX_regression_test_5.nii"


@pytest.fixture(scope="module")
def ge_dwi(testdata):
    return sorted((testdata / "dcm_qa_ge" / "In" / "02_Ax_DWI_TENSOR_R3").iterdir())


def test_nifti_export_equals_dcm2niix(ge_fmri, tmp_path):
    paths, ref = ge_fmri
    written = export_series(paths, tmp_path / "fmri.nii.gz", "nifti")
    assert [p.name for p in written] == ["fmri.nii.gz", "fmri.json"]
    img = nib.load(written[0])
    assert img.get_sform(coded=True)[1] == 1
    assert_matches_reference(np.asarray(img.dataobj), img.affine, ref)
    assert not [p for p in tmp_path.iterdir() if ".part" in p.name]


def test_npy_export_with_sortby_and_dimension_json(ge_dwi, tmp_path):
    written = export_series(ge_dwi, tmp_path, "npy", sortby=["DiffusionGradientOrientation", "slice_position"])
    arr = np.load(written[0])
    meta = json.loads(written[1].read_text())
    assert arr.shape == tuple(meta["shape"]) == (7, 2, 256, 256)
    assert [d["label"] for d in meta["dims"]] == ["DiffusionGradientOrientation", "slice_position", "row", "column"]
    # Each stored slice is the pixel data of the file with that gradient and position.
    g, z = meta["dims"][0]["values"][3], meta["dims"][1]["values"][1]
    for p in ge_dwi:
        ds = read_dataset(p)
        grad = [float(ds[(0x0019, t)].value) for t in (0x10BB, 0x10BC, 0x10BD)]
        normal = np.cross(np.array(ds.ImageOrientationPatient[:3], float), np.array(ds.ImageOrientationPatient[3:], float))
        if np.allclose(grad, g, atol=1e-5) and abs(float(np.dot(ds.ImagePositionPatient, normal)) - z) < 1e-3:
            np.testing.assert_array_equal(arr[3, 1], ds.pixel_array)
            break
    else:
        pytest.fail("no file matched the grid cell")


def test_png_montage_uses_header_window(testdata, tmp_path):
    path = testdata / "pydicom-data" / "693_UNCR.dcm"
    ds = read_dataset(path)
    center = float(ds.WindowCenter[0] if ds["WindowCenter"].VM > 1 else ds.WindowCenter)
    width = float(ds.WindowWidth[0] if ds["WindowWidth"].VM > 1 else ds.WindowWidth)
    written = export_series([path], tmp_path / "ct.png", "png")
    png = np.asarray(Image.open(written[0]))
    assert png.shape == (512, 512) and png.dtype == np.uint8
    hu = ds.pixel_array.astype(float) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    # PS3.3 C.11.2.1.2.1, computed here independently of the exporter.
    expected = np.clip(((hu - (center - 0.5)) / (width - 1) + 0.5) * 255, 0, 255)
    assert np.abs(png.astype(float) - expected).max() <= 1.0


def test_png_montage_tiles_every_slice_with_given_window(ge_fmri, tmp_path):
    paths, _ = ge_fmri
    written = export_series(paths, tmp_path / "m.png", "png", window=(500, 1000))
    png = np.asarray(Image.open(written[0]))
    n = 15                                               # slices of the first volume
    side = math.ceil(math.sqrt(n))
    assert png.shape == (math.ceil(n / side) * 64, side * 64)


def test_csv_has_one_row_per_instance(ge_dwi, tmp_path):
    written = export_series(ge_dwi, tmp_path / "meta.csv", "csv")
    table = pd.read_csv(written[0])
    assert len(table) == len(ge_dwi)
    numbers = sorted(int(read_dataset(p, stop_before_pixels=True).InstanceNumber) for p in ge_dwi)
    assert sorted(table["InstanceNumber"]) == numbers
    assert "PixelData" not in table.columns


def test_dicom_copy_in_acquisition_order(ge_dwi, tmp_path):
    written = export_series(ge_dwi, tmp_path / "copy", "dicom")
    assert [p.name for p in written] == [f"{i:04d}.dcm" for i in range(1, 15)]
    numbers = [int(read_dataset(p, stop_before_pixels=True).InstanceNumber) for p in written]
    assert numbers == sorted(numbers)


def test_dicom_copy_deidentified(ge_fmri, tmp_path):
    paths, _ = ge_fmri
    original = read_dataset(paths[0], stop_before_pixels=True)
    written = export_series(paths[:3], tmp_path / "deid", "dicom", deidentify=True, config={},
                            secret=b"test-secret-0123456789abcdef")
    copy = read_dataset(written[0])
    assert str(copy.get("PatientName", "")) != str(original.PatientName)
    assert copy.get("InstitutionName") != original.InstitutionName
    assert copy.SOPInstanceUID != original.SOPInstanceUID
    np.testing.assert_array_equal(copy.pixel_array, read_dataset(paths[0]).pixel_array)


def test_unknown_format_is_a_clear_error(ge_dwi, tmp_path):
    with pytest.raises(DicomprepError, match="choose one of"):
        export_series(ge_dwi, tmp_path, "tiff")


def test_arrays_from_deidentified_copies_equal_the_originals(ge_dwi, tmp_path):
    from dicomprep.export.arrays import series_array

    copies = export_series(ge_dwi, tmp_path / "deid", "dicom", deidentify=True, config={},
                           secret=b"test-secret-0123456789abcdef")
    original, _, odims = series_array(ge_dwi)
    deidentified, _, ddims = series_array(copies)
    np.testing.assert_array_equal(deidentified, original)
    assert ddims[0].extra["DiffusionBValue"] == odims[0].extra["DiffusionBValue"]
