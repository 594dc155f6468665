"""series_array: sorted N-D arrays checked against dcm2niix reference outputs.

References are the upstream projects' own dcm2niix NIfTI / bval / bvec files in
the shared test data; dcm2niix may flip axes, so our volume is reoriented onto
the reference's voxel axes with nibabel's orientation tools before comparing
voxels and affines (same world position ⇒ same value).
"""
from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from dicomprep.dicomio import read_dataset
from dicomprep.errors import DicomprepError
from dicomprep.export.arrays import (RaggedSortError, array_affine,
                                     series_array)

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"


def reoriented_like(volume: np.ndarray, affine: np.ndarray, ref: nib.Nifti1Image) -> nib.Nifti1Image:
    """Our [column, row, slice, ...] volume with RAS ``affine`` reoriented onto
    the voxel axes of ``ref`` (pure axis flips/permutations, no resampling)."""
    ours = nib.Nifti1Image(volume, affine)
    transform = nib.orientations.ornt_transform(nib.orientations.io_orientation(affine),
                                                nib.orientations.io_orientation(ref.affine))
    return ours.as_reoriented(transform)


def assert_matches_reference(volume: np.ndarray, affine: np.ndarray, ref_path: Path) -> None:
    ref = nib.load(ref_path)
    mine = reoriented_like(volume, affine, ref)
    assert mine.shape == ref.shape
    np.testing.assert_allclose(mine.affine, ref.affine, atol=1e-3)
    np.testing.assert_array_equal(np.asarray(mine.dataobj), np.asarray(ref.dataobj.get_unscaled()))


def abs_gram(vectors) -> np.ndarray:
    """|v_i · v_j|: invariant to the frame (patient vs image axes) and sign
    conventions dcm2niix applies to bvec."""
    v = np.asarray(vectors, dtype=float)
    return np.abs(v @ v.T)


def load_text(path: Path) -> np.ndarray:
    if path.suffix == ".gz":
        with gzip.open(path, "rt") as fh:
            return np.loadtxt(fh)
    return np.loadtxt(path)


@pytest.mark.parametrize("series, ref", [
    ("01_Ax_DWI_TENSOR_R2", "Ax_DWI_TENSOR_R2_1"),
    ("02_Ax_DWI_TENSOR_R3", "Ax_DWI_TENSOR_R3_2"),
])
def test_ge_dwi_matches_dcm2niix_volume_order(testdata, series, ref):
    root = testdata / "dcm_qa_ge"
    arr, headers, dims = series_array(sorted((root / "In" / series).iterdir()))
    assert [d.label for d in dims] == ["volume", "slice_position"]
    assert_matches_reference(arr.T, array_affine(headers, dims), root / "Ref" / f"{ref}.nii")
    bval = load_text(root / "Ref" / f"{ref}.bval")
    np.testing.assert_allclose(dims[0].extra["DiffusionBValue"], bval)
    # Gradients come only from GE private tags (0019,10BB-10BD) here.
    bvec = load_text(root / "Ref" / f"{ref}.bvec").T
    np.testing.assert_allclose(abs_gram(dims[0].extra["DiffusionGradientOrientation"]), abs_gram(bvec), atol=1e-4)


def test_ge_fmri_4d_matches_reference(testdata):
    root = testdata / "dcm_qa_nih"
    paths = sorted((root / "In" / "20180918GE" / "mr_0004").glob("*.dcm"))
    arr, headers, dims = series_array(paths)
    assert arr.shape == (10, 15, 64, 64)
    assert_matches_reference(arr.T, array_affine(headers, dims), root / "Ref" / "DCM2NIIX_regression_test_4.nii")


def test_siemens_xa30_dwi_volume_order(testdata):
    root = testdata / "dcm_qa_xa30i"
    paths = sorted((root / "In" / "11001_DWI_dir80_AP").glob("*.dcm.gz"))
    arr, headers, dims = series_array(paths)
    assert_matches_reference(arr.T, array_affine(headers, dims), root / "Ref" / "11001_DWI_dir80_AP.nii.gz")
    np.testing.assert_allclose(dims[0].extra["DiffusionBValue"], load_text(root / "Ref" / "11001_DWI_dir80_AP.bval.gz"))
    weighted = np.asarray(dims[0].extra["DiffusionBValue"]) > 0
    ours = [g for g, w in zip(dims[0].extra["DiffusionGradientOrientation"], weighted) if w]
    ref = load_text(root / "Ref" / "11001_DWI_dir80_AP.bvec.gz").T[weighted]
    np.testing.assert_allclose(abs_gram(ours), abs_gram(ref), atol=1e-3)


