"""DICOM-SEG decoding and placement, checked in world coordinates against
independent references: dcmqi's own NRRD label maps, dcmqi's segimage2itkimage,
highdicom's frame-to-instance mapping and hand-computed PS3.3 C.7.6.2.1.1
pixel positions."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest

from dicomprep import geometry
from dicomprep.convert.seg import SegError, SegOptions, decode_segmentation, source_grid
from dicomprep.convert.seg_output import merge_masks, write_masks

ROOT = Path(__file__).resolve().parents[1]
SEGIMAGE2ITK = ROOT / ".venv" / "bin" / "segimage2itkimage"
RAS_TO_LPS = np.array([-1.0, -1.0, 1.0])


# --- helpers: world coordinates, computed without the code under test ----------

def nrrd_world(path: Path, label: int) -> set:
    """LPS world coordinates (rounded to 0.01 mm) of the voxels of ``label`` in a NRRD,
    from its own ``space directions`` / ``space origin``."""
    import nrrd

    data, hdr = nrrd.read(str(path))
    assert hdr["space"] in ("left-posterior-superior", "LPS")
    idx = np.argwhere(data == label)
    xyz = idx @ np.asarray(hdr["space directions"], float) + np.asarray(hdr["space origin"], float)
    return _rounded(xyz)


def nifti_world(path_or_img, threshold: float = 0) -> set:
    """LPS world coordinates of the non-zero voxels of a NIfTI (its own sform)."""
    import nibabel as nib

    img = nib.load(str(path_or_img)) if not hasattr(path_or_img, "affine") else path_or_img
    idx = np.argwhere(np.asarray(img.dataobj) > threshold)
    xyz = idx @ img.affine[:3, :3].T + img.affine[:3, 3]
    return _rounded(xyz * RAS_TO_LPS)


def mask_world(mask) -> set:
    idx = np.argwhere(mask.data > 0)
    return _rounded((idx @ mask.affine[:3, :3].T + mask.affine[:3, 3]) * RAS_TO_LPS)


def _rounded(xyz: np.ndarray) -> set:
    return set(map(tuple, np.round(np.asarray(xyz).reshape(-1, 3), 2) + 0.0))


def pixel_world_by_hand(ds, rows_cols: np.ndarray) -> np.ndarray:
    """PS3.3 C.7.6.2.1.1: P = S + X·Δi·c + Y·Δj·r (c = column index, r = row index), LPS."""
    s = np.array([float(v) for v in ds.ImagePositionPatient])
    iop = np.array([float(v) for v in ds.ImageOrientationPatient])
    dr, dc = (float(v) for v in ds.PixelSpacing)
    r, c = rows_cols[:, 0:1], rows_cols[:, 1:2]
    return s + iop[:3] * dc * c + iop[3:6] * dr * r


@pytest.fixture(scope="module")
def dcmqi(testdata) -> Path:
    return testdata / "dcmqi" / "segmentations"


def files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file())


# --- dcmqi: every mask equals dcmqi's label map at the same world positions ---

DCMQI_CASES = [
    ("liver.dcm", "ct-3slice", {1: ("liver_seg.nrrd", 1)}),
    ("partial_overlaps.dcm", "ct-3slice", {1: ("partial_overlaps-1.nrrd", 1), 4: ("partial_overlaps-1.nrrd", 4),
                                           5: ("partial_overlaps-1.nrrd", 5), 2: ("partial_overlaps-2.nrrd", 2),
                                           3: ("partial_overlaps-3.nrrd", 3)}),
    ("23x38x3/seg/label.seg", "23x38x3/image", {1: ("23x38x3/nrrd/label.nrrd", 1)}),
    ("24x38x3/seg/label.seg", "24x38x3/image", {1: ("24x38x3/nrrd/label.nrrd", 1)}),
    ("sparse-labelmap-noppv.dcm", "24x38x3/image", {1: ("sparse_labelmap_noppv_seg.nrrd", 1)}),
    ("sparse-labelmap-ppv5.dcm", "24x38x3/image", {1: ("sparse_labelmap_ppv5_seg.nrrd", 1)}),
]


@pytest.mark.parametrize("seg, source, refs", DCMQI_CASES, ids=[c[0] for c in DCMQI_CASES])
def test_dcmqi_masks_match_nrrd_in_world(dcmqi, seg, source, refs):
    masks = decode_segmentation(dcmqi / seg, files(dcmqi / source))
    assert sorted(m.segment.number for m in masks) == sorted(refs)
    n_src = len(files(dcmqi / source))
    for m in masks:
        ds0 = pydicom.dcmread(files(dcmqi / source)[0], stop_before_pixels=True)
        assert m.data.shape == (int(ds0.Columns), int(ds0.Rows), n_src)
        assert m.data.dtype == np.uint8 and set(np.unique(m.data)) <= {0, 1}
        assert m.placement == "uid" and m.n_frames_unplaced == 0
        nrrd_name, label = refs[m.segment.number]
        expected = nrrd_world(dcmqi / nrrd_name, label)
        assert len(expected) > 0
        assert mask_world(m) == expected, f"segment {m.segment.number} differs from {nrrd_name}"


def test_labelmap_on_enhanced_source_placed_by_position(dcmqi):
    """The LABELMAP SEG references the single-frame CT; on the same CT as a Legacy
    Converted Enhanced object (other UIDs) frames are placed by position."""
    masks = decode_segmentation(dcmqi / "sparse-labelmap-ppv5.dcm", [dcmqi / "24x38x3/multiframe/mf.dcm"])
    assert [m.placement for m in masks] == ["position"]
    assert mask_world(masks[0]) == nrrd_world(dcmqi / "sparse_labelmap_ppv5_seg.nrrd", 1)


def test_partial_overlaps_five_masks_with_expected_overlaps(dcmqi):
    masks = {m.segment.number: m for m in decode_segmentation(dcmqi / "partial_overlaps.dcm",
                                                             files(dcmqi / "ct-3slice"))}
    assert len(masks) == 5
    # Expected overlaps from dcmqi's label maps: world sets of each label.
    ref = {1: nrrd_world(dcmqi / "partial_overlaps-1.nrrd", 1), 4: nrrd_world(dcmqi / "partial_overlaps-1.nrrd", 4),
           5: nrrd_world(dcmqi / "partial_overlaps-1.nrrd", 5), 2: nrrd_world(dcmqi / "partial_overlaps-2.nrrd", 2),
           3: nrrd_world(dcmqi / "partial_overlaps-3.nrrd", 3)}
    n_overlapping_pairs = 0
    for a in range(1, 6):
        for b in range(a + 1, 6):
            ours = int(np.count_nonzero((masks[a].data > 0) & (masks[b].data > 0)))
            assert ours == len(ref[a] & ref[b]), (a, b)
            n_overlapping_pairs += ours > 0
    assert n_overlapping_pairs > 0          # the file is about overlaps
    # Segments 1, 4, 5 share one dcmqi label map, so they do not overlap each other.
    assert not ((masks[1].data & masks[4].data).any() or (masks[1].data & masks[5].data).any())


def test_segment_descriptions_codes_and_colour(dcmqi):
    (m,) = decode_segmentation(dcmqi / "liver.dcm", files(dcmqi / "ct-3slice"))
    ds = pydicom.dcmread(dcmqi / "liver.dcm", stop_before_pixels=True)
    item = ds.SegmentSequence[0]
    assert m.segment.label == item.SegmentLabel
    assert m.segment.type["value"] == item.SegmentedPropertyTypeCodeSequence[0].CodeValue
    assert m.segment.category["scheme"] == item.SegmentedPropertyCategoryCodeSequence[0].CodingSchemeDesignator
    # CIELab (PCS-scaled) -> sRGB: Slicer's liver colour is (221, 130, 101).
    assert m.segment.rgb is not None and np.allclose(m.segment.rgb, [221, 130, 101], atol=2)


# --- highdicom SEGs: binary, fractional, overlapping, single frame -----------------

HD_CASES = ["seg_image_ct_binary", "seg_image_ct_binary_fractional", "seg_image_ct_true_fractional",
            "seg_image_ct_binary_overlap", "seg_image_ct_binary_single_frame"]


def _hd_source(testdata: Path, name: str) -> list[Path]:
    if name.endswith("single_frame"):
        return [testdata / "highdicom/test_files/ct_image.dcm"]
    return files(testdata / "pydicom/dicomdirtests/77654033/CT2")


def _expected_world_by_instance(seg_path: Path, sources: list[Path], threshold: float) -> dict[int, set]:
    """Per segment: world positions of the pixels highdicom maps to each source
    instance (by its own UID lookup), placed with the source file's own
    ImagePositionPatient by hand."""
    import highdicom as hd

    seg = hd.seg.segread(str(seg_path))
    dss = [pydicom.dcmread(p, stop_before_pixels=True) for p in sources]
    arr = seg.get_pixels_by_source_instance([d.SOPInstanceUID for d in dss], assert_missing_frames_are_empty=True,
                                            ignore_spatial_locations=True)
    out = {}
    for s_i, number in enumerate(seg.segment_numbers):
        pts = [pixel_world_by_hand(d, np.argwhere(arr[i, :, :, s_i] >= threshold)) for i, d in enumerate(dss)]
        out[number] = _rounded(np.concatenate(pts)) if pts else set()
    return out


def _world_by_source_slice(mask, sources: list[Path]) -> set:
    """World positions of a mask's voxels, each slice placed at the IPP of the source
    file lying at that position (so an irregular stack is placed exactly)."""
    dss = sorted((pydicom.dcmread(p, stop_before_pixels=True) for p in sources),
                 key=lambda d: float(d.ImagePositionPatient[2]))
    pts = []
    for k, d in enumerate(dss):
        cr = np.argwhere(mask.data[:, :, k] > 0)          # [column, row]
        pts.append(pixel_world_by_hand(d, cr[:, ::-1]))
    return _rounded(np.concatenate(pts))


@pytest.mark.parametrize("name", HD_CASES)
def test_highdicom_segs_on_source(testdata, name):
    seg_path = testdata / "highdicom/test_files" / f"{name}.dcm"
    sources = _hd_source(testdata, name)
    masks = decode_segmentation(seg_path, sources, SegOptions(threshold=0.5))
    expected = _expected_world_by_instance(seg_path, sources, 0.5)
    assert sorted(m.segment.number for m in masks) == sorted(expected)
    ds0 = pydicom.dcmread(sources[0], stop_before_pixels=True)
    for m in masks:
        assert m.data.shape == (int(ds0.Columns), int(ds0.Rows), len(sources))
        assert m.data.dtype == np.uint8
        assert len(expected[m.segment.number]) > 0
        assert _world_by_source_slice(m, sources) == expected[m.segment.number]


def test_highdicom_overlap_segments_overlap(testdata):
    seg_path = testdata / "highdicom/test_files/seg_image_ct_binary_overlap.dcm"
    a, b = decode_segmentation(seg_path, _hd_source(testdata, "overlap"))
    assert ((a.data > 0) & (b.data > 0)).any()


def test_fractional_kept_as_float(testdata):
    seg_path = testdata / "highdicom/test_files/seg_image_ct_true_fractional.dcm"
    sources = _hd_source(testdata, "fractional")
    (m,) = decode_segmentation(seg_path, sources, SegOptions(fractional="float"))
    assert m.data.dtype == np.float32
    ds = pydicom.dcmread(seg_path)
    stored = ds.pixel_array.astype(float) / float(ds.MaximumFractionalValue)
    # Same multiset of fractions as the SEG's frames (every frame is placed once).
    assert np.isclose(m.data.sum(), stored.sum(), rtol=1e-5)
    assert 0 < m.data.max() <= 1 and len(np.unique(m.data)) > 2
    (t,) = decode_segmentation(seg_path, sources, SegOptions(threshold=0.9))
    assert t.n_voxels == int(np.count_nonzero(m.data >= 0.9))


# --- compressed liver SEGs (pydicom-data) ----------------------------------------

@pytest.mark.parametrize("name", ["liver_deflate", "liver_rle", "liver_j2k", "liver_expb"])
def test_compressed_liver_same_as_uncompressed(testdata, dcmqi, name):
    src = files(dcmqi / "ct-3slice")
    (ref,) = decode_segmentation(dcmqi / "liver.dcm", src)
    (m,) = decode_segmentation(testdata / "pydicom-data" / f"{name}.dcm", src)
    assert np.array_equal(m.data, ref.data)
    assert mask_world(m) == nrrd_world(dcmqi / "liver_seg.nrrd", 1)


# --- references after UID remapping -------------------------------------------------

def remap_uids(src: Path, dst: Path, secret: bytes) -> None:
    """Replace every UI value that is not a DICOM-defined UID (1.2.840.10008.*)
    with its pseudonym, as de-identification does."""
    from dicomprep.deid.pseudonym import uid_pseudonym

    ds = pydicom.dcmread(src)

    def fix(dataset, elem):
        if elem.VR == "UI" and elem.value:
            vals = elem.value if elem.VM > 1 else [elem.value]
            new = [v if str(v).startswith("1.2.840.10008.") else uid_pseudonym(secret, str(v)) for v in vals]
            elem.value = new if elem.VM > 1 else new[0]

    ds.walk(fix)
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    dst.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(dst, enforce_file_format=True)


@pytest.mark.parametrize("seg, source, nrrd_name", [
    ("liver.dcm", "ct-3slice", "liver_seg.nrrd"),
    ("sparse-labelmap-ppv5.dcm", "24x38x3/image", "sparse_labelmap_ppv5_seg.nrrd"),
])
def test_references_resolve_after_uid_remap(tmp_path, dcmqi, seg, source, nrrd_name):
    secret = b"test-secret-for-uid-remapping-0001"
    remap_uids(dcmqi / seg, tmp_path / "seg.dcm", secret)
    new_src = []
    for p in files(dcmqi / source):
        remap_uids(p, tmp_path / "src" / p.name, secret)
        new_src.append(tmp_path / "src" / p.name)
    assert pydicom.dcmread(tmp_path / "seg.dcm").SOPInstanceUID != pydicom.dcmread(dcmqi / seg).SOPInstanceUID
    (m,) = decode_segmentation(tmp_path / "seg.dcm", new_src)
    assert m.placement == "uid"
    assert mask_world(m) == nrrd_world(dcmqi / nrrd_name, 1)


def test_re_exported_source_placed_by_position(tmp_path, dcmqi):
    """Source UIDs changed but not the SEG's references: placed by IPP along the normal."""
    new_src = []
    for p in files(dcmqi / "ct-3slice"):
        remap_uids(p, tmp_path / p.name, b"another-secret-for-re-export-0002")
        new_src.append(tmp_path / p.name)
    (m,) = decode_segmentation(dcmqi / "liver.dcm", new_src)
    assert m.placement == "position"
    assert mask_world(m) == nrrd_world(dcmqi / "liver_seg.nrrd", 1)


