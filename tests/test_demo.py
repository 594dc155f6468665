"""The synthetic demo cohort (dicomprep.demo): deterministic, readable, and
checked against independent references — dcm2niix for the diffusion series,
highdicom for the SEG references, world coordinates computed here by hand
from ImagePositionPatient / ImageOrientationPatient / PixelSpacing for the
CT sphere, and the raw bytes of the files for the planted identifiers."""
from __future__ import annotations

import hashlib
import os
import re
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pydicom
import pytest

from dicomprep.demo import MANIFEST_NAME, make_demo
from dicomprep.stages import demo_input
from dicomprep.errors import DicomprepError

ROOT = Path(__file__).resolve().parents[1]
DCM2NIIX = ROOT / ".venv" / "bin" / "dcm2niix"
NON_DICOM = {".json", ".xml", ".txt"}


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "cohort"
    manifest = make_demo(out)
    return out, manifest


def dicom_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*")
                  if p.is_file() and p.suffix.lower() not in NON_DICOM)


def read_series(root: Path, series_uid: str, files: list[str]) -> list[pydicom.Dataset]:
    out = [pydicom.dcmread(root / f) for f in files]
    assert all(ds.SeriesInstanceUID == series_uid for ds in out)
    return out


# --------------------------------------------------------------------------
# Determinism, readability, size
# --------------------------------------------------------------------------

def test_two_builds_are_byte_identical(demo, tmp_path):
    out, _ = demo
    again = tmp_path / "again"
    make_demo(again)
    first = {p.relative_to(out): p for p in out.rglob("*") if p.is_file()}
    second = {p.relative_to(again): p for p in again.rglob("*") if p.is_file()}
    assert sorted(first) == sorted(second)
    differing = [str(rel) for rel, p in first.items() if p.read_bytes() != second[rel].read_bytes()]
    assert differing == []


def test_other_seed_changes_uids(demo, tmp_path):
    _, a = demo
    b = make_demo(tmp_path / "b", seed=1)
    assert b["seed"] == 1 and a["seed"] == 0
    assert a["cdti"][0]["series_uid"] != b["cdti"][0]["series_uid"]
    assert a["xnat"]["scans"][1]["series_uid"] != b["xnat"]["scans"][1]["series_uid"]


def test_every_file_reads_with_pydicom_and_decodes(demo):
    out, _ = demo
    files = dicom_files(out)
    assert len(files) > 300
    sop_uids = set()
    for path in files:
        ds = pydicom.dcmread(path)  # strict: PS3.10 preamble + DICM required
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert ds.pixel_array.size > 0
        sop_uids.add(ds.SOPInstanceUID)
    assert len(sop_uids) == len(files), "SOPInstanceUIDs must be unique"
    overlay = pydicom.dcmread(next(p for p in files if p.name == "IM00001.dcm" and "HEAD_AX" in str(p)))
    assert overlay.overlay_array(0x6000).any() and "ROE" in overlay[0x6000, 0x0022].value
    total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    assert total < 30 * 1024 * 1024


def test_layout_matches_the_documented_folders(demo):
    out, m = demo
    for s in m["cdti"]:
        parts = Path(s["dir"]).parts
        assert parts[1] == "dicom" and parts[2] in ("SE", "STEAM") and len(parts) == 5
    assert {s["sequence"] for s in m["cdti"]} == {"SE", "STEAM"}
    assert {s["group"] for s in m["cdti"]} == {"cdti_siteA", "cdti_siteB"}
    assert len(m["ct"]) == 2 and all(Path(e["dir"]).parts[0] == "ct_exams" for e in m["ct"])
    x = m["xnat"]
    base = out / x["dir"]
    assert (base / "SCANS" / "2" / "DICOM").is_dir()
    assert len(list((base / "ASSESSORS").glob("*/SEG/*.dcm"))) == 3


# --------------------------------------------------------------------------
# (a) cardiac diffusion
# --------------------------------------------------------------------------

