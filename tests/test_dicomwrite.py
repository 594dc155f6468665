"""Results back as DICOM: masks → SEG, CT volume → derived series (issue 17).

References: the dcmqi / highdicom SEGs and their source series (decoded by our
decoder, the NIfTI masks are the truth the written SEG must reproduce voxel
for voxel, through our decoder and through highdicom's), dcm2niix on the
derived CT series (must give back our NIfTI), dciodvfy (dicom3tools) and a
real Orthanc.
"""
from __future__ import annotations

import glob
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dicomwrite_helpers import dciodvfy_errors, new_errors, running_orthanc  # noqa: E402

from dicomprep.convert.seg import decode_segmentation, source_grid  # noqa: E402
from dicomprep.convert.seg_output import write_masks  # noqa: E402
from dicomprep.export.dicom_seg import MaskSpec, write_seg, write_seg_from_manifest  # noqa: E402
from dicomprep.export.dicom_series import ct_nifti_to_series, quantise, write_series  # noqa: E402

SECRET = b"test-secret-for-dicomwrite-0123456789"
DCMQI = "dcmqi/segmentations"


def _seg_case(testdata, tmp_path, seg, source_glob):
    src = sorted(glob.glob(str(testdata / source_glob)))
    masks = decode_segmentation(testdata / seg, src)
    written = write_masks(masks, tmp_path / "masks", series_id="S1", assessor_id="A1")
    return src, masks, written


def _highdicom_masks(seg_path, grid, n_segments):
    """The written SEG decoded by highdicom, on the source grid [i, j, k, segment]."""
    import highdicom as hd

    seg = hd.seg.segread(str(seg_path))
    uids = [k[0] for k in grid.keys]
    arr = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, combine_segments=False,
                                            segment_numbers=list(range(1, n_segments + 1)))
    return np.transpose(arr, (2, 1, 0, 3))    # [k, row, col, s] -> [col, row, k, s]


@pytest.mark.parametrize("seg,source_glob", [
    (f"{DCMQI}/partial_overlaps.dcm", f"{DCMQI}/ct-3slice/*.dcm"),       # 5 overlapping segments
    (f"{DCMQI}/liver.dcm", f"{DCMQI}/ct-3slice/*.dcm"),
    ("highdicom/test_files/seg_image_ct_binary_overlap.dcm", "pydicom/dicomdirtests/77654033/CT2/*"),
])
def test_seg_round_trip_equals_nifti_masks(testdata, tmp_path, seg, source_glob):
    src, masks, written = _seg_case(testdata, tmp_path, seg, source_glob)
    out = tmp_path / "seg" / "0001.dcm"
    res = write_seg_from_manifest(tmp_path / "masks" / "S1_seg_A1.json", src, out, secret=SECRET, name="test")
    # our decoder: every segment equals its NIfTI mask voxel for voxel, same world grid
    back = decode_segmentation(out, src)
    assert [b.segment.label for b in back] == [m.segment.label for m in masks]
    for m, b, f in zip(masks, back, [s["file"] for s in written.segments]):
        nii = nib.load(str(tmp_path / "masks" / f))
        assert np.array_equal(np.asarray(nii.dataobj) > 0, b.data > 0), m.segment.label
        assert np.allclose(nii.affine, b.affine, atol=1e-4)
    # highdicom: the same voxels
    grid = source_grid(src)
    hd_masks = _highdicom_masks(out, grid, len(masks))
    for s, m in enumerate(masks):
        assert np.array_equal(hd_masks[..., s] > 0, m.data > 0), m.segment.label
    # references: source series, instances, frame of reference, algorithm
    ds = pydicom.dcmread(out)
    src0 = pydicom.dcmread(src[0], stop_before_pixels=True)
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == src0.SeriesInstanceUID
    refd = {i.ReferencedSOPInstanceUID for i in ds.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert refd <= {k[0] for k in grid.keys} and refd
    assert ds.FrameOfReferenceUID == src0.FrameOfReferenceUID
    assert ds.StudyInstanceUID == src0.StudyInstanceUID and ds.PatientID == src0.PatientID
    assert ds.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0].AlgorithmName == "dicomprep"
    assert res.series_uid.startswith("2.25.") and res.series_uid != src0.SeriesInstanceUID
    # deterministic: the same input and secret give the same bytes
    again = write_seg_from_manifest(tmp_path / "masks" / "S1_seg_A1.json", src, tmp_path / "again.dcm",
                                    secret=SECRET, name="test")
    assert again.path.read_bytes() == out.read_bytes()
    # valid: no dciodvfy error the source does not have
    assert not new_errors(out, src[0])