def test_no_matching_source_is_an_error_with_reason(testdata, dcmqi):
    with pytest.raises(SegError, match="none of its 3 frames"):
        decode_segmentation(dcmqi / "liver.dcm", files(testdata / "pydicom/dicomdirtests/77654033/CT2"))


def test_partially_missing_source_reports_unplaced_frames(dcmqi):
    src = files(dcmqi / "ct-3slice")[:2]
    (m,) = decode_segmentation(dcmqi / "liver.dcm", src)
    assert m.data.shape[2] == 2 and m.n_frames_unplaced >= 1
    assert any("frame" in n for n in m.notes)


# --- writing ---------------------------------------------------------------------

def test_write_masks_nifti_labelmap_nrrd_merge(tmp_path, dcmqi):
    import nibabel as nib
    import nrrd

    src = files(dcmqi / "ct-3slice")
    masks = decode_segmentation(dcmqi / "partial_overlaps.dcm", src)
    merged, problems = merge_masks(masks, [{"new": "blues", "from": ["light_blue", "DARK_BLUE", "nothere"]}])
    assert problems and "nothere" in problems[0]
    before = [m.data.copy() for m in masks]
    written = write_masks(masks, tmp_path, series_id="s002", assessor_id="A1B2C3", labelmap=True,
                          fmt="nrrd", merged=merged)
    assert all(np.array_equal(b, m.data) for b, m in zip(before, masks))   # originals untouched
    names = {p.name for p in written.paths}
    assert "s002_seg-green_A1B2C3.nii.gz" in names and "s002_seg-blues_A1B2C3.nii.gz" in names
    assert "s002_seg-labelmap_A1B2C3.nii.gz" not in names            # segments overlap
    meta = json.loads((tmp_path / "s002_seg_A1B2C3.json").read_text())
    assert meta["labelmap"].startswith("not written")
    assert {s["label"] for s in meta["segments"]} >= {"GREEN", "blues"}
    # Each NIfTI: the CT grid's shape, uint8, same world voxels as dcmqi's NRRD.
    img = nib.load(tmp_path / "s002_seg-orange_A1B2C3.nii.gz")
    assert img.shape == (512, 512, 3) and img.get_data_dtype() == np.uint8
    assert nifti_world(img) == nrrd_world(dcmqi / "partial_overlaps-2.nrrd", 2)
    union = nrrd_world(dcmqi / "partial_overlaps-1.nrrd", 4) | nrrd_world(dcmqi / "partial_overlaps-1.nrrd", 5)
    assert nifti_world(tmp_path / "s002_seg-blues_A1B2C3.nii.gz") == union
    # Slicer .seg.nrrd: layers, names, colours; world positions via its own header.
    data, hdr = nrrd.read(str(tmp_path / "s002_seg_A1B2C3.seg.nrrd"))
    assert hdr["Segment1_Name"] == "ORANGE"
    layer, value = int(hdr["Segment1_Layer"]), int(hdr["Segment1_LabelValue"])
    lay = data[layer] if data.ndim == 4 else data
    dirs = np.asarray(hdr["space directions"], float)
    dirs = dirs[1:] if dirs.shape[0] == 4 else dirs
    xyz = np.argwhere(lay == value) @ dirs + np.asarray(hdr["space origin"], float)
    assert _rounded(xyz) == nrrd_world(dcmqi / "partial_overlaps-2.nrrd", 2)


