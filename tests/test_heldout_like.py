"""A reviewer-style held-out check: real data in real-world layouts, one whole run.

The input tree mixes an XNAT project (REST download form, session form with SEG
assessors and catalog XML, one SEG whose source series is absent, and an
``arcNNN`` archive path), a cDTI batch tree with person-like subject folders,
exam folders (tilted GE CT, Philips CT) and clutter. Everything is asserted
against independent references: dcmqi's NRRD label maps in world coordinates,
CT pixel values at world positions computed from each DICOM header, dcm2niix's
Ref bval/bvec/NIfTI, the original headers read with pydicom, and checksums of
the input tree.

The run uses the default config: the dcmqi source CTs have only 3 slices,
and de-identification must keep them because SEGs in their units reference
them (the ``max_instances`` filter exempts SEG sources).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest

from workflow_helpers import ROOT, checksums, run_workflow

pytestmark = pytest.mark.slow

SECRET = "held-out-like-secret-0123456789abcdef"

# Folder names that identify people, sessions or exams: none may reach share/.
SUBJECT_XNAT = "DOE_JANE_441100"
SESSION_REST = "DOE_JANE_20190405_MR1"
SESSION_ARC = "DOE_JANE_20190406_CT2"
ASSESSOR_LIVER = "SEG_20190406_141502_liver"
ASSESSOR_OVERLAP = "SEG_20190406_151010_overlaps"
ASSESSOR_ORPHAN = "SEG_20190407_090000_orphan"
SESSION_SMALL = "SMALL_SESS_20190408_0099"
ASSESSOR_SMALL = "SEG_20190408_101010_small"
RATER = "jrater_mcgillicuddy"
CDTI_SUBJECTS = ("SMITH_JOHN_778899", "MUELLER_ANNA_112233")
CDTI_SCANS = ("20190101_scan1", "20190202_scan2")
EXAMS = ("EXAM_4711_HEAD_GE", "EXAM_0815_PHANTOM_PHILIPS")
IDENTIFYING_NAMES = (SUBJECT_XNAT, SESSION_REST, SESSION_ARC, ASSESSOR_LIVER, ASSESSOR_OVERLAP, ASSESSOR_ORPHAN,
                     RATER, SESSION_SMALL, ASSESSOR_SMALL, *CDTI_SUBJECTS, *CDTI_SCANS, *EXAMS)


def _catalog(resource: str, files: list[Path]) -> str:
    """An XNAT catalog XML (``cat:Catalog`` with ``cat:entry`` rows)."""
    rows = "\n".join(
        f'    <cat:entry URI="{f.name}" ID="{f.name}" xsi:type="cat:entryBean" format="DICOM" content="SEG" '
        f'createdBy="{RATER}" createdTime="2019-04-06T14:15:02.331+02:00" createdEventId="100{i}"/>'
        for i, f in enumerate(files))
    return ('<?xml version="1.0" encoding="UTF-8"?>\n'
            '<cat:Catalog xmlns:cat="http://nrg.wustl.edu/catalog" '
            'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
            f'ID="{resource}">\n  <cat:entries>\n{rows}\n  </cat:entries>\n</cat:Catalog>\n')


def _copy_files(files, dest: Path) -> list[Path]:
    dest.mkdir(parents=True, exist_ok=True)
    out = []
    for f in files:
        shutil.copy2(f, dest / f.name)
        out.append(dest / f.name)
    return out


def build_tree(data: Path, inp: Path) -> None:
    """The held-out-like input tree (see module docstring)."""
    segs = data / "dcmqi" / "segmentations"
    ct3 = sorted((segs / "ct-3slice").glob("*.dcm"))
    proj = inp / "XNAT_PROJ_LIVER" / SUBJECT_XNAT
    # 1a. XNAT REST download form: scans/<id>-<desc>/resources/DICOM/files
    _copy_files(ct3, proj / SESSION_REST / "scans" / "1-CT_3slice" / "resources" / "DICOM" / "files")
    # 1b. XNAT archive form: SCANS/<n>/DICOM + ASSESSORS/<name>/SEG
    arc = proj / SESSION_ARC
    _copy_files(ct3, arc / "SCANS" / "2" / "DICOM")
    for name, seg in ((ASSESSOR_LIVER, segs / "liver.dcm"), (ASSESSOR_OVERLAP, segs / "partial_overlaps.dcm"),
                      (ASSESSOR_ORPHAN, segs / "24x38x3" / "seg" / "label.seg")):
        copied = _copy_files([seg], arc / "ASSESSORS" / name / "SEG")
        (arc / "ASSESSORS" / name / "SEG" / "SEG_catalog.xml").write_text(_catalog("SEG", copied))
    # 1c. XNAT archive path: <archive>/<project>/arcNNN/<session>/SCANS + ASSESSORS
    small = inp / "xnat_archive" / "XNAT_PROJ_SMALL" / "arc001" / SESSION_SMALL
    _copy_files(sorted((segs / "23x38x3" / "image").glob("*.dcm")), small / "SCANS" / "3" / "DICOM")
    copied = _copy_files([segs / "23x38x3" / "seg" / "label.seg"], small / "ASSESSORS" / ASSESSOR_SMALL / "SEG")
    (small / "ASSESSORS" / ASSESSOR_SMALL / "catalog.xml").write_text(_catalog("SEG", copied))
    # 2. cDTI batch tree: group/dicom/SEQ/<subject>/<scan>
    for subj, scan, series in zip(CDTI_SUBJECTS, CDTI_SCANS, ("01_Ax_DWI_TENSOR_R2", "02_Ax_DWI_TENSOR_R3")):
        _copy_files(sorted((data / "dcm_qa_ge" / "In" / series).iterdir()),
                    inp / "grpA" / "dicom" / "SE_dwi" / subj / scan)
    # 3. exam folders
    ge = inp / "exams" / EXAMS[0]
    _copy_files(sorted((data / "dcm_qa_ct" / "In" / "GE").glob("*.dcm")), ge / "SER0002")
    shutil.copytree(data / "dcm_qa_ct" / "In" / "Philips", inp / "exams" / EXAMS[1] / "Philips")
    # 4. clutter
    (inp / "README.txt").write_text("Export of 2019-04 for the liver study. Contact: someone.\n")
    (ge / "thumbnail.jpg").write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + b"\x00" * 64 + b"\xff\xd9")
    (ge / "SER0002" / "empty.dcm").write_bytes(b"")
    real = (data / "dcm_qa_ct" / "In" / "GE" / "05.dcm").read_bytes()
    (ge / "SER0002" / "05_partial_copy.dcm").write_bytes(real[: len(real) // 2])
    shutil.copy2(data / "pydicom" / "dicomdirtests" / "DICOMDIR", inp / "DICOMDIR")


def _sh(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-m", "dicomprep", *args], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=600)


@pytest.fixture(scope="module")
def heldout(tmp_path_factory, testdata):
    base = tmp_path_factory.mktemp("heldout")
    inp = base / "in"
    build_tree(testdata, inp)
    before = checksums(inp)
    out = base / "out"
    proc = run_workflow(str(inp), out, *_extra(testdata), secret=SECRET)
    return inp, out, proc, before


def _extra(testdata: Path) -> list[str]:
    """No config overrides: the defaults must handle this cohort."""
    return []


def _ok(heldout):
    inp, out, proc, before = heldout
    assert proc.returncode == 0, proc.stderr[-6000:]
    return inp, out


def _units(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / "private" / "units.csv", dtype=str)


def _unit_of(out: Path, orig_scan: str) -> str:
    units = _units(out)
    hit = units[units["orig_scan"] == orig_scan]
    assert len(hit) == 1, (orig_scan, units[["unit", "orig_unit"]])
    return hit["unit"].iloc[0]


# --- run, input, pseudonymity --------------------------------------------------------

def test_run_passes_verification_and_keeps_input(heldout):
    inp, out = _ok(heldout)
    assert checksums(inp) == heldout[3], "the input tree was modified"
    ver = json.loads((out / "share" / "verification.json").read_text())
    assert ver["status"] == "pass", ver


def test_units_follow_the_layouts(heldout):
    _, out = _ok(heldout)
    units = _units(out)
    by_scan = {r.orig_scan: r for r in units.itertuples()}
    for scan in (SESSION_REST, SESSION_ARC):
        assert by_scan[scan].group == "xnat", units
        assert by_scan[scan].orig_subject == SUBJECT_XNAT
    for subj, scan in zip(CDTI_SUBJECTS, CDTI_SCANS):
        assert by_scan[scan].group == "grpA" and by_scan[scan].sequence == "SE_dwi"
        assert by_scan[scan].orig_subject == subj
    for exam in EXAMS:
        assert by_scan[exam].group == "exam"
    # README, thumbnail, empty, truncated, DICOMDIR: reason rows, not units
    unreadable = pd.read_csv(out / "private" / "index" / "unreadable.csv")
    reasons = dict(zip(unreadable["relpath"], unreadable["reason"]))
    for rel in ("README.txt", f"exams/{EXAMS[0]}/thumbnail.jpg", f"exams/{EXAMS[0]}/SER0002/empty.dcm",
                f"exams/{EXAMS[0]}/SER0002/05_partial_copy.dcm", "DICOMDIR"):
        assert rel in reasons, (rel, sorted(reasons))
        assert str(reasons[rel]).strip(), rel
    assert "truncat" in reasons[f"exams/{EXAMS[0]}/SER0002/05_partial_copy.dcm"].lower()
    assert "DICOMDIR" in reasons["DICOMDIR"]


def test_no_input_folder_name_in_share(heldout):
    _, out = _ok(heldout)
    share = out / "share"
    paths = [str(p.relative_to(share)) for p in share.rglob("*")]
    for name in IDENTIFYING_NAMES:
        assert not any(name.lower() in p.lower() for p in paths), name
    # nor in the text of tables, sidecars and reports
    for p in share.rglob("*"):
        if p.is_file() and p.suffix in (".csv", ".json", ".yaml", ".html", ".tsv", ".txt"):
            text = p.read_text(errors="replace")
            for name in IDENTIFYING_NAMES:
                assert name not in text, (name, p)



def _input_headers(inp: Path) -> list[pydicom.Dataset]:
    out = []
    for f in sorted(inp.rglob("*")):
        if f.is_file() and f.suffix.lower() not in (".txt", ".jpg", ".xml") and f.name not in ("DICOMDIR", "DIRFILE"):
            try:
                out.append(pydicom.dcmread(f, stop_before_pixels=True))
            except Exception:
                continue
    return out


def test_share_dicom_and_sidecars_hold_no_original_uids_or_ids(heldout):
    """Every UID and identifier of the input headers (read here with pydicom) is
    absent from the de-identified DICOM headers and from every text sidecar/table."""
    inp, out = _ok(heldout)
    headers = _input_headers(inp)
    assert len(headers) >= 90          # 6 CT + 3 SEG + 28 DWI + 56 CT (+ the partial copy)
    uids, ids = set(), set()
    for ds in headers:
        for kw in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID"):
            if ds.get(kw):
                uids.add(str(ds.get(kw)))
        for kw in ("PatientID", "AccessionNumber", "PatientName"):
            v = str(ds.get(kw, "") or "")
            if len(v) >= 6 and v.lower() not in ("anonymous", "removed"):
                ids.add(v)
    # dcmqi's 23x38x3 CT has PatientID 123456 AND SeriesNumber 123456: the number stays
    # as SeriesNumber (not identifying, PS3.15 E.1-1), so it cannot be searched for as text
    ids -= {str(ds.get("SeriesNumber")) for ds in headers}
    assert uids and ids
    shared_dicom = sorted((out / "share" / "dicom").rglob("*.dcm"))
    assert len(shared_dicom) > 50
    for f in shared_dicom:
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        values = {str(e.value) for e in ds.iterall() if e.VR == "UI" and e.value}
        assert not (values & uids), (f, values & uids)
        for kw in ("PatientID", "AccessionNumber", "PatientName"):
            assert str(ds.get(kw, "") or "") not in ids, (f, kw)
    for f in (out / "share").rglob("*"):
        if f.is_file() and f.suffix in (".json", ".csv", ".tsv", ".yaml", ".html", ".bval", ".bvec", ".txt"):
            text = f.read_text(errors="replace")
            leaked = [v for v in uids | ids if re.search(rf"(?<![A-Za-z0-9.]){re.escape(v)}(?![A-Za-z0-9])", text)]
            assert not leaked, (f, leaked[:3])


def test_index_matches_the_file_headers(heldout):
    """private/index/instances.parquet against each file's header read here with pydicom."""
    inp, out = _ok(heldout)
    inst = pd.read_parquet(out / "private" / "index" / "instances.parquet")
    assert len(inst) == 97 and inst["relpath"].is_unique
    for row in inst.itertuples():
        ds = pydicom.dcmread(inp / row.relpath, stop_before_pixels=True)
        assert row.SOPInstanceUID == ds.SOPInstanceUID and row.SeriesInstanceUID == ds.SeriesInstanceUID
        assert row.Modality == ds.Modality and int(row.SeriesNumber) == int(ds.SeriesNumber)
        if "ImagePositionPatient" in ds:
            np.testing.assert_allclose(np.asarray(row.ImagePositionPatient, float),
                                       np.asarray(ds.ImagePositionPatient, float), atol=1e-4)
            assert int(row.Rows) == ds.Rows and int(row.Columns) == ds.Columns


