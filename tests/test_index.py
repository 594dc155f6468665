"""Discovery + series index on the real data, compared to pydicom's reading of
the same files (the independent reference) and to the data README's facts."""
from __future__ import annotations

import gzip
import hashlib
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest

from dicomprep import index as index_mod
from dicomprep.index import build_index
from workflow_helpers import index_job

CONTRACT_INSTANCE_COLUMNS = (
    "path relpath size mtime_ns gzip orig_group orig_sequence orig_subject orig_scan orig_unit series_key "
    "series_id PatientID PatientName IssuerOfPatientID PatientBirthDate PatientSex PatientAge "
    "StudyInstanceUID StudyDate StudyTime StudyDescription AccessionNumber StudyID SeriesInstanceUID "
    "SeriesNumber SeriesDescription SeriesDate SeriesTime SOPInstanceUID SOPClassUID InstanceNumber Modality "
    "ImageType Manufacturer ManufacturerModelName InstitutionName StationName DeviceSerialNumber "
    "ImagePositionPatient ImageOrientationPatient PixelSpacing SliceThickness SpacingBetweenSlices "
    "SliceLocation Rows Columns NumberOfFrames AcquisitionDate AcquisitionTime ContentDate ContentTime "
    "AcquisitionNumber TemporalPositionIdentifier EchoNumbers EchoTime RepetitionTime TriggerTime "
    "NominalInterval DiffusionBValue DiffusionGradientOrientation ImageComments ScanningSequence "
    "SequenceVariant SequenceName ProtocolName BurnedInAnnotation ContrastBolusAgent BodyPartExamined "
    "RescaleSlope RescaleIntercept TransferSyntaxUID enhanced is_dicomdir").split()
CONTRACT_SERIES_COLUMNS = (
    "orig_group orig_sequence orig_subject orig_scan series_key series_id SeriesInstanceUID SeriesNumber "
    "SeriesDescription Modality SOPClassUID PatientID IssuerOfPatientID StudyInstanceUID StudyDate "
    "Manufacturer ImageType n_instances n_frames enhanced Rows Columns matrix_consistent orientation "
    "slice_spacing spacing_regular spacing_min spacing_max n_duplicates tilt_deg n_bvalues kind notes").split()
KINDS = {"dwi", "ct_axial", "ct_other", "mr", "pt", "nm", "seg", "localizer", "dose_report",
         "secondary_capture", "presentation_state", "structured_report", "raw", "other_image", "other"}


def _quiet() -> logging.Logger:
    lg = logging.getLogger("dicomprep.test.quiet")
    lg.handlers[:] = [logging.NullHandler()]
    lg.propagate = False
    return lg


def _checksums(root: Path) -> dict:
    out = {}
    for dirpath, _d, files in os.walk(root):
        for name in files:
            p = os.path.join(dirpath, name)
            with open(p, "rb") as fh:
                out[p] = hashlib.sha256(fh.read()).hexdigest()
    return out


@pytest.fixture(scope="module")
def full_index(testdata, tmp_path_factory):
    out = tmp_path_factory.mktemp("index_all")
    before = _checksums(testdata)
    res = build_index(testdata, out, workers=2, log=_quiet())
    after = _checksums(testdata)
    idx = out / "private" / "index"
    return dict(res=res, out=out, before=before, after=after,
                instances=pd.read_parquet(idx / "instances.parquet"),
                series=pd.read_parquet(idx / "series.parquet"),
                unreadable=pd.read_csv(idx / "unreadable.csv"))


def _read(path: str):
    with open(path, "rb") as fh:
        gz = fh.read(2) == b"\x1f\x8b"
    src = gzip.open(path) if gz else path
    return pydicom.dcmread(src, stop_before_pixels=True, force=True)


def _ref_str(ds, kw):
    if kw not in ds:
        return None
    v = ds[kw].value
    if v is None:
        return None
    vals = list(v) if isinstance(v, (list, pydicom.multival.MultiValue)) else [v]
    s = "\\".join(str(x).strip(" \x00") for x in vals)
    return s if s.strip("\\") else None