def test_labelmap_written_when_no_overlap(tmp_path, dcmqi):
    import nibabel as nib

    masks = decode_segmentation(dcmqi / "liver.dcm", files(dcmqi / "ct-3slice"))
    write_masks(masks, tmp_path, series_id="s001", assessor_id="X", labelmap=True)
    lm = nib.load(tmp_path / "s001_seg-labelmap_X.nii.gz")
    assert nifti_world(lm) == nrrd_world(dcmqi / "liver_seg.nrrd", 1)


def test_source_grid_affine_matches_dcm2niix_convention(dcmqi):
    """Voxel (i, j, k) of the grid lands on the hand-computed LPS position of pixel
    (row j, column i) of the k-th slice (sorted by z)."""
    src = files(dcmqi / "ct-3slice")
    grid = source_grid(src)
    dss = sorted((pydicom.dcmread(p, stop_before_pixels=True) for p in src),
                 key=lambda d: float(d.ImagePositionPatient[2]))
    for k, d in enumerate(dss):
        for i, j in [(0, 0), (10, 300), (511, 7)]:
            lps = pixel_world_by_hand(d, np.array([[j, i]]))[0]
            ras = geometry.voxel_to_world(grid.affine, [i, j, k])[0]
            assert np.allclose(ras * RAS_TO_LPS, lps, atol=1e-3)