def test_nifti_headers_and_sidecars_hold_no_original_dates_or_times(heldout):
    """Original dates (DA) and times (TM, to the second) of the input headers appear
    in no NIfTI header text field and no JSON/CSV sidecar or table of share/."""
    import nibabel as nib

    inp, out = _ok(heldout)
    dates, times = set(), set()
    for ds in _input_headers(inp):
        for kw in ("StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate", "PatientBirthDate"):
            v = str(ds.get(kw, "") or "")
            if re.fullmatch(r"\d{8}", v):
                dates |= {v, f"{v[:4]}-{v[4:6]}-{v[6:]}"}
        for kw in ("StudyTime", "SeriesTime", "AcquisitionTime", "ContentTime"):
            v = str(ds.get(kw, "") or "").split(".")[0]
            if re.fullmatch(r"\d{6}", v) and v != "000000":
                times |= {v, f"{v[:2]}:{v[2:4]}:{v[4:]}"}
    assert dates and times

    def leaks(text: str) -> list[str]:
        return [v for v in dates | times if re.search(rf"(?<![0-9.]){re.escape(v)}(?![0-9])", text)]

    niftis = sorted((out / "share").rglob("*.nii.gz"))
    assert len(niftis) >= 10
    for f in niftis:
        hdr = nib.load(f).header
        text = " ".join(hdr[k].tobytes().decode("latin-1") for k in ("descrip", "aux_file", "intent_name"))
        assert not leaks(text), (f, leaks(text))
    for f in (out / "share").rglob("*"):
        if f.is_file() and f.suffix in (".json", ".csv", ".bval", ".bvec", ".yaml"):
            assert not leaks(f.read_text(errors="replace")), (f, leaks(f.read_text(errors="replace"))[:3])