def test_diffusion_attributes_in_headers(demo):
    out, m = demo
    for s in m["cdti"]:
        for img in s["images"]:
            ds = pydicom.dcmread(out / img["file"], stop_before_pixels=True)
            assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.4"
            assert ds.Manufacturer == "SIEMENS"
            assert float(ds[0x0018, 0x9087].value) == img["b_value"]
            if img["b_value"]:
                g = ds.DiffusionGradientDirectionSequence[0][0x0018, 0x9089].value
                np.testing.assert_allclose(g, img["direction_lps"])
                assert ds.DiffusionDirectionality == "DIRECTIONAL"
            else:
                assert ds.DiffusionDirectionality == "NONE"
            nominal = int(ds.NominalInterval)
            if s["rr_source"] == "NominalInterval":
                assert 850 <= nominal <= 1100 and nominal == img["rr_ms"]
            else:
                assert nominal == 0
            if s["sequence"] == "STEAM":
                assert "steam" in ds.SequenceName.lower()
                numbers = [float(v) for v in re.findall(r"\d+(?:\.\d+)?", ds.ImageComments.split("b0", 1)[1])]
                assert numbers[0] == s["b0_real"]
                assert (numbers[1] if len(numbers) > 1 else None) == s["assumed_rr_ms"]
    comments = {s["image_comments"] for s in m["cdti"] if s["sequence"] == "STEAM"}
    assert any(re.fullmatch(r"b0 = \d+ RR = \d+", c) for c in comments)
    assert any(re.fullmatch(r"b0 = \d+", c) for c in comments)
    assert any(s["rr_source"] == "acquisition_time" for s in m["cdti"])


def _seconds(tm: str) -> float:
    return int(tm[:2]) * 3600 + int(tm[2:4]) * 60 + float(tm[4:])


def test_acquisition_times_follow_the_rr_intervals(demo):
    """STEAM spans two heartbeats: within a breath-hold, consecutive
    AcquisitionTimes are 2 x RR apart; that is what the RR fallback reads."""
    out, m = demo
    for s in (s for s in m["cdti"] if s["sequence"] == "STEAM"):
        headers = sorted((pydicom.dcmread(out / i["file"], stop_before_pixels=True) for i in s["images"]),
                         key=lambda ds: int(ds.InstanceNumber))
        times = np.array([_seconds(ds.AcquisitionTime) for ds in headers])
        rr = np.array([i["rr_ms"] for i in sorted(s["images"], key=lambda i: i["instance"])])
        gaps_ms = np.diff(times) * 1000
        within = np.arange(len(gaps_ms)) % 3 != 2  # three images per breath-hold
        np.testing.assert_allclose(gaps_ms[within], 2 * rr[:-1][within], atol=1.5)
        assert np.all(gaps_ms[~within] > 10_000)  # breath-hold pauses are outliers
        assert rr.std() > 10, "RR must vary from beat to beat"