# --- dcmqi's own converter -----------------------------------------------------------

@pytest.mark.skipif(not SEGIMAGE2ITK.exists(), reason="dcmqi segimage2itkimage not installed")
@pytest.mark.parametrize("seg, source", [("partial_overlaps.dcm", "ct-3slice"),
                                         ("24x38x3/seg/label.seg", "24x38x3/image")])
def test_same_world_voxels_as_segimage2itkimage(tmp_path, dcmqi, seg, source):
    subprocess.run([str(SEGIMAGE2ITK), "--inputDICOM", str(dcmqi / seg), "--outputDirectory", str(tmp_path),
                    "--outputType", "nifti"], check=True, capture_output=True, timeout=120)
    masks = decode_segmentation(dcmqi / seg, files(dcmqi / source))
    for m in masks:
        theirs = nifti_world(tmp_path / f"{m.segment.number}.nii.gz")
        assert len(theirs) > 0
        assert mask_world(m) == theirs


# --- the per-unit job: inventories, selection, reason rows ----------------------------

def _xnat_session(tmp_path: Path, dcmqi: Path, remap: bytes | None):
    """An XNAT-style session: SCANS/2 = ct-3slice; ASSESSORS with liver and
    partial_overlaps SEGs (catalog XML naming the segmentor) and a SEG whose
    source is not in the session. Returns (session folder, instance rows)."""
    import pandas as pd

    sess = tmp_path / "in" / "proj" / "subj01" / "sess01"
    layout = {("SCANS/2/DICOM", p): ("ct", "k_ct", "s002") for p in files(dcmqi / "ct-3slice")}
    layout[("ASSESSORS/seg_liver_jdoe/SEG", dcmqi / "liver.dcm")] = ("seg", "k_seg1", "s300")
    layout[("ASSESSORS/seg_overlaps_jdoe/SEG", dcmqi / "partial_overlaps.dcm")] = ("seg", "k_seg2", "s301")
    layout[("ASSESSORS/seg_orphan/SEG", dcmqi / "23x38x3/seg/label.seg")] = ("seg", "k_seg3", "s302")
    rows = []
    for (folder, src), (kind, key, sid) in layout.items():
        dst = sess / folder / src.name
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, dst)
        used = dst
        if remap:
            used = tmp_path / "deid" / folder / src.name
            remap_uids(dst, used, remap)
        ds = pydicom.dcmread(dst, stop_before_pixels=True)
        rows.append({"path": str(dst), "relpath": str(dst.relative_to(tmp_path / "in")), "source_path": str(used),
                     "series_key": key, "series_id": sid, "kind": "seg" if kind == "seg" else "ct_axial",
                     "SOPClassUID": str(ds.SOPClassUID), "SeriesInstanceUID": str(ds.SeriesInstanceUID),
                     "SeriesNumber": int(ds.get("SeriesNumber", 0) or 0),
                     "SeriesDescription": str(ds.get("SeriesDescription", "")),
                     "orig_unit": "xnat/proj/subj01/sess01", "orig_subject": "subj01", "orig_scan": "sess01",
                     "PatientID": str(ds.get("PatientID", ""))})
    for name in ("seg_liver_jdoe", "seg_overlaps_jdoe"):
        (sess / "ASSESSORS" / name / "catalog.xml").write_text(
            '<cat:Catalog xmlns:cat="http://nrg.wustl.edu/catalog" ID="x"><cat:entries>'
            '<cat:entry URI="SEG/x.dcm" createdBy="jdoe_reader" createdTime="2021-03-04T05:06:07"/>'
            "</cat:entries></cat:Catalog>")
    return sess, pd.DataFrame(rows)