def test_seg_resamples_a_mask_on_another_grid(testdata, tmp_path):
    """A mask written on a finer grid (each voxel split in 2×2×1) comes back on the source grid."""
    src, masks, _ = _seg_case(testdata, tmp_path, f"{DCMQI}/liver.dcm", f"{DCMQI}/ct-3slice/*.dcm")
    m = masks[0]
    fine = np.repeat(np.repeat(m.data, 2, axis=0), 2, axis=1)
    aff = m.affine.copy()
    aff[:3, :2] /= 2.0
    aff[:3, 3] = m.affine[:3, 3] - (m.affine[:3, 0] + m.affine[:3, 1]) / 4.0   # fine voxel centres
    res = write_seg([MaskSpec("liver", fine, aff)], src, tmp_path / "fine.dcm", secret=SECRET, name="fine")
    assert res.segments[0]["resampled"] and res.notes
    back = decode_segmentation(tmp_path / "fine.dcm", src)
    assert np.array_equal(back[0].data > 0, m.data > 0)


def _dcm2niix(series_dir: Path, out: Path) -> nib.Nifti1Image:
    from dicomprep.convert.dcm2niix import dcm2niix_binary

    out.mkdir()
    proc = subprocess.run([dcm2niix_binary(), "-z", "n", "-f", "x", "-o", str(out), str(series_dir)],
                          capture_output=True, text=True, timeout=300)
    niis = sorted(out.glob("*.nii"))
    assert proc.returncode == 0 and len(niis) == 1, proc.stdout + proc.stderr
    return nib.load(str(niis[0]))


def _same_in_world(ours: nib.Nifti1Image, theirs: nib.Nifti1Image) -> tuple[float, bool]:
    """Max affine difference and voxel equality after bringing ``theirs`` to our axis order
    (dcm2niix flips rows; a permutation/flip of axes changes no voxel's world position)."""
    from nibabel.orientations import io_orientation, ornt_transform

    re = theirs.as_reoriented(ornt_transform(io_orientation(theirs.affine), io_orientation(ours.affine)))
    return (float(np.abs(re.affine - ours.affine).max()),
            np.array_equal(np.asarray(re.dataobj), np.asarray(ours.dataobj)))


def test_ct_volume_as_series_dcm2niix_reproduces_nifti(testdata, tmp_path):
    """The GE head CT (gantry tilt 18.5°, irregular spacing), de-tilted and resampled by
    convert_ncct, written as a derived CT series: dcm2niix gives back our NIfTI."""
    from dicomprep.convert import ncct

    paths = [Path(p) for p in sorted(glob.glob(str(testdata / "dcm_qa_ct/In/GE/*.dcm")))]
    nii = tmp_path / "ge.nii.gz"
    res = ncct.convert_ct_series(paths, nii, {"spacing_mm": 2.0, "matrix": [96, 96]})
    assert res.status == "converted" and res.tilt_deg > 10
    written = ct_nifti_to_series(nii, paths[0], tmp_path / "series", secret=SECRET)
    ours = nib.load(str(nii))
    assert len(written.paths) == ours.shape[2]
    diff, equal = _same_in_world(ours, _dcm2niix(tmp_path / "series", tmp_path / "n"))
    assert equal and diff < 1e-4
    ds = pydicom.dcmread(written.paths[0])
    tpl = pydicom.dcmread(paths[0], stop_before_pixels=True)
    for kw in ("PatientID", "PatientName", "StudyInstanceUID", "FrameOfReferenceUID"):
        assert ds[kw].value == tpl[kw].value, kw
    assert ds.SeriesInstanceUID != tpl.SeriesInstanceUID and ds.RescaleType == "HU"
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2"
    # HU by hand: stored value × slope + intercept at one voxel equals the NIfTI's
    i, j, k = 40, 50, 3
    frame = pydicom.dcmread(written.paths[k]).pixel_array
    hu = frame[j, i] * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    assert hu == np.asarray(ours.dataobj)[i, j, k]
    for p in (written.paths[0], written.paths[-1]):
        assert not new_errors(p, paths[0])
    again = ct_nifti_to_series(nii, paths[0], tmp_path / "again", secret=SECRET)
    assert [p.read_bytes() for p in again.paths] == [p.read_bytes() for p in written.paths]