def _ref_num(ds, kw):
    if kw not in ds or ds[kw].value in (None, ""):
        return None
    v = ds[kw].value
    vals = list(v) if isinstance(v, (list, tuple, pydicom.multival.MultiValue)) else [v]
    return [float(x) for x in vals]


STR_COLS = ["PatientID", "PatientName", "StudyInstanceUID", "StudyDate", "StudyTime", "SeriesInstanceUID",
            "SeriesDescription", "SOPInstanceUID", "SOPClassUID", "Modality", "ImageType", "Manufacturer",
            "InstitutionName", "StationName", "DeviceSerialNumber", "AccessionNumber", "AcquisitionTime",
            "ProtocolName", "SequenceName", "ImageComments", "BodyPartExamined", "PatientBirthDate"]
SCALAR_COLS = ["SeriesNumber", "InstanceNumber", "Rows", "Columns", "SliceThickness", "EchoTime",
               "RepetitionTime", "RescaleSlope", "RescaleIntercept", "DiffusionBValue", "SliceLocation",
               "AcquisitionNumber", "TriggerTime", "NominalInterval", "SpacingBetweenSlices"]
LIST_COLS = ["ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "DiffusionGradientOrientation"]


def test_columns_follow_the_contract(full_index):
    assert set(CONTRACT_INSTANCE_COLUMNS) <= set(full_index["instances"].columns)
    assert set(CONTRACT_SERIES_COLUMNS) <= set(full_index["series"].columns)
    assert list(full_index["unreadable"].columns)[:3] == ["path", "relpath", "reason"]
    assert set(full_index["series"]["kind"]) <= KINDS
    assert full_index["instances"]["series_key"].notna().all()
    assert full_index["instances"]["series_id"].notna().all()


def test_input_tree_unchanged(full_index):
    assert full_index["before"] == full_index["after"]


def test_every_file_accounted_for(full_index, testdata):
    n_files = sum(len(f) for _d, _s, f in os.walk(testdata))
    inst, unr = full_index["instances"], full_index["unreadable"]
    assert len(inst) + len(unr) == n_files
    assert not set(inst["path"]) & set(unr["path"])


def test_index_fields_equal_pydicom(full_index):
    """Every indexed instance, classic files: the stored fields equal pydicom's values."""
    inst = full_index["instances"]
    checked = 0
    for row in inst.itertuples(index=False):
        if row.enhanced:
            continue
        ds = _read(row.path)
        for kw in STR_COLS:
            got = getattr(row, kw)
            got = None if got is None or (isinstance(got, float) and np.isnan(got)) or got is pd.NA else got
            assert got == _ref_str(ds, kw), (row.relpath, kw)
        for kw in SCALAR_COLS:
            ref = _ref_num(ds, kw)
            got = getattr(row, kw)
            if ref is None:
                assert got is pd.NA or got is None or np.isnan(got), (row.relpath, kw, got)
            else:
                assert float(got) == pytest.approx(ref[0]), (row.relpath, kw)
        for kw in LIST_COLS:
            ref = _ref_num(ds, kw)
            got = getattr(row, kw)
            if ref is None:
                assert got is None, (row.relpath, kw)
            else:
                assert list(got) == pytest.approx(ref), (row.relpath, kw)
        try:
            ref_b = float(ds.private_block(0x0019, "SIEMENS MR HEADER")[0x0C].value)
        except KeyError:
            ref_b = None
        got_b = row.PrivateBValue
        assert (ref_b is None and np.isnan(got_b)) or got_b == ref_b, row.relpath
        tsuid = str(ds.file_meta.TransferSyntaxUID) if "TransferSyntaxUID" in ds.file_meta else None
        if tsuid:
            assert row.TransferSyntaxUID == tsuid, row.relpath
        checked += 1
    assert checked > 2000


def test_dcm_qa_ts_one_uid_nine_series(full_index, testdata):
    files = sorted((testdata / "dcm_qa_ts" / "In").glob("*.dcm"))
    refs = [_read(str(f)) for f in files]
    uids = {str(d.SeriesInstanceUID) for d in refs}
    numbers = {int(d.SeriesNumber) for d in refs}
    assert len(uids) == 1 and len(numbers) == 9
    s = full_index["series"]
    mine = s[s["SeriesInstanceUID"] == uids.pop()]
    assert len(mine) == 9
    assert set(mine["SeriesNumber"].astype(int)) == numbers
    assert (mine["n_instances"] == 1).all()
    assert mine["series_id"].is_unique
    inst = full_index["instances"]
    ts = inst[inst["relpath"].str.startswith("dcm_qa_ts/In/")]
    assert set(ts["TransferSyntaxUID"]) == {str(d.file_meta.TransferSyntaxUID) for d in refs}


def test_philips_dwi_gzip_dicomdir_and_companions(full_index, testdata):
    inst, s, unr = full_index["instances"], full_index["series"], full_index["unreadable"]
    folder = "dcm_qa_philips_dwi/In/cl/"
    ph = inst[inst["relpath"].str.startswith(folder)]
    assert ph["gzip"].all()
    assert unr.loc[unr["relpath"] == folder + "DICOMDIR", "reason"].str.contains("DICOMDIR").all()
    assert (unr["relpath"] == folder + "DICOMDIR").sum() == 1
    bvals = (testdata / "dcm_qa_philips_dwi/Ref/701_DTI_Biobank_2mm_MB3S2_EPI_cl.bval").read_text().split()
    n_images = len(list((testdata / folder / "DICOM").glob("IM_*.gz")))
    keys = set(ph["series_key"])
    mine = s[s["series_key"].isin(keys)].set_index("series_id")
    dwi = mine[mine["kind"] == "dwi"]
    assert len(dwi) == 1
    assert int(dwi["n_instances"].iloc[0]) == n_images
    assert n_images % len(bvals) == 0  # 17 volumes x slices
    assert int(dwi["n_bvalues"].iloc[0]) == len({round(float(b), 3) for b in bvals})
    # presentation state and Philips private SOP class objects: own series, own kinds
    for name, kind in (("PS_0545.gz", "presentation_state"), ("XX_0546.gz", "raw"), ("XX_0547.gz", "raw")):
        row = ph[ph["relpath"] == folder + "DICOM/" + name]
        assert len(row) == 1, name
        ser = s[s["series_key"] == row["series_key"].iloc[0]]
        assert ser["kind"].iloc[0] == kind, name
        assert ser["series_key"].iloc[0] != dwi["series_key"].iloc[0]


def test_enhanced_multiframe(full_index, testdata):
    inst, s = full_index["instances"], full_index["series"]
    for rel in ("dcm_qa_enh/In/Philips/IM_0027_fMAP.dcm", "dcm_qa_enh/In/Siemens/XA10/6_1.dcm",
                "pydicom-data/eCT_Supplemental.dcm"):
        ds = _read(str(testdata / rel))
        row = inst[inst["relpath"] == rel].iloc[0]
        assert bool(row["enhanced"]) is True
        assert int(row["NumberOfFrames"]) == int(ds.NumberOfFrames)
        frames = ds.PerFrameFunctionalGroupsSequence
        pos = np.asarray(row["frame_positions"]).reshape(-1, 3)
        assert len(pos) == len(frames)
        for k in (0, len(frames) - 1):
            item = frames[k].get("PlanePositionSequence") or ds.SharedFunctionalGroupsSequence[0].PlanePositionSequence
            assert pos[k] == pytest.approx([float(x) for x in item[0].ImagePositionPatient])
    enh = s[s["series_key"].isin(inst.loc[inst["relpath"].str.startswith("dcm_qa_enh/"), "series_key"])]
    assert enh["enhanced"].all()
    phil = enh[enh["n_instances"] == 1]
    assert int(phil["n_frames"].iloc[0]) == 64
    # classic files are not enhanced
    assert not inst.loc[inst["relpath"].str.startswith("dcm_qa_ct/"), "enhanced"].any()


def test_several_series_in_one_folder(full_index, testdata):
    inst = full_index["instances"]
    for folder in ("pydicom/dicomdirtests/98892003/MR1", "pydicom/dicomdirtests/98892003/MR2"):
        refs = {(str(d.SeriesInstanceUID), int(d.SeriesNumber))
                for d in (_read(str(p)) for p in (testdata / folder).iterdir())}
        mine = inst[inst["relpath"].str.startswith(folder + "/")]
        assert mine["series_key"].nunique() == len(refs) > 1


def test_clutter_rows(full_index):
    unr = full_index["unreadable"]
    nih = unr[unr["relpath"].str.startswith("dcm_qa_nih/In/") & unr["relpath"].str.contains("README")]
    assert len(nih) == 10
    assert nih["reason"].str.contains("not DICOM").all()


def test_ct_geometry_and_kinds(full_index, testdata):
    inst, s = full_index["instances"], full_index["series"]

    def series_of(prefix):
        keys = set(inst.loc[inst["relpath"].str.startswith(prefix), "series_key"])
        return s[s["series_key"].isin(keys)]

    ge = series_of("dcm_qa_ct/In/GE/").iloc[0]
    assert ge["kind"] == "ct_axial" and ge["n_instances"] == 28
    assert ge["tilt_deg"] == pytest.approx(18.5, abs=0.6)   # gantry tilt per the data README
    assert not ge["spacing_regular"]
    assert ge["spacing_min"] == pytest.approx(1.08, abs=0.05) and ge["spacing_max"] == pytest.approx(7.0, abs=0.05)
    ph = series_of("dcm_qa_ct/In/Philips/").iloc[0]
    assert ph["kind"] == "ct_axial" and bool(ph["spacing_regular"])
    assert ph["slice_spacing"] == pytest.approx(5.0, abs=1e-3) and ph["tilt_deg"] < 0.05
    assert set(series_of("dcmqi/segmentations/liver.dcm")["kind"]) == {"seg"}
    assert set(series_of("pydicom-data/sparse-labelmap").get("kind", [])) <= {"seg"}
    assert set(series_of("dcm_qa_xa30i/")["kind"]) == {"dwi"}
    ref_b = (testdata / "dcm_qa_xa30i/Ref/11001_DWI_dir80_AP.bval.gz")
    import gzip as _gz
    bvals = {float(b) for b in _gz.decompress(ref_b.read_bytes()).split()}
    assert int(series_of("dcm_qa_xa30i/")["n_bvalues"].iloc[0]) == len(bvals)   # Siemens private b-value
    assert set(series_of("dcm_qa_ge/")["kind"]) == {"dwi"}
    assert set(series_of("dcm_qa_nih/")["kind"]) == {"mr"}


# --------------------------------------------------------------------------- cache

def _small_tree(testdata: Path, dst: Path) -> Path:
    shutil.copytree(testdata / "dcm_qa_ts" / "In", dst / "ts")
    shutil.copytree(testdata / "dcm_qa_ct" / "In" / "Philips", dst / "ct")
    return dst


def test_incremental_cache(testdata, tmp_path, monkeypatch):
    tree = _small_tree(testdata, tmp_path / "in")
    out = tmp_path / "out"
    first = build_index(tree, out, log=_quiet())
    assert first.n_parsed > 0
    calls = []
    real = index_mod.read_instance
    monkeypatch.setattr(index_mod, "read_instance", lambda p, **k: calls.append(p) or real(p, **k))
    inst_before = pd.read_parquet(out / "private/index/instances.parquet")
    again = build_index(tree, out, log=_quiet())
    assert calls == [] and again.n_parsed == 0
    inst_after = pd.read_parquet(out / "private/index/instances.parquet")
    pd.testing.assert_frame_equal(inst_before, inst_after)
    # a new file is parsed, nothing else
    shutil.copy(testdata / "dcm_qa_ct/In/GE/01.dcm", tree / "new.dcm")
    build_index(tree, out, log=_quiet())
    assert [os.path.basename(c) for c in calls] == ["new.dcm"]
    # a removed file is dropped; a touched file is parsed again
    calls.clear()
    (tree / "ts" / "1.dcm").unlink()
    st = (tree / "ts" / "2.dcm").stat()
    os.utime(tree / "ts" / "2.dcm", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    res = build_index(tree, out, log=_quiet())
    assert [os.path.basename(c) for c in calls] == ["2.dcm"]
    inst = pd.read_parquet(out / "private/index/instances.parquet")
    assert "ts/1.dcm" not in set(inst["relpath"]) and "new.dcm" in set(inst["relpath"])
    assert res.n_instances == len(inst) == first.n_instances  # -1 removed, +1 added
    # tables rebuilt from the cache equal a fresh index of the same tree
    fresh = tmp_path / "fresh"
    build_index(tree, fresh, log=_quiet())
    for name in ("instances.parquet", "series.parquet"):
        pd.testing.assert_frame_equal(pd.read_parquet(out / "private/index" / name),
                                      pd.read_parquet(fresh / "private/index" / name))
    (out / "private/index" / index_mod.STATE_FILE).unlink()      # forces a rebuild from the cache
    calls.clear()
    build_index(tree, out, log=_quiet())
    assert calls == []
    pd.testing.assert_frame_equal(pd.read_parquet(out / "private/index/instances.parquet"),
                                  pd.read_parquet(fresh / "private/index/instances.parquet"))


def test_killed_run_leaves_previous_tables(testdata, tmp_path, monkeypatch):
    tree = _small_tree(testdata, tmp_path / "in")
    out = tmp_path / "out"
    build_index(tree, out, log=_quiet())
    idx = out / "private" / "index"
    before = {p.name: p.read_bytes() for p in idx.iterdir()}
    shutil.copy(testdata / "dcm_qa_ct/In/GE/01.dcm", tree / "new.dcm")

    def boom(*a, **k):
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(index_mod, "build_series", boom)
    with pytest.raises(KeyboardInterrupt):
        build_index(tree, out, log=_quiet())
    after = {p.name: p.read_bytes() for p in idx.iterdir()}
    assert after == before


def test_index_rule_wrapper(testdata, tmp_path):
    tree = _small_tree(testdata, tmp_path / "in")
    out = tmp_path / "out"
    log = tmp_path / "index.log"
    res = index_job(tree, out, config={"layout": "exam", "index": {"workers": 2}}, log=str(log), threads=2)
    assert res.layout == "exam"
    s = pd.read_parquet(out / "private/index/series.parquet")
    assert set(s["orig_scan"]) == {"ts", "ct"}
    assert "indexed" in log.read_text()


# --------------------------------------------------------------------------- bad input

def _bad_tree(testdata: Path, root: Path) -> Path:
    root.mkdir()
    src = testdata / "dcm_qa_ct/In/Philips/S21570/S2010"
    good = sorted(p for p in src.iterdir() if p.name != "DIRFILE")[:6]
    data = good[0].read_bytes()
    (root / "truncated.dcm").write_bytes(data[: len(data) // 2])
    (root / "truncated_header.dcm").write_bytes(data[:600])
    (root / "empty.dcm").write_bytes(b"")
    (root / "notdicom.dcm").write_text("this is a text file named like DICOM\n" * 10)
    (root / "short_text.dcm").write_text("hello\n")     # shorter than an element header
    (root / "gz_truncated.dcm.gz").write_bytes(gzip.compress(data)[:2000])
    packed = gzip.compress(data)
    (root / "gz_cut_in_pixels.dcm.gz").write_bytes(packed[: len(packed) // 2])   # header intact
    (root / "noext").write_bytes(data)                     # extension-less: fine
    (root / "nopreamble.dcm").write_bytes(good[4].read_bytes()[132:])      # no preamble/DICM: fine
    (root / "zz_copy_of_noext.dcm").write_bytes(data)      # same SOPInstanceUID as noext: a duplicate
    (root / "wrapped.dcm.gz").write_bytes(gzip.compress(good[1].read_bytes()))  # gzip: fine
    locked = root / "locked.dcm"
    locked.write_bytes(good[2].read_bytes())
    locked.chmod(0)
    # series whose instances disagree on Rows/Columns
    mism = root / "mismatch"
    mism.mkdir()
    shutil.copy(good[5], mism / "a.dcm")
    ds = pydicom.dcmread(good[2])
    ds.Rows, ds.Columns = 256, 256
    ds.PixelData = bytes(256 * 256 * 2)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID + ".1"   # not a duplicate of locked.dcm
    ds.save_as(mism / "b.dcm")
    # missing geometry attributes
    ds = pydicom.dcmread(good[3])
    del ds.ImagePositionPatient, ds.ImageOrientationPatient
    ds.SeriesInstanceUID = ds.SeriesInstanceUID + ".9"
    ds.save_as(root / "nogeometry.dcm")
    return root


def test_bad_input_rows_and_log(testdata, tmp_path):
    tree = _bad_tree(testdata, tmp_path / "bad")
    out = tmp_path / "out"
    log = tmp_path / "index.log"
    before = {p: p.read_bytes() for p in tree.rglob("*") if p.is_file() and os.access(p, os.R_OK)}
    index_job(tree, out, config={"layout": "dicom", "index": {"workers": 1}}, log=str(log), threads=1)
    unr = pd.read_csv(out / "private/index/unreadable.csv").set_index("relpath")["reason"]
    inst = pd.read_parquet(out / "private/index/instances.parquet").set_index("relpath")
    text = log.read_text()
    assert "truncated" in unr["truncated.dcm"]
    assert "truncated" in unr["truncated_header.dcm"]
    assert "empty" in unr["empty.dcm"]
    assert "not a DICOM" in unr["notdicom.dcm"]
    assert "not a DICOM" in unr["short_text.dcm"] and "truncated" not in unr["short_text.dcm"]
    assert "truncated" in unr["gz_truncated.dcm.gz"]
    assert "truncated" in unr["gz_cut_in_pixels.dcm.gz"]
    for name in ("truncated.dcm", "empty.dcm", "notdicom.dcm", "gz_truncated.dcm.gz"):
        assert name in text, name
    # root reads a chmod 000 file anyway: only then is it indexed
    if os.access(tree / "locked.dcm", os.R_OK):
        assert "locked.dcm" in inst.index
    else:
        assert "permission" in unr["locked.dcm"]
    for name in ("noext", "nopreamble.dcm", "wrapped.dcm.gz", "nogeometry.dcm"):
        assert name in inst.index, name
    for name in ("noext", "nopreamble.dcm"):
        ref = pydicom.dcmread(tree / name, stop_before_pixels=True, force=True)
        assert inst.loc[name, "SOPInstanceUID"] == ref.SOPInstanceUID
        assert list(inst.loc[name, "ImagePositionPatient"]) == pytest.approx([float(x) for x in ref.ImagePositionPatient])
    # issue 12.4: the second file with a SOPInstanceUID is left out with a reason naming the first
    assert "zz_copy_of_noext.dcm" not in inst.index
    assert unr["zz_copy_of_noext.dcm"].startswith("duplicate SOPInstanceUID of noext")
    assert bool(inst.loc["wrapped.dcm.gz", "gzip"]) is True
    s = pd.read_parquet(out / "private/index/series.parquet").set_index("series_key")
    mm = s.loc[inst.loc["mismatch/a.dcm", "series_key"]]
    assert inst.loc["mismatch/a.dcm", "series_key"] == inst.loc["mismatch/b.dcm", "series_key"]
    assert bool(mm["matrix_consistent"]) is False and "Rows/Columns" in mm["notes"]
    assert "Rows/Columns" in text
    ng = s.loc[inst.loc["nogeometry.dcm", "series_key"]]
    assert ng["orientation"] == "none" and "no geometry" in ng["notes"]
    after = {p: p.read_bytes() for p in before}
    assert after == before


def test_permission_denied_gets_a_reason_and_is_retried(testdata, tmp_path, monkeypatch):
    """As root a chmod 000 file stays readable, so the denial is simulated at open()."""
    from dicomprep import dicomio

    tree = tmp_path / "in"
    tree.mkdir()
    shutil.copy(testdata / "dcm_qa_ct/In/GE/01.dcm", tree / "locked.dcm")
    shutil.copy(testdata / "dcm_qa_ct/In/GE/02.dcm", tree / "open.dcm")
    real_open = open

    def guarded(path, *a, **k):
        if str(path).endswith("locked.dcm"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *a, **k)

    monkeypatch.setattr(dicomio, "open", guarded, raising=False)
    out = tmp_path / "out"
    log = tmp_path / "index.log"
    build_index(tree, out, log=str(log))
    unr = pd.read_csv(out / "private/index/unreadable.csv").set_index("relpath")["reason"]
    assert "permission" in unr["locked.dcm"]
    assert "locked.dcm" in log.read_text()
    monkeypatch.undo()                      # permission granted: read on the next run
    res = build_index(tree, out, log=_quiet())
    assert res.n_parsed == 1 and res.n_instances == 2


@pytest.fixture(scope="module")
def probe_index(testdata, tmp_path_factory):
    """Issue 12.4/12.6 bad-input probe on a real CT series (dcm_qa_ct Philips, copied):
    23 good slices, a duplicate, an unknown transfer syntax, a header without pixels,
    a file cut to 200 bytes, a slice without geometry, a symlink loop."""
    src = sorted(p for p in (testdata / "dcm_qa_ct/In/Philips/S21570/S2010").iterdir() if p.name != "DIRFILE")
    root = tmp_path_factory.mktemp("probe") / "in"
    ser = root / "exam1" / "ct"
    ser.mkdir(parents=True)
    for p in src[5:]:
        shutil.copy(p, ser / p.name)
    ds = pydicom.dcmread(src[0])
    ds.file_meta.TransferSyntaxUID = "1.2.3.4.5"
    ds.save_as(ser / "ts_unknown.dcm")
    ds = pydicom.dcmread(src[1])
    del ds.PixelData
    ds.save_as(ser / "no_pixels.dcm")
    ds = pydicom.dcmread(src[2])
    del ds.ImagePositionPatient, ds.ImageOrientationPatient
    ds.save_as(ser / "no_geometry.dcm")
    (ser / "cut.dcm").write_bytes(src[3].read_bytes()[:200])
    shutil.copy(src[4], ser / "a_copy.dcm")
    shutil.copy(src[4], ser / "b_copy.dcm")
    os.symlink("loop", root / "exam1" / "loop")
    out = tmp_path_factory.mktemp("probe_out")
    build_index(root, out, layout="dicom")
    idx = out / "private" / "index"
    return dict(unr=pd.read_csv(idx / "unreadable.csv").set_index("relpath")["reason"],
                inst=pd.read_parquet(idx / "instances.parquet").set_index("relpath"),
                series=pd.read_parquet(idx / "series.parquet"), src=src)


def test_probe_each_bad_instance_gets_its_true_reason(probe_index):
    unr, inst = probe_index["unr"], probe_index["inst"]
    assert unr["exam1/ct/b_copy.dcm"] .startswith("duplicate SOPInstanceUID of exam1/ct/a_copy.dcm")
    assert "exam1/ct/a_copy.dcm" in inst.index and "exam1/ct/b_copy.dcm" not in inst.index
    assert "1.2.3.4.5" in unr["exam1/ct/ts_unknown.dcm"] and "unreadable pixels" in unr["exam1/ct/ts_unknown.dcm"]
    assert unr["exam1/ct/no_pixels.dcm"].startswith("no pixel data (7FE0,0010)")
    assert "truncat" not in unr["exam1/ct/no_pixels.dcm"]
    assert "truncated" in unr["exam1/ct/cut.dcm"]
    assert "symbolic link loop" in unr["exam1/loop"]
    assert "exam1/ct/no_geometry.dcm" in inst.index          # readable; the converters give its reason
    # the input series had 28 + 1 files: 24 instances are used, 3 files are counted as missing
    # (the duplicate is a copy of an instance the series has, not a missing one)
    (row,) = probe_index["series"].to_dict("records")
    assert row["n_instances"] == 25 and row["n_excluded"] == 3
    for name in ("ts_unknown.dcm", "no_pixels.dcm", "cut.dcm"):
        assert name in row["excluded_files"]
    assert "b_copy.dcm" not in row["excluded_files"]


def test_unknown_transfer_syntax_of_a_real_compressed_file_is_decodable(testdata):
    """The transfer-syntax check does not flag what the installed decoders read (J2K, JPEG-LS,
    RLE, deflated SEG frames)."""
    from dicomprep.index_read import read_instance

    for name in ("dcm_qa_ts/In/4.dcm", "dcm_qa_ts/In/7.dcm", "dcm_qa_ts/In/9.dcm", "pydicom-data/liver_deflate.dcm"):
        rec = read_instance(testdata / name)
        assert rec["reason"] is None, (name, rec["reason"])


def _element_cut_at(path: Path, cut: int) -> tuple[str, int] | None:
    """The top-level element whose value a cut at byte ``cut`` falls in, and how many
    bytes of it the cut leaves out, from pydicom's own value offsets; None when the
    cut falls inside an undefined-length sequence (pydicom keeps no offsets there)."""
    ds = pydicom.dcmread(path)
    for raw in ds._dict.values():  # raw elements: pydicom's value offsets, not yet converted
        start = getattr(raw, "value_tell", None)  # None: converted while reading (the charset)
        if start is not None and raw.length != 0xFFFFFFFF and start <= cut < start + raw.length:
            return f"({raw.tag.group:04X},{raw.tag.element:04X})", start + raw.length - cut
    return None


@pytest.mark.parametrize("source, cut", [
    ("dcm_qa_ct/In/Philips/S21570/S2010/I110", 3000),       # inside a private value, before the pixels
    ("dcm_qa_ct/In/Philips/S21570/S2010/I110", 200000),     # inside Pixel Data
    ("dcm_qa_enh/In/Siemens/XA10/6_1.dcm", 20000),          # enhanced (the pydicom path), inside the header
    ("dcm_qa_enh/In/Siemens/XA10/6_1.dcm", -30000),         # enhanced, inside Pixel Data
])
def test_a_file_cut_inside_a_value_is_truncated_and_says_which_element(testdata, tmp_path, source, cut):
    """A file cut short inside an element's value (a copy that stopped) is reported as
    truncated, naming the element pydicom places at the cut, whichever reader reads
    it; never as a complete header-only file ("no pixel data") or an offset."""
    data = (testdata / source).read_bytes()
    cut = cut if cut > 0 else len(data) + cut
    path = tmp_path / "cut.dcm"
    path.write_bytes(data[:cut])
    whole = tmp_path / "whole.dcm"
    whole.write_bytes(data)
    reason = index_mod.read_instance(path)["reason"]
    assert reason and reason.startswith("truncated file"), reason
    assert "no pixel data" not in reason
    if not reason.startswith("truncated file: 512x512"):  # the walker's pixel-size check says it its own way
        at = _element_cut_at(whole, cut)
        if at is not None:
            assert f"the value of {at[0]} runs past the end ({at[1]} bytes missing)" in reason, reason
        else:  # inside a sequence item: the element named is one the file holds
            named = reason.split("the value of (")[1][:9]
            tags = {f"{e.tag.group:04X},{e.tag.element:04X}" for e in pydicom.dcmread(whole).iterall()}
            assert named in tags, reason
    assert index_mod.read_instance(whole)["reason"] is None


def test_a_complete_header_only_file_is_not_called_truncated(testdata, tmp_path):
    ds = pydicom.dcmread(testdata / "dcm_qa_ct/In/Philips/S21570/S2010/I110")
    del ds.PixelData
    ds.save_as(tmp_path / "header_only.dcm")
    assert index_mod.read_instance(tmp_path / "header_only.dcm")["reason"].startswith("no pixel data (7FE0,0010)")