@pytest.mark.parametrize("remap", [None, b"session-secret-for-deid-test-0003"], ids=["original", "uid-remapped"])
def test_convert_unit_xnat_session(tmp_path, dcmqi, monkeypatch, remap):
    import pandas as pd
    from dicomprep.convert.seg_unit import convert_unit

    monkeypatch.setenv("DICOMPREP_SECRET", "unit-test-secret-0123456789")
    sess, inst = _xnat_session(tmp_path, dcmqi, remap)
    out = tmp_path / "out"
    unit = "xnat/proj/PABC/SXYZ"
    cfg = {"anonymisation": remap is not None, "seg": {"labelmap": True, "format": "nrrd",
                                                        "merge": [{"new": "blues", "from": ["LIGHT_BLUE", "DARK_BLUE"]}]}}
    from dicomprep.paths import ShareTree

    def run_unit():
        return convert_unit(unit=unit, config=cfg, instances=inst, share=ShareTree(out / "share"),
                            private_dir=out / "private/seg" / unit)

    m = run_unit()
    assert list(m.columns)[:5] == ["series_key", "series_id", "status", "reason", "outputs"]
    conv = m[m.status == "converted"]
    assert sorted(conv.segment_label) == sorted(["Liver", "GREEN", "ORANGE", "PURPLE", "LIGHT_BLUE",
                                                 "DARK_BLUE", "blues"])
    orphan = m[m.series_key == "k_seg3"]
    assert list(orphan.status) == ["failed"] and "source series not found" in orphan.reason.iloc[0]
    liver = conv[conv.segment_label == "Liver"].iloc[0]
    assert liver.source_series_id == "s002" and liver.n_voxels == len(nrrd_world(dcmqi / "liver_seg.nrrd", 1))
    liver_file = out / liver.outputs.split(";")[0]
    assert liver_file.name.startswith("s002_seg-liver_A") and liver_file.is_file()
    assert nifti_world(liver_file) == nrrd_world(dcmqi / "liver_seg.nrrd", 1)
    for rel in ";".join(m.outputs).split(";"):
        if rel:
            assert (out / rel).is_file() and rel.startswith("share/masks/" + unit)
    # Share inventory: pseudonyms only; private: the original names.
    share_dir, priv_dir = out / "share/tables/seg" / unit, out / "private/seg" / unit
    share_text = "".join(p.read_text() for p in share_dir.iterdir())
    share_text += "".join(p.read_text() for p in (out / "share/masks" / unit).glob("*.json"))
    share_text += " ".join(p.name for p in (out / "share").rglob("*"))
    for secret_value in ("jdoe", "seg_liver", "seg_orphan", "2021", "subj01", "sess01",
                         str(pydicom.dcmread(dcmqi / "liver.dcm", stop_before_pixels=True).SeriesInstanceUID),
                         str(pydicom.dcmread(dcmqi / "liver.dcm", stop_before_pixels=True).SOPInstanceUID)):
        assert secret_value not in share_text, secret_value
    assert "tracking_id" not in share_text and "description" not in share_text   # free text stays private
    segs = pd.read_csv(share_dir / "segmentations.csv")
    assert set(segs.segmentor_id.dropna()) and all(str(s).startswith("R") for s in segs.segmentor_id.dropna())
    priv = pd.read_csv(priv_dir / "segmentations.csv")
    # Catalog createdBy, else the SEG's ContentCreatorName (0070,0084) (the orphan has no catalog).
    orphan_creator = str(pydicom.dcmread(dcmqi / "23x38x3/seg/label.seg", stop_before_pixels=True).ContentCreatorName)
    assert set(priv.segmentor.dropna()) == {"jdoe_reader", orphan_creator}
    assert orphan_creator.split("^")[0] not in share_text
    assert set(priv.assessor_folder) == {"seg_liver_jdoe", "seg_overlaps_jdoe", "seg_orphan"}
    segments = pd.read_csv(share_dir / "segments.csv")
    assert {"segment_number", "segment_label", "type_code", "category_code", "rgb"} <= set(segments.columns)
    assert len(segments) == 1 + 5 + 1
    assert len(m[m.status == "skipped"]) == 0     # the merge rule does not concern the liver SEG
    # Re-run: the same outputs (deterministic names), not accumulated.
    before = sorted(p.name for p in (out / "share/masks" / unit).iterdir())
    run_unit()
    assert sorted(p.name for p in (out / "share/masks" / unit).iterdir()) == before