def test_float_volume_is_quantised_with_a_rescale():
    vol = np.linspace(-3.5, 1200.25, 1000, dtype=np.float32).reshape(10, 10, 10)
    stored, slope, intercept = quantise(vol)
    assert stored.dtype == np.int16
    assert np.abs(stored * slope + intercept - vol).max() <= slope
    ints = np.arange(-1024, 976, dtype=np.int32).reshape(20, 10, 10)
    s2, sl, ic = quantise(ints)
    assert (sl, ic) == (1.0, 0.0) and np.array_equal(s2, ints)


def test_orthanc_accepts_seg_and_ct_series(testdata, tmp_path):
    """Push a written SEG and a derived CT series to a real Orthanc; read them back over REST."""
    src, _, _ = _seg_case(testdata, tmp_path, f"{DCMQI}/liver.dcm", f"{DCMQI}/ct-3slice/*.dcm")
    seg = write_seg_from_manifest(tmp_path / "masks" / "S1_seg_A1.json", src, tmp_path / "seg.dcm",
                                  secret=SECRET, name="liver")
    ct = np.arange(24 * 20 * 3, dtype=np.int16).reshape(24, 20, 3) - 1000
    aff = np.diag([-0.7, -0.7, 2.5, 1.0])
    series = write_series(ct, aff, src[0], tmp_path / "ct", secret=SECRET, name="small")
    with running_orthanc(tmp_path / "orthanc") as pacs:
        for path in [seg.path, *series.paths]:
            answer = pacs.post("/instances", path.read_bytes())
            assert answer["Status"] == "Success", answer
            assert pacs.get(f"/instances/{answer['ID']}/file", raw=True) == path.read_bytes()
        found = {s["MainDicomTags"]["SeriesInstanceUID"]: s for s in
                 (pacs.get(f"/series/{i}") for i in pacs.get("/series"))}
        assert set(found) == {seg.series_uid, series.series_uid}
        assert len(found[series.series_uid]["Instances"]) == 3
        tags = pacs.get(f"/instances/{found[seg.series_uid]['Instances'][0]}/simplified-tags")
        assert tags["SOPClassUID"] == "1.2.840.10008.5.1.4.1.1.66.4" and tags["Modality"] == "SEG"
        studies = pacs.get("/studies")
        assert len(studies) == 1          # SEG and CT series share the source's study


def test_unit_functions_write_seg_and_ct_series_into_share_dicom(testdata, tmp_path):
    """The functions the workflow calls, on a share/ layout built by hand."""
    import pandas as pd

    from dicomprep.convert import ncct
    from dicomprep.export.dicom_seg import seg_for_unit
    from dicomprep.export.dicom_series import ct_series_for_unit

    unit = "g/s/P1/S1"
    share = tmp_path / "out" / "share"
    src_dir = share / "dicom" / unit / "SER1"
    src_dir.mkdir(parents=True)
    for n, p in enumerate(sorted((testdata / DCMQI / "ct-3slice").glob("*.dcm")), start=1):
        shutil.copy(p, src_dir / f"{n:04d}.dcm")
    src = sorted(src_dir.glob("*.dcm"))
    masks = decode_segmentation(testdata / DCMQI / "partial_overlaps.dcm", src)
    write_masks(masks, share / "masks" / unit, series_id="SER1", assessor_id="A1",
                json_extra={"name": "overlaps", "source_series_id": "SER1"})
    segs = seg_for_unit(share / "masks" / unit, share / "dicom" / unit, share / "dicom" / unit, secret=SECRET)
    assert [w.path.relative_to(share) for w in segs] == [Path("dicom") / unit / "SER1_seg-A1" / "0001.dcm"]
    assert len(decode_segmentation(segs[0].path, src)) == 5
    nii = tmp_path / "out" / "share" / "nifti" / unit / "P1_S1_SER1_ct.nii.gz"
    res = ncct.convert_ct_series(src, nii, {"spacing_mm": 2.0, "matrix": [64, 64], "min_slices": 3})
    assert res.status == "converted", res.reason
    manifest = pd.DataFrame([{"status": "converted", "series_id": "SER1",
                              "output_path": str(nii.relative_to(tmp_path / "out"))}])
    cts = ct_series_for_unit(manifest, tmp_path / "out", unit, secret=SECRET)
    assert cts[0].paths[0].parent == share / "dicom" / unit / "SER1_ct"
    assert pydicom.dcmread(cts[0].paths[0]).StudyInstanceUID == pydicom.dcmread(src[0]).StudyInstanceUID
    off = {"export": {"dicom": {"seg": False, "ct_series": False}}}
    assert ct_series_for_unit(manifest, tmp_path / "out", unit, secret=SECRET, config=off) == []
    assert seg_for_unit(share / "masks" / unit, share / "dicom" / unit, tmp_path / "x", secret=SECRET,
                        config=off) == []