def test_series_kinds_are_sensible(heldout):
    _, out = _ok(heldout)
    series = pd.read_parquet(out / "private" / "index" / "series.parquet")
    kinds = series.groupby("orig_scan")["kind"].apply(lambda k: sorted(k)).to_dict()
    assert kinds[SESSION_REST] == ["ct_axial"], kinds
    assert kinds[SESSION_ARC] == ["ct_axial", "seg", "seg", "seg"], kinds
    assert kinds[SESSION_SMALL] == ["ct_axial", "seg"], kinds
    for scan in CDTI_SCANS:
        assert kinds[scan] == ["dwi"], kinds
    # GE head CT is tilted axial; Philips phantom regular axial
    assert set(kinds[EXAMS[0]]) <= {"ct_axial", "ct_other"} and "ct_axial" in kinds[EXAMS[0]] + kinds[EXAMS[1]]
    assert kinds[EXAMS[1]] == ["ct_axial"], kinds
    n_files = {scan: int(g["n_instances"].sum()) for scan, g in series.groupby("orig_scan")}
    assert n_files[EXAMS[0]] == 28 and n_files[EXAMS[1]] == 28 and n_files[SESSION_REST] == 3
    assert n_files[SESSION_ARC] == 6 and n_files[SESSION_SMALL] == 4
    assert n_files[CDTI_SCANS[0]] == 14 and n_files[CDTI_SCANS[1]] == 14