def test_selection_regex_and_table(tmp_path, dcmqi, monkeypatch):
    import pandas as pd
    from dicomprep.convert.seg_unit import convert_unit, read_selection_table

    monkeypatch.setenv("DICOMPREP_SECRET", "unit-test-secret-0123456789")
    _sess, inst = _xnat_session(tmp_path, dcmqi, None)
    exported = str(pydicom.dcmread(dcmqi / "liver.dcm", stop_before_pixels=True).SeriesDescription)
    table = tmp_path / "cases.xlsx"
    pd.DataFrame({"Session": ["sess01", "other"], "Seg 1": [exported, "x"], "Seg 2": ["Missing seg, also_missing", ""]}
                 ).to_excel(table, index=False)
    assert read_selection_table(table)["sess01"] == [exported, "Missing seg", "also_missing"]
    from dicomprep.paths import ShareTree

    share = ShareTree(tmp_path / "out" / "share")
    m = convert_unit(unit="u/v/w/x", config={"anonymisation": False, "seg": {"table": str(table)}},
                     instances=inst, share=share)
    assert set(m[m.status == "converted"].series_key) == {"k_seg1"}
    reasons = " ".join(m[m.status == "skipped"].reason)
    assert "Missing seg" in reasons and "also_missing" in reasons and "not listed in seg.table" in reasons
    m2 = convert_unit(unit="u/v/w/x",
                      config={"anonymisation": False, "seg": {"assessor": "overlaps", "segmentor": "^jdoe"}},
                      instances=inst, share=share)
    assert set(m2[m2.status == "converted"].series_key) == {"k_seg2"}
    assert "seg.assessor" in " ".join(m2[m2.series_key == "k_seg1"].reason)