def test_philips_scrambled_instances_sort_like_reference(testdata):
    root = testdata / "dcm_qa_philips_dwi"
    paths = [p for p in (root / "In" / "cl" / "DICOM").glob("*.gz")
             if read_dataset(p, stop_before_pixels=True).get("SOPClassUID") == MR_IMAGE_STORAGE]
    arr, headers, dims = series_array(paths)
    assert arr.shape == (17, 32, 112, 112)
    ref_bval = load_text(next((root / "Ref").glob("*.bval")))
    bvals = np.asarray(dims[0].extra["DiffusionBValue"])
    np.testing.assert_allclose(bvals, ref_bval, atol=1e-5)     # 0, 1000 ×3, 0.001, ... order
    weighted = bvals >= 1
    ours = [g for g, w in zip(dims[0].extra["DiffusionGradientOrientation"], weighted) if w]
    ref_bvec = load_text(next((root / "Ref").glob("*.bvec"))).T[weighted]
    np.testing.assert_allclose(abs_gram(ours), abs_gram(ref_bvec), atol=1e-3)
    # Every slice of a volume carries that volume's b-value (no cross-volume mixing).
    for v in range(arr.shape[0]):
        assert {round(h.get("DiffusionBValue"), 4) for h in headers[v]} == {round(bvals[v], 4)}


def test_enhanced_multiframe_fmri_matches_reference(testdata):
    root = testdata / "dcm_qa_enh"
    paths = sorted((root / "In" / "Siemens" / "XA10").glob("*.dcm"))
    arr, headers, dims = series_array(paths)
    assert_matches_reference(arr.T, array_affine(headers, dims), root / "Ref" / "Siemens_REST1_w_SMS_PF7-8_6.nii")


def test_enhanced_philips_fieldmap_volumes_and_per_frame_rescale(testdata):
    """One enhanced file, 64 frames: magnitude and B0 map at 32 positions. The
    B0 volume rescaled by its per-frame PixelValueTransformationSequence equals
    dcm2niix's fieldmap in Hz; the magnitude's stored values equal dcm2niix's
    (which scales magnitude with Philips' private floating-point slope instead)."""
    root = testdata / "dcm_qa_enh"
    path = root / "In" / "Philips" / "IM_0027_fMAP.dcm"
    raw, headers, dims = series_array([path])
    hz, _, _ = series_array([path], values="rescaled")
    affine = array_affine(headers, dims)
    assert raw.shape == (2, 32, 64, 64)
    assert [t[2] for t in dims[0].extra["ImageType"]] == ["M_FFE", "B0 MAP"]
    e1 = nib.load(root / "Ref" / "Philips_WIP_B0_NS_801_e1.nii")
    np.testing.assert_array_equal(np.asarray(reoriented_like(raw[0].T, affine, e1).dataobj),
                                  np.asarray(e1.dataobj.get_unscaled()))
    e2 = nib.load(root / "Ref" / "Philips_WIP_B0_NS_801_e2_fieldmaphz.nii")
    mine = reoriented_like(hz[1].T, affine, e2)
    np.testing.assert_allclose(mine.affine, e2.affine, atol=1e-3)
    np.testing.assert_allclose(np.asarray(mine.dataobj), e2.get_fdata(), atol=0.01)


def test_enhanced_dimension_indices_are_sort_keys(testdata):
    paths = sorted((testdata / "dcm_qa_enh" / "In" / "Siemens" / "XA10").glob("*.dcm"))
    default, dheaders, _ = series_array(paths)
    arr, headers, dims = series_array(paths, sortby=["TemporalPositionIndex", "InStackPositionNumber"])
    assert [d.label for d in dims] == ["TemporalPositionIndex", "InStackPositionNumber"]
    assert dims[0].values == [1, 2, 3, 4] and dims[1].values == [1, 2, 3, 4, 5, 6]
    # Same frames: each (time, in-stack position) frame equals the default frame at that position.
    for t in range(4):
        by_pos = {round(h.get("slice_position"), 3): i for i, h in enumerate(dheaders[t])}
        for s, h in enumerate(headers[t]):
            np.testing.assert_array_equal(arr[t, s], default[t, by_pos[round(h.get("slice_position"), 3)]])
    arr2, _, dims2 = series_array(paths, sortby=["DimensionIndexValues"])
    assert arr2.shape == (24, 64, 64) and len(dims2[0].values[0]) == 3