DEID_SAMPLES = [
    "dcm_qa_nih/In/20180918GE/mr_0004/axial_epi_fmri_interleaved_i_to_s-00001.dcm",   # GE MR
    "dcm_qa_nih/In/20180918Si/mr_0003/epi_pe_ap-00001.dcm",                            # Siemens mosaic, CSA
    "dcm_qa_ct/In/GE/01.dcm",                                                          # CT, gantry tilt
    "dcm_qa_ct/In/Philips/S21570/S2010/I10",                                           # CT, no preamble name
    "dcm_qa_enh/In/Philips/IM_0027_fMAP.dcm",                                          # Enhanced MR
    "dcmqi/segmentations/liver.dcm",                                                   # SEG
    "highdicom/test_files/seg_image_ct_binary_overlap.dcm",                            # SEG, implicit VR
    "dcm_qa_ts/In/4.dcm",                                                              # RLE
]


@pytest.mark.parametrize("rel", DEID_SAMPLES)
def test_deidentified_copies_have_no_new_dciodvfy_errors(testdata, tmp_path, rel):
    from dicomprep.deid.instance import deidentify_file
    from dicomprep.deid.dataset import make_deidentifier

    src = testdata / rel
    if not src.is_file():
        pytest.skip(f"{rel} is not in the test data")
    deidentify_file(make_deidentifier({"deid": {}}, SECRET), src, tmp_path / "copy.dcm")
    assert not new_errors(tmp_path / "copy.dcm", src)


def test_seg_on_a_multiframe_source(testdata, tmp_path):
    """dcmqi 24x38x3: the label map SEG decoded on the classic images, written against the same
    CT as one Legacy Converted Enhanced CT (multiframe/mf.dcm), decodes back equal there."""
    base = testdata / DCMQI / "24x38x3"
    masks = decode_segmentation(base / "seg" / "label.seg", sorted((base / "image").glob("*.dcm")))
    specs = [MaskSpec(m.segment.label, m.data, m.affine) for m in masks]
    res = write_seg(specs, [base / "multiframe" / "mf.dcm"], tmp_path / "mf_seg.dcm", secret=SECRET, name="mf")
    assert not any(s["resampled"] for s in res.segments)
    back = decode_segmentation(tmp_path / "mf_seg.dcm", [base / "multiframe" / "mf.dcm"])
    for m, b in zip(masks, back):
        assert np.array_equal(m.data > 0, b.data > 0) and np.allclose(m.affine, b.affine, atol=1e-4)
    assert not new_errors(tmp_path / "mf_seg.dcm", base / "multiframe" / "mf.dcm")


@pytest.mark.parametrize("template", ["dcm_qa_ts/In/1.dcm", "dcm_qa_nih/In/20180918GE/mr_0004/*"])
def test_derived_mr_series_has_no_dciodvfy_errors(testdata, tmp_path, template):
    """A probe's finding: a derived MR series had ImageType without value 3 (required for
    MR, PS3.3 C.8.3.1.1.1) and Laterality (Type 2C) copied as the template had it: empty
    where the body part is named (GE), missing where it is not (Siemens)."""
    src = [p for p in sorted(glob.glob(str(testdata / template))) if not p.endswith(".txt")][0]
    tpl = pydicom.dcmread(src, stop_before_pixels=True)
    volume = np.arange(32 * 24 * 3, dtype=np.float32).reshape(32, 24, 3) / 7
    written = write_series(volume, np.diag([-2.0, -2.0, 3.0, 1.0]), tpl, tmp_path / "mr", secret=SECRET, name="t")
    ds = pydicom.dcmread(written.paths[0])
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.4" and len(ds.ImageType) == 3
    errors = dciodvfy_errors(written.paths[0])
    assert not {e for e in errors if "ImageType" in e or "Laterality" in e}, errors
    assert not new_errors(written.paths[0], src)