def test_convert_unit_rule_reads_select_and_deid_tables(tmp_path, dcmqi, monkeypatch):
    """The Snakemake wrapper: instances from private/units/<unit>/, de-identified
    copies from private/deid/<unit>/manifest.parquet (remapped UIDs)."""
    import pandas as pd
    from dicomprep import stages
    from dicomprep.paths import layout

    monkeypatch.setenv("DICOMPREP_SECRET", "unit-test-secret-0123456789")
    _sess, inst = _xnat_session(tmp_path, dcmqi, b"session-secret-for-deid-test-0004")
    out, unit = tmp_path / "out", "xnat/proj/PABC/SXYZ"
    udir = out / "private/units" / unit
    udir.mkdir(parents=True)
    inst.drop(columns=["source_path"]).to_parquet(udir / "instances.parquet")
    inst.drop_duplicates("series_key").drop(columns=["source_path", "path"]).to_parquet(udir / "series.parquet")
    ddir = layout(out).stage_dir("deid", unit)
    ddir.mkdir(parents=True)
    pd.DataFrame({"path": inst.path, "series_key": inst.series_key, "series_id": inst.series_id,
                  "output_path": inst.source_path, "status": "written", "reason": ""}).to_parquet(ddir / "manifest.parquet")
    stage = layout(out).stage_dir("seg", unit)
    stages.decode_seg(source=str(ddir) + ".done", stage=str(stage), done=str(stage) + ".done", unit=unit, demo=False,
                      settings="", log=str(tmp_path / "seg.log"), config={"anonymisation": True, "seg": {}}, threads=1)
    m = pd.read_parquet(stage / "manifest.parquet")
    back = m[m.segmentation == "DICOM-SEG"]          # the masks back as DICOM-SEG: here no copies to refer to
    assert list(back.status) == ["failed"] and "source series folder" in back.reason.iloc[0]
    m = m[m.segmentation != "DICOM-SEG"]
    assert (m.status == "converted").sum() == 6 and (m.status == "failed").sum() == 1
    liver = m[m.segment_label == "Liver"].iloc[0]
    assert nifti_world(stage / liver.outputs.split(";")[0]) == nrrd_world(dcmqi / "liver_seg.nrrd", 1)