# --- segmentations ----------------------------------------------------------------

def _seg_manifest(out: Path) -> pd.DataFrame:
    return pd.read_parquet(out / "private" / "stages" / "seg" / _unit_of(out, SESSION_ARC) / "manifest.parquet")


def test_seg_without_source_gets_reason_and_others_convert(heldout, testdata):
    _, out = _ok(heldout)
    man = _seg_manifest(out)
    back = man[man["segmentation"] == "DICOM-SEG"]      # the masks written back as DICOM-SEG (issue 17)
    assert list(back["status"]) == ["converted", "converted"], back[["status", "reason"]]
    for rel in back["outputs"]:
        assert pydicom.dcmread(out / rel, stop_before_pixels=True).Modality == "SEG"
    man = man[man["segmentation"] != "DICOM-SEG"]
    inv = pd.read_csv(out / "private" / "stages" / "seg" / _unit_of(out, SESSION_ARC) / "inventory" / "segmentations.csv", dtype=str)
    assert len(inv) == 3, inv
    failed = man[man["status"] == "failed"]
    assert len(failed) == 1, man[["status", "reason", "segment_label"]]
    assert "source" in failed["reason"].iloc[0].lower(), failed["reason"].iloc[0]
    converted = man[man["status"] == "converted"]
    # liver: 1 segment; partial_overlaps: 5 overlapping segments (dcmqi README)
    assert len(converted) == 6, man[["status", "reason", "segment_label"]]
    for rel in converted["outputs"]:
        for part in str(rel).split(";"):
            assert (out / part).is_file(), part
    # the orphan SEG is the 24x38x3 one: it references a series this unit does not hold
    orphan_uid = pydicom.dcmread(testdata / "dcmqi/segmentations/24x38x3/seg/label.seg",
                                 stop_before_pixels=True).SeriesInstanceUID
    series = pd.read_parquet(out / "private" / "index" / "series.parquet")
    orphan_key = series.loc[series["SeriesInstanceUID"] == orphan_uid, "series_key"]
    assert failed["series_key"].iloc[0] in set(orphan_key)