def test_ragged_sort_keys_raise_with_counts(testdata):
    paths = sorted((testdata / "dcm_qa_ge" / "In" / "01_Ax_DWI_TENSOR_R2").iterdir())
    with pytest.raises(RaggedSortError, match=r"2 DiffusionBValue x 2 slice_position = 4 cells for 14 frames"):
        series_array(paths, sortby=["DiffusionBValue", "slice_position"])
    arr, _, dims = series_array(paths, sortby=["DiffusionGradientOrientation", "slice_position"])
    assert arr.shape == (7, 2, 256, 256)


def test_every_transfer_syntax_gives_the_uncompressed_array(testdata):
    root = testdata / "dcm_qa_ts" / "In"
    reference, _, _ = series_array([root / "1.dcm"])
    syntaxes = set()
    for i in range(2, 10):
        arr, headers, _ = series_array([root / f"{i}.dcm"])
        syntaxes.add(str(headers.ravel()[0].dataset.file_meta.TransferSyntaxUID))
        np.testing.assert_array_equal(arr, reference, err_msg=f"{i}.dcm")
    assert len(syntaxes) == 6          # implicit LE, BE, RLE, JPEG 4.70, JPEG-LS 4.80, J2K 4.90


@pytest.mark.parametrize("number", range(1, 10))
def test_siemens_mosaic_transfer_syntaxes_match_reference(testdata, number):
    """Each re-encoding of the mosaic, cut into its 35 tiles, equals dcm2niix's volume."""
    root = testdata / "dcm_qa_ts"
    arr, headers, dims = series_array([root / "In" / f"{number}.dcm"])
    assert arr.shape == (35, 64, 64)
    assert_matches_reference(arr.T, array_affine(headers, dims), root / "Ref" / f"{number}.nii")


@pytest.mark.parametrize("series, ref", [("mr_0003", "EPI_PE=AP_3"), ("mr_0005", "EPI_PE=RL_5")])
def test_siemens_mosaic_series_4d_matches_reference(testdata, series, ref):
    root = testdata / "dcm_qa_nih"
    paths = sorted((root / "In" / "20180918Si" / series).glob("*.dcm"))
    arr, headers, dims = series_array(paths)
    assert arr.shape == (2, 5, 72, 72)
    assert_matches_reference(arr.T, array_affine(headers, dims), root / "Ref" / f"{ref}.nii")


def test_j2k_lossless_equals_uncompressed_twin(testdata):
    root = testdata / "pydicom-data"
    for comp, unc in (("MR2_J2KR.dcm", "MR2_UNCR.dcm"), ("693_J2KR.dcm", "693_UNCR.dcm")):
        np.testing.assert_array_equal(series_array([root / comp])[0], series_array([root / unc])[0])


def test_truncated_pixel_data_is_a_reason_not_a_crash(testdata, tmp_path):
    src = testdata / "dcm_qa_ts" / "In" / "1.dcm"
    bad = tmp_path / "truncated.dcm"
    bad.write_bytes(src.read_bytes()[: src.stat().st_size - 5000])
    with pytest.raises(DicomprepError) as info:
        series_array([bad])
    assert "truncated.dcm" in str(info.value)


def test_rescaled_values_apply_slope_intercept(testdata):
    path = testdata / "pydicom-data" / "693_UNCR.dcm"
    raw, headers, _ = series_array([path])
    hu, _, _ = series_array([path], values="rescaled")
    ds = headers.ravel()[0].dataset
    expected = raw.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    np.testing.assert_array_equal(hu.astype(np.float64), expected)


def test_gzip_wrapped_and_plain_copies_agree(testdata, tmp_path):
    src = sorted((testdata / "dcm_qa_ge" / "In" / "01_Ax_DWI_TENSOR_R2").iterdir())
    for p in src:
        with open(p, "rb") as fin, gzip.open(tmp_path / (p.name + ".gz"), "wb") as fout:
            shutil.copyfileobj(fin, fout)
    plain = series_array(src)[0]
    wrapped = series_array(sorted(tmp_path.glob("*.gz")))[0]
    np.testing.assert_array_equal(plain, wrapped)