def test_source_dropped_by_deid_gets_a_reason_naming_it(tmp_path, dcmqi, monkeypatch):
    """The source series is in the unit but the de-identification dropped it (3 CT
    slices <= deid.drop_series.max_instances): the SEG's reason row says so and names
    the config key, instead of "source series not found"."""
    import pandas as pd
    from dicomprep import stages
    from dicomprep.paths import layout

    monkeypatch.setenv("DICOMPREP_SECRET", "unit-test-secret-0123456789")
    _sess, inst = _xnat_session(tmp_path, dcmqi, b"session-secret-for-deid-test-0005")
    out, unit = tmp_path / "out", "xnat/proj/PABC/SXYZ"
    udir = out / "private/units" / unit
    udir.mkdir(parents=True)
    inst.drop(columns=["source_path"]).to_parquet(udir / "instances.parquet")
    inst.drop_duplicates("series_key").drop(columns=["source_path", "path"]).to_parquet(udir / "series.parquet")
    ddir = layout(out).stage_dir("deid", unit)
    ddir.mkdir(parents=True)
    ct = inst.kind != "seg"
    pd.DataFrame({"path": inst.path, "series_key": inst.series_key, "series_id": inst.series_id,
                  "output_path": inst.source_path.where(~ct, ""), "status": ct.map({True: "dropped", False: "written"}),
                  "reason": ct.map({True: "too_few_instances: 3 single-frame instances <= 10", False: ""}),
                  }).to_parquet(ddir / "manifest.parquet")
    stage = layout(out).stage_dir("seg", unit)
    stages.decode_seg(source=str(ddir) + ".done", stage=str(stage), done=str(stage) + ".done", unit=unit, demo=False,
                      settings="", log=str(tmp_path / "seg.log"), config={"anonymisation": True, "seg": {}}, threads=1)
    m = pd.read_parquet(stage / "manifest.parquet").set_index("series_key")
    assert (m.status == "failed").all() and (m.status == "failed").sum() == 3
    for key in ("k_seg1", "k_seg2"):      # liver, partial_overlaps: their source s002 was dropped
        assert "s002" in m.loc[key, "reason"] and "too_few_instances" in m.loc[key, "reason"]
        assert "deid.drop_series.allow" in m.loc[key, "reason"]
    assert m.loc["k_seg3", "reason"].startswith("source series not found")   # 23x38x3: not in the unit

def test_seg_referencing_frames_of_enhanced_source(tmp_path, dcmqi):
    """A SEG (made here with highdicom from dcmqi's label map) referencing frames of
    the Legacy Converted Enhanced CT by (SOP Instance UID, Referenced Frame Number)."""
    import warnings

    import highdicom as hd
    import nrrd
    from pydicom.sr.codedict import codes

    mf = pydicom.dcmread(dcmqi / "24x38x3/multiframe/mf.dcm")
    label, hdr = nrrd.read(str(dcmqi / "24x38x3/nrrd/label.nrrd"))
    z0, dz = float(hdr["space origin"][2]), float(np.asarray(hdr["space directions"])[2, 2])
    arr = np.zeros((int(mf.NumberOfFrames), int(mf.Rows), int(mf.Columns)), np.uint8)
    for i, item in enumerate(mf.PerFrameFunctionalGroupsSequence):
        k = int(round((float(item.PlanePositionSequence[0].ImagePositionPatient[2]) - z0) / dz))
        arr[i] = (label[:, :, k] == 1).T
    desc = hd.seg.SegmentDescription(
        segment_number=1, segment_label="Liver", segmented_property_category=codes.SCT.Organ,
        segmented_property_type=codes.SCT.Liver, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        seg = hd.seg.Segmentation(
            source_images=[mf], pixel_array=arr, segmentation_type="BINARY", segment_descriptions=[desc],
            series_instance_uid=hd.UID(), series_number=5, sop_instance_uid=hd.UID(), instance_number=1,
            manufacturer="test", manufacturer_model_name="test", software_versions="1", device_serial_number="1")
    seg.save_as(tmp_path / "mf_seg.dcm")
    assert any(getattr(s, "ReferencedFrameNumber", None) for fr in seg.PerFrameFunctionalGroupsSequence
               for d in fr.DerivationImageSequence for s in d.SourceImageSequence)
    (m,) = decode_segmentation(tmp_path / "mf_seg.dcm", [dcmqi / "24x38x3/multiframe/mf.dcm"])
    assert m.placement == "uid" and m.data.shape == (24, 38, 3)
    assert mask_world(m) == nrrd_world(dcmqi / "24x38x3/nrrd/label.nrrd", 1)


def test_masks_are_not_written_on_an_unevenly_spaced_source(testdata, dcmqi):
    """A probe's finding: pydicom's CT2 slices lie at z -99.48, 103.02, 104.27 and 105.52;
    a NIfTI (first position + k x one step) would put mask slices 1 and 2 134 and 67 mm
    from their source slices. The unit gets a failed row saying why; an evenly spaced
    source (dcmqi's ct-3slice) is written as before."""
    from dicomprep.convert.seg_unit import uneven_source_reason

    grid = source_grid(files(testdata / "pydicom/dicomdirtests/77654033/CT2"))
    z = sorted(float(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2])
               for p in files(testdata / "pydicom/dicomdirtests/77654033/CT2"))
    step = (z[-1] - z[0]) / 3
    by_hand = max(abs(z[k] - (z[0] + k * step)) for k in range(4))
    assert by_hand > 100
    reason = uneven_source_reason(grid)
    assert reason.startswith("source series slices are unevenly spaced") and f"{by_hand:.3g} mm" in reason, reason
    assert uneven_source_reason(source_grid(files(dcmqi / "ct-3slice"))) == ""