def test_xnat_catalog_names_the_segmentor_privately(heldout):
    """createdBy of the assessor catalog XML is the segmentor in private/, a pseudonym in share/."""
    _, out = _ok(heldout)
    unit = _unit_of(out, SESSION_ARC)
    private = pd.read_csv(out / "private" / "stages" / "seg" / unit / "inventory" / "segmentations.csv", dtype=str)
    assert set(private["segmentor"]) == {RATER}, private
    assert set(private["assessor_folder"]) == {ASSESSOR_LIVER, ASSESSOR_OVERLAP, ASSESSOR_ORPHAN}
    shared = pd.read_csv(out / "share" / "tables" / "seg" / unit / "segmentations.csv", dtype=str)
    assert len(shared) == 3 and shared["segmentor_id"].nunique() == 1
    assert RATER not in shared["segmentor_id"].iloc[0]

def _nrrd_world_lps(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Indices and LPS world points of the non-zero voxels, from the NRRD's own header."""
    import nrrd

    data, hdr = nrrd.read(str(path))
    origin = np.asarray(hdr["space origin"], float)
    dirs = np.asarray(hdr["space directions"], float)  # one row per axis
    assert hdr["space"].lower() in ("left-posterior-superior", "lps")
    idx = np.argwhere(data > 0)
    return idx, origin + idx @ dirs


def _assert_same_world(mask_path: Path, nrrd_path: Path) -> None:
    """The mask's voxels (its own affine, RAS -> LPS) and the NRRD's voxels (its own
    space origin + directions, LPS) are the same set of world points, to half a voxel."""
    import nibabel as nib
    from scipy.spatial import cKDTree

    img = nib.load(mask_path)
    vox = np.argwhere(np.asarray(img.dataobj) > 0)
    ours_lps = nib.affines.apply_affine(img.affine, vox) * np.array([-1.0, -1.0, 1.0])
    _, ref_lps = _nrrd_world_lps(nrrd_path)
    assert len(ours_lps) == len(ref_lps) > 0, (len(ours_lps), len(ref_lps))
    tol = 0.5 * np.sqrt((img.affine[:3, :3] ** 2).sum(axis=0)).min()
    d_ours, _ = cKDTree(ref_lps).query(ours_lps)
    d_ref, _ = cKDTree(ours_lps).query(ref_lps)
    assert d_ours.max() <= tol and d_ref.max() <= tol, (d_ours.max(), d_ref.max(), tol)


def _mask_of(out: Path, session: str, seg_file: Path) -> Path:
    """The share/masks NIfTI converted from ``seg_file`` (found by its original SeriesInstanceUID)."""
    man = pd.read_parquet(out / "private" / "stages" / "seg" / _unit_of(out, session) / "manifest.parquet")
    conv = man[man["status"] == "converted"]
    uid = pydicom.dcmread(seg_file, stop_before_pixels=True).SeriesInstanceUID
    series = pd.read_parquet(out / "private" / "index" / "series.parquet")
    rows = conv[conv["series_key"].isin(set(series.loc[series["SeriesInstanceUID"] == uid, "series_key"]))]
    assert len(rows) == 1, man[["series_key", "status", "reason", "segment_label"]]
    path = out / str(rows["outputs"].iloc[0]).split(";")[0]
    assert path.is_relative_to(out / "share" / "masks") and path.is_file(), path
    return path


def test_liver_mask_matches_dcmqi_nrrd_in_world(heldout, testdata):
    _, out = _ok(heldout)
    segs = testdata / "dcmqi/segmentations"
    _assert_same_world(_mask_of(out, SESSION_ARC, segs / "liver.dcm"), segs / "liver_seg.nrrd")


def test_small_grid_mask_in_arc_session_matches_nrrd_in_world(heldout, testdata):
    _, out = _ok(heldout)
    units = _units(out).set_index("orig_scan")
    assert units.loc[SESSION_SMALL, "group"] == "xnat" and units.loc[SESSION_SMALL, "sequence"] == "XNAT_PROJ_SMALL"
    segs = testdata / "dcmqi/segmentations/23x38x3"
    _assert_same_world(_mask_of(out, SESSION_SMALL, segs / "seg/label.seg"), segs / "nrrd/label.nrrd")


# --- CT ----------------------------------------------------------------------------------

def test_ct_outputs_and_pseudonymous_index(heldout, testdata):
    _, out = _ok(heldout)
    for exam in EXAMS:
        unit = _unit_of(out, exam)
        man = pd.read_parquet(out / "private" / "stages" / "ncct" / unit / "manifest.parquet")
        assert len(man), exam
        for r in man.itertuples():
            if r.status == "converted":
                assert r.outputs and all((out / p).is_file() for p in str(r.outputs).split(";")), r
            else:
                assert str(r.reason).strip(), r
    philips = pd.read_parquet(out / "private" / "stages" / "ncct" / _unit_of(out, EXAMS[1]) / "manifest.parquet")
    assert (philips["status"] == "converted").any(), philips
    table_path = out / "share" / "tables" / "ct_series_index.csv"
    text = table_path.read_text()
    assert len(pd.read_csv(table_path)) >= 1
    orig_uids = set()
    for f in list((testdata / "dcm_qa_ct" / "In").rglob("*")) + list((testdata / "dcmqi/segmentations/ct-3slice").glob("*.dcm")):
        if f.is_file() and f.name != "DIRFILE" and f.suffix != ".json":
            ds = pydicom.dcmread(f, stop_before_pixels=True, force=True)
            for kw in ("SeriesInstanceUID", "StudyInstanceUID", "SOPInstanceUID", "PatientID"):
                v = str(ds.get(kw, "") or "")
                if len(v) > 3:
                    orig_uids.add(v)
    assert orig_uids
    leaked = [u for u in orig_uids if u in text]
    assert not leaked, leaked[:3]



def _ct_world_errors(nii: Path, dicom_files: list[Path], offset_mm: float = 0.0) -> np.ndarray:
    """|NIfTI - DICOM| HU at every 4th pixel of every slice, the pixel's world
    position computed from its own header (PS3.3 C.7.6.2.1.1: IPP + IOP x spacing),
    moved ``offset_mm`` along the slice normal; only pixels inside the body mask."""
    import nibabel as nib
    from scipy import ndimage

    img = nib.load(nii)
    vol = np.asarray(img.dataobj, dtype=float)
    inv = np.linalg.inv(img.affine)
    errors = []
    for f in dicom_files:
        ds = pydicom.dcmread(f)
        hu = ds.pixel_array * float(ds.get("RescaleSlope", 1) or 1) + float(ds.get("RescaleIntercept", 0) or 0)
        ipp = np.array(ds.ImagePositionPatient, float)
        iop = np.array(ds.ImageOrientationPatient, float)
        d_row, d_col = map(float, ds.PixelSpacing)
        r, c = np.mgrid[0:ds.Rows:4, 0:ds.Columns:4]
        lps = ipp + np.outer(c.ravel() * d_col, iop[:3]) + np.outer(r.ravel() * d_row, iop[3:])
        lps = lps + offset_mm * np.cross(iop[:3], iop[3:])
        ijk = nib.affines.apply_affine(inv, lps * np.array([-1.0, -1.0, 1.0]))
        ours = ndimage.map_coordinates(vol, ijk.T, order=1, cval=np.nan)
        ref = hu[r.ravel(), c.ravel()]
        inside = ~np.isnan(ours) & (ref > -500) & (ours > -990)   # outside the body mask is -1000
        errors.append(np.abs(ours[inside] - ref[inside]))
    return np.concatenate(errors)


def test_ct_volumes_hold_the_dicom_values_at_their_world_positions(heldout, testdata):
    """Tilted GE (18.5 deg, variable spacing) and regular Philips CT: every sampled
    DICOM pixel, placed in the world by its own header, finds its HU in the NIfTI;
    3 mm off along the slice normal it does not."""
    _, out = _ok(heldout)
    sources = {EXAMS[0]: sorted((testdata / "dcm_qa_ct/In/GE").glob("*.dcm")),
               EXAMS[1]: sorted((testdata / "dcm_qa_ct/In/Philips/S21570/S2010").glob("I*"))}
    for exam, files in sources.items():
        man = pd.read_parquet(out / "private" / "stages" / "ncct" / _unit_of(out, exam) / "manifest.parquet")
        conv = man[man["status"] == "converted"]
        assert len(conv) == 1, man
        nii = out / str(conv["outputs"].iloc[0]).split(";")[0]
        err = _ct_world_errors(nii, files)
        assert len(err) > 10000, exam
        assert np.median(err) < 10 and np.percentile(err, 75) < 40, (exam, np.percentile(err, [50, 75, 90]))
        for off in (3.0, -3.0):
            assert np.median(_ct_world_errors(nii, files, off)) > 2 * np.median(err), (exam, off)

# --- DWI -----------------------------------------------------------------------------

def test_ge_dwi_bvals_match_dcm2niix_reference(heldout, testdata):
    _, out = _ok(heldout)
    refs = {scan: testdata / "dcm_qa_ge" / "Ref" / name
            for scan, name in zip(CDTI_SCANS, ("Ax_DWI_TENSOR_R2_1.bval", "Ax_DWI_TENSOR_R3_2.bval"))}
    for scan, ref in refs.items():
        unit = _unit_of(out, scan)
        bvals = sorted((out / "share" / "nifti" / unit).rglob("*.bval"))
        assert len(bvals) == 1, bvals
        ours = np.loadtxt(bvals[0], ndmin=1)
        np.testing.assert_allclose(ours, np.loadtxt(ref, ndmin=1), atol=1e-3)
        np.testing.assert_allclose(np.loadtxt(bvals[0].with_suffix(".bvec")), np.loadtxt(ref.with_suffix(".bvec")),
                                   atol=1e-4)
        import nibabel as nib

        ours_nii = nib.load(bvals[0].with_name(bvals[0].stem + ".nii.gz"))
        ref_nii = nib.load(ref.with_suffix(".nii"))
        assert ours_nii.shape == ref_nii.shape == (256, 256, 2, 7)
        np.testing.assert_allclose(ours_nii.affine, ref_nii.affine, atol=1e-4)
        assert np.array_equal(np.asarray(ours_nii.dataobj), np.asarray(ref_nii.dataobj))


def test_flat_single_scan_folder_keeps_cdti_keys(heldout, tmp_path):
    inp, _ = _ok(heldout)
    scan_dir = inp / "grpA" / "dicom" / "SE_dwi" / CDTI_SUBJECTS[0] / CDTI_SCANS[0]
    proc = _sh("index", str(scan_dir), str(tmp_path / "idx"), "--layout", "cdti")
    assert proc.returncode == 0, proc.stderr[-3000:]
    inst = pd.read_parquet(tmp_path / "idx" / "private" / "index" / "instances.parquet")
    keys = set(map(tuple, inst[["orig_group", "orig_sequence", "orig_subject", "orig_scan"]].values))
    assert keys == {("grpA", "SE_dwi", CDTI_SUBJECTS[0], CDTI_SCANS[0])}, keys


# --- CLI -------------------------------------------------------------------------------

def test_status_and_ls(heldout):
    _, out = _ok(heldout)
    proc = _sh("status", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "units done" in proc.stdout and "verification: pass" in proc.stdout, proc.stdout
    n_units = len(_units(out))
    assert f"{n_units} of {n_units} units done" in proc.stdout, proc.stdout
    assert "1 series/segmentation(s) not converted by stage seg" in proc.stdout, proc.stdout   # the orphan SEG
    proc = _sh("ls", str(out), "series", "--csv")
    assert proc.returncode == 0, proc.stderr
    listed = pd.read_csv(__import__("io").StringIO(proc.stdout))
    series = pd.read_parquet(out / "private" / "index" / "series.parquet")
    assert len(listed) == len(series), (len(listed), len(series))
    proc = _sh("ls", str(out), "series", "--where", "Modality=SEG", "--csv")
    assert proc.returncode == 0, proc.stderr
    assert len(pd.read_csv(__import__("io").StringIO(proc.stdout))) == 4   # 3 in session 2, 1 in the arc session


def test_rerun_does_no_unit_work(heldout, testdata):
    inp, out = _ok(heldout)
    stages = sorted((out / "private" / "stages").rglob("manifest.parquet"))
    assert len(stages) >= len(_units(out))
    before = {p: p.stat().st_mtime_ns for p in stages}
    proc = run_workflow(str(inp), out, *_extra(testdata), secret=SECRET)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert before == {p: p.stat().st_mtime_ns for p in stages}, "an unchanged cohort re-ran unit jobs"