@pytest.mark.skipif(not DCM2NIIX.exists(), reason=f"dcm2niix not found at {DCM2NIIX}")
def test_dcm2niix_makes_one_4d_volume_per_diffusion_series(demo, tmp_path):
    import nibabel as nib

    out, m = demo
    for k, s in enumerate(m["cdti"]):
        dest = tmp_path / f"s{k}"
        dest.mkdir()
        res = subprocess.run([str(DCM2NIIX), "-z", "n", "-f", "%s", "-o", str(dest), str(out / s["dir"])],
                             capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, res.stdout + res.stderr
        number, derived = s["series_number"], s["derived_series"]
        expected = {f"{number}.nii"} | ({f"{derived['series_number']}.nii"} if derived else set())
        assert {p.name for p in dest.glob("*.nii")} == expected, res.stdout
        img = nib.load(dest / f"{number}.nii")
        assert img.shape == (32, 32, s["n_slices"], s["n_volumes"])
        if derived:  # the scanner's ADC map is its own 3-D series, not a volume of the DWI
            assert nib.load(dest / f"{derived['series_number']}.nii").shape == (32, 32, s["n_slices"])
            assert not (dest / f"{derived['series_number']}.bval").exists()
        bval = np.loadtxt(dest / f"{number}.bval")
        # Expected b-values straight from the DICOM headers, in InstanceNumber order.
        headers = sorted((pydicom.dcmread(out / i["file"], stop_before_pixels=True) for i in s["images"]),
                         key=lambda ds: int(ds.InstanceNumber))
        per_volume = [float(ds.DiffusionBValue) for ds in headers[::s["n_slices"]]]
        np.testing.assert_array_equal(bval, per_volume)
        np.testing.assert_array_equal(bval, s["bvals"])
        # bvec: the LPS gradient projected on the image axes (dcm2niix flips signs
        # by its own convention, so compare magnitudes).
        bvec = np.loadtxt(dest / f"{number}.bvec")
        iop = np.array(headers[0].ImageOrientationPatient, float)
        axes = np.stack([iop[:3], iop[3:], np.cross(iop[:3], iop[3:])])
        expected = np.abs(np.array(s["bvecs_lps"]) @ axes.T).T
        np.testing.assert_allclose(np.abs(bvec), expected, atol=1e-3)


# --------------------------------------------------------------------------
# (b) CT exams
# --------------------------------------------------------------------------

def _ct_series_entries(m):
    for exam in m["ct"]:
        for s in exam["series"]:
            if s["kind"] == "ct_axial":
                yield s
    for s in m["xnat"]["scans"]:
        if s["kind"] == "ct_axial":
            yield s


def _world_points(ds) -> np.ndarray:
    """LPS of every pixel centre, by hand (PS3.3 C.7.6.2.1.1)."""
    ipp = np.array(ds.ImagePositionPatient, float)
    iop = np.array(ds.ImageOrientationPatient, float)
    dr, dc = (float(v) for v in ds.PixelSpacing)  # between rows, between columns
    r, c = np.mgrid[0:int(ds.Rows), 0:int(ds.Columns)]
    return ipp + c[..., None] * dc * iop[:3] + r[..., None] * dr * iop[3:]


def test_ct_sphere_lands_at_its_recorded_world_position(demo):
    out, m = demo
    checked = 0
    for s in _ct_series_entries(m):
        datasets = [pydicom.dcmread(out / sl["file"]) for sl in s["slices"]]
        pts, hu = [], []
        for ds in datasets:
            assert float(ds.RescaleIntercept) == -1024 and float(ds.RescaleSlope) == 1
            values = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
            bright = values > 1500
            pts.append(_world_points(ds)[bright])
            hu.append(values)
        pts = np.concatenate(pts)
        assert len(pts) > 10
        centre = np.array(s["sphere"]["centre_lps"])
        voxel = max(float(datasets[0].PixelSpacing[0]), s["table_step_mm"])
        assert np.linalg.norm(pts.mean(axis=0) - centre) < voxel / 2
        assert np.all(np.linalg.norm(pts - centre, axis=1) <= s["sphere"]["radius_mm"] + 1e-6)
        allhu = np.concatenate([h.ravel() for h in hu])
        assert allhu.min() == -1000  # air outside
        assert np.any(np.abs(allhu - 1000) < 15)  # skull
        checked += 1
    assert checked == 4


def test_ct_instance_numbers_are_not_in_geometric_order(demo):
    out, m = demo
    for s in _ct_series_entries(m):
        headers = [pydicom.dcmread(out / sl["file"], stop_before_pixels=True) for sl in s["slices"]]
        iop = np.array(headers[0].ImageOrientationPatient, float)
        normal = np.cross(iop[:3], iop[3:])
        by_position = np.argsort([np.dot(np.array(h.ImagePositionPatient, float), normal) for h in headers])
        by_instance = np.argsort([int(h.InstanceNumber) for h in headers])
        assert not np.array_equal(by_position, by_instance)
        assert not np.array_equal(by_position, by_instance[::-1])


def test_tilted_and_contrast_series(demo):
    out, m = demo
    exam2 = {s.get("key"): s for s in m["ct"][1]["series"]}
    tilt = exam2["garcia_tilt"]
    headers = sorted((pydicom.dcmread(out / sl["file"], stop_before_pixels=True) for sl in tilt["slices"]),
                     key=lambda h: float(h.ImagePositionPatient[2]))
    assert float(headers[0].GantryDetectorTilt) == 12.0
    iop = np.array(headers[0].ImageOrientationPatient, float)
    normal = np.cross(iop[:3], iop[3:])
    span = np.array(headers[-1].ImagePositionPatient, float) - np.array(headers[0].ImagePositionPatient, float)
    angle = np.degrees(np.arccos(abs(span @ normal) / np.linalg.norm(span)))
    assert abs(angle - 12.0) < 0.05
    contrast = exam2["garcia_contrast"]
    h = pydicom.dcmread(out / contrast["slices"][0]["file"], stop_before_pixels=True)
    assert h.ContrastBolusAgent
    assert "ContrastBolusAgent" not in headers[0]


def test_scouts_and_dose_reports(demo):
    out, m = demo
    scouts = [s for e in m["ct"] for s in e["series"] if s["kind"] == "localizer"]
    doses = [s for e in m["ct"] for s in e["series"] if s["kind"] == "dose_report"]
    assert len(scouts) == 2 and len(doses) == 2
    for s in scouts:
        ds = pydicom.dcmread(out / s["file"])
        assert list(ds.ImageType) == ["ORIGINAL", "PRIMARY", "LOCALIZER"]
        iop = np.array(ds.ImageOrientationPatient, float)
        assert np.argmax(np.abs(np.cross(iop[:3], iop[3:]))) == 1  # coronal
    for s in doses:
        ds = pydicom.dcmread(out / s["file"])
        assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"
        assert ds.ImageType[:2] == ["DERIVED", "SECONDARY"]
        assert ds.SeriesDescription == "Dose Report" and ds.BurnedInAnnotation == "YES"
        px = ds.pixel_array
        assert px.shape[-1] == 3 and (px > 128).mean() > 0.02  # burned-in text strokes


# --------------------------------------------------------------------------
# (c) XNAT session and SEG assessors
# --------------------------------------------------------------------------

def test_seg_references_resolve_to_the_xnat_ct(demo):
    import highdicom as hd

    out, m = demo
    x = m["xnat"]
    ct_dir = out / x["dir"] / "SCANS" / "2" / "DICOM"
    ct = {ds.SOPInstanceUID: ds for ds in (pydicom.dcmread(p) for p in ct_dir.glob("*.dcm"))}
    assert len(ct) == 12  # more than deid's default 'drop series with <= 10 instances'
    series_uid = next(iter(ct.values())).SeriesInstanceUID
    segs = sorted((out / x["dir"] / "ASSESSORS").glob("*/SEG/*.dcm"))
    assert len(segs) == 3
    creators = set()
    for path in segs:
        seg = hd.seg.segread(path)
        assert seg.SegmentationType == "BINARY"
        refs = seg.get_source_image_uids()
        assert {r[1] for r in refs} == {series_uid}
        assert {r[2] for r in refs} == set(ct)
        creators.add(str(seg.ContentCreatorName))
        for number in seg.segment_numbers:
            desc = seg.get_segment_description(number)
            label = desc.SegmentLabel
            assert len(desc.RecommendedDisplayCIELabValue) == 3
            assert desc.SegmentedPropertyCategoryCodeSequence[0].CodingSchemeDesignator == "SCT"
            # Decode and place each frame on its source slice by hand.
            pts = []
            for sop_uid, src in ct.items():
                frame = seg.get_pixels_by_source_instance(
                    [sop_uid], segment_numbers=[number],
                    assert_missing_frames_are_empty=True)[0, ..., 0]
                pts.append(_world_points(src)[frame > 0])
            pts = np.concatenate(pts)
            assert len(pts) > 0
            if label == "Lesion":
                centre = np.array(x["scans"][1]["sphere"]["centre_lps"])
                assert np.linalg.norm(pts.mean(axis=0) - centre) < 0.8
    assert len(creators) == 2


def test_seg_head_and_lesion_overlap(demo):
    import highdicom as hd

    out, m = demo
    path = out / m["xnat"]["assessors"][0]["segmentations"][0]["file"]
    seg = hd.seg.segread(path)
    assert [seg.get_segment_description(n).SegmentLabel for n in seg.segment_numbers] == ["Head", "Lesion"]
    vol = seg.get_volume(combine_segments=False)
    arr = vol.array
    head, lesion = arr[..., 0] > 0, arr[..., 1] > 0
    assert lesion.sum() > 0 and (head & lesion).sum() > 0


def test_assessor_catalogs_carry_creator_and_time(demo):
    out, m = demo
    ns = {"cat": "http://nrg.wustl.edu/catalog"}
    catalogs = sorted((out / m["xnat"]["dir"] / "ASSESSORS").glob("*/SEG/*_catalog.xml"))
    assert len(catalogs) == 2
    users = set()
    for cat in catalogs:
        root = ET.parse(cat).getroot()
        assert root.tag == "{http://nrg.wustl.edu/catalog}Catalog"
        entries = root.findall("cat:entries/cat:entry", ns)
        assert entries
        for e in entries:
            assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+[+-]\d\d:\d\d", e.get("createdTime"))
            users.add(e.get("createdBy"))
            target = cat.parent / e.get("URI")
            assert target.is_file()
            assert hashlib.md5(target.read_bytes()).hexdigest() == e.get("digest")
    assert len(users) == 2


# --------------------------------------------------------------------------
# (d) planted identifiers
# --------------------------------------------------------------------------

def _encodings(value: str) -> list[bytes]:
    out = [value.encode("utf-8")]
    try:
        out.append(value.encode("latin-1"))
    except UnicodeEncodeError:
        pass
    return out


def test_every_planted_value_is_really_in_the_cohort(demo):
    out, m = demo
    blobs = [p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != MANIFEST_NAME]
    components = {part for p in out.rglob("*") for part in p.relative_to(out).parts}
    missing = []
    for entry in m["planted"]:
        v = entry["value"]
        if entry["kind"] == "folder":
            if v not in components:
                missing.append(entry)
            continue
        if not any(enc in blob for blob in blobs for enc in _encodings(v)):
            missing.append(entry)
    assert missing == []
    kinds = {e["kind"] for e in m["planted"]}
    assert {"name", "staff", "id", "date", "time", "uid", "institution", "address", "station",
            "serial", "accession", "folder"} <= kinds
    assert len(m["planted"]) >= 40


def test_identifiers_sit_in_the_hard_places(demo):
    out, m = demo
    charsets = {}
    for path in dicom_files(out):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        name = str(ds.PatientName)
        charsets.setdefault(ds.get("SpecificCharacterSet", ""), set()).add(name)
        if ds.Modality == "SEG":  # highdicom copies the patient/study modules only
            assert ds.PatientID and ds.PatientBirthDate in ds.StudyInstanceUID
            continue
        # Depth 2: a name inside a code item inside a sequence item.
        deep = ds.PhysiciansOfRecordIdentificationSequence[0].PersonIdentificationCodeSequence[0]
        assert name.split("^")[0] in deep.CodeMeaning.upper().replace(" ", "^")
        # Private block (creator-keyed) with the name, private sequence with the ID.
        block = ds.private_block(0x0033, "DEMO HOSPITAL PACS 1.0")
        assert str(block[0x10].value) == name
        item = block[0x20].value[0]
        assert item.private_block(0x0033, "DEMO HOSPITAL PACS 1.0")[0x12].value == ds.PatientID
        # A UID carrying the birth date.
        assert ds.PatientBirthDate in ds.StudyInstanceUID
        assert ds.OtherPatientIDsSequence[0].PatientID
        assert name.split("^")[0] in ds.StudyDescription
    assert any(not n.isascii() for n in charsets.get("ISO_IR 100", set()))
    assert any(not n.isascii() for n in charsets.get("ISO_IR 192", set()))
    # Non-ASCII bytes really are Latin-1 in the ISO_IR 100 files.
    steam = next(s for s in m["cdti"] if "MUELLER" in s["subject"])
    raw = (out / steam["images"][0]["file"]).read_bytes()
    assert "MÜLLER".encode("latin-1") in raw and "MÜLLER".encode("utf-8") not in raw


# --------------------------------------------------------------------------
# The workflow rule
# --------------------------------------------------------------------------

def test_demo_rule_writes_the_flag_last(tmp_path):
    out = tmp_path / "demo-input"
    flag = out / ".complete"
    log = tmp_path / "logs" / "demo.log"
    demo_input(flag=str(flag), log=str(log), config={}, threads=1)
    assert flag.is_file()
    newest = max(p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p != flag)
    assert flag.stat().st_mtime_ns >= newest
    assert (out / MANIFEST_NAME).is_file()
    assert not list(out.glob(".demo-build-*"))
    assert "demo cohort written" in log.read_text()
    # A re-run over a previous demo replaces it in place.
    before = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    demo_input(flag=str(flag), log=str(log), config={}, threads=1)
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == before


def test_refuses_a_folder_with_other_content(tmp_path):
    (tmp_path / "precious.txt").write_text("user data")
    with pytest.raises(DicomprepError, match="not empty"):
        make_demo(tmp_path)
    assert (tmp_path / "precious.txt").read_text() == "user data"
    assert sorted(os.listdir(tmp_path)) == ["precious.txt"]
