"""Layouts -> unit keys, on trees built from real files (pydicom's small
dicomdirtests images). Expected keys are the folder names the test creates and
the PatientID / StudyInstanceUID pydicom reads from the copied files."""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pandas as pd
import pydicom
import pytest

from dicomprep.errors import ConfigError
from dicomprep.index import build_index
from dicomprep.layout import (
    assign_units, detect_layout, detect_layout_from_relpaths, read_xnat_catalog, unit_for,
)

DD = "pydicom/dicomdirtests"


def _quiet():
    lg = logging.getLogger("dicomprep.test.layout")
    lg.handlers[:] = [logging.NullHandler()]
    lg.propagate = False
    return lg


def _copy(src: Path, dst: Path) -> list[Path]:
    dst.mkdir(parents=True, exist_ok=True)
    out = []
    for f in sorted(src.iterdir()):
        shutil.copy(f, dst / f.name)
        out.append(dst / f.name)
    return out


def _units(out: Path) -> pd.DataFrame:
    return pd.read_parquet(out / "private/index/instances.parquet")


def _header(path: Path):
    return pydicom.dcmread(path, stop_before_pixels=True)


def test_cdti_tree(testdata, tmp_path):
    root = tmp_path / "in"
    _copy(testdata / DD / "77654033/CT2", root / "grpA/dicom/SE_DTI/subj01/scan_1")
    _copy(testdata / DD / "98892001/CT5N", root / "grpB/DICOM/STEAM/subj02/scan_2/extra")
    (root / "grpA/notes.txt").write_text("clutter")
    assert detect_layout(root) == "cdti"
    build_index(root, tmp_path / "out", log=_quiet())
    inst = _units(tmp_path / "out")
    a = inst[inst["relpath"].str.startswith("grpA/")]
    b = inst[inst["relpath"].str.startswith("grpB/")]
    assert len(a) == 4 and len(b) == 5
    assert set(map(tuple, a[["orig_group", "orig_sequence", "orig_subject", "orig_scan"]].values)) == {
        ("grpA", "SE_DTI", "subj01", "scan_1")}
    assert set(b["orig_unit"]) == {"grpB/STEAM/subj02/scan_2"}


def test_cdti_single_flat_folder(testdata, tmp_path):
    """input_dir pointing at one scan folder of a cDTI tree keeps the keys."""
    scan = tmp_path / "grpA/dicom/SEQ/subjX/scanY"
    _copy(testdata / DD / "77654033/CT2", scan)
    build_index(scan, tmp_path / "out", layout="cdti", log=_quiet())
    assert set(_units(tmp_path / "out")["orig_unit"]) == {"grpA/SEQ/subjX/scanY"}


def test_xnat_sessions_and_catalog(testdata, tmp_path):
    root = tmp_path / "xnat"
    s1 = _copy(testdata / DD / "77654033/CT2", root / "PROJ/subjA/sess1/SCANS/2/DICOM")
    seg_dir = root / "PROJ/subjA/sess1/ASSESSORS/seg_1/SEG"
    _copy(testdata / DD / "77654033/CR1", seg_dir)
    (root / "PROJ/subjA/sess1/ASSESSORS/seg_1/seg_1_catalog.xml").write_text(
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<cat:Catalog xmlns:cat="http://nrg.wustl.edu/catalog" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"'
        ' ID="seg_1" createdBy="alice" createdTime="2021-03-04T05:06:07.123">'
        '<cat:entries><cat:entry URI="SEG/6154" ID="6154" format="DICOM" content="SEG"'
        ' createdBy="bob" createdTime="2021-03-05T00:00:00"/></cat:entries></cat:Catalog>')
    _copy(testdata / DD / "98892001/CT5N", root / "subjB/sess2/scans/3-T1/resources/DICOM/files")
    s3 = _copy(testdata / DD / "98892001/CT2N", root / "PROJ2/arc001/sess3/SCANS/1/DICOM")
    assert detect_layout(root) == "xnat"
    build_index(root, tmp_path / "out", log=_quiet())
    inst = _units(tmp_path / "out").set_index("relpath")
    rel = lambda p: str(p.relative_to(root))  # noqa: E731
    assert inst.loc[rel(s1[0]), "orig_unit"] == "xnat/PROJ/subjA/sess1"
    assert inst.loc["PROJ/subjA/sess1/ASSESSORS/seg_1/SEG/6154", "orig_unit"] == "xnat/PROJ/subjA/sess1"
    assert set(inst.loc[inst.index.str.startswith("subjB/"), "orig_unit"]) == {"xnat/xnat/subjB/sess2"}
    pid = str(_header(s3[0]).PatientID)
    assert inst.loc[rel(s3[0]), "orig_unit"] == f"xnat/PROJ2/{pid}/sess3"
    unr = pd.read_csv(tmp_path / "out/private/index/unreadable.csv")
    assert unr["relpath"].str.endswith("seg_1_catalog.xml").any()

    cat = read_xnat_catalog(root / "PROJ/subjA/sess1/ASSESSORS/seg_1/seg_1_catalog.xml")
    assert cat["createdBy"] == "alice" and cat["createdTime"] == "2021-03-04T05:06:07.123"
    assert cat["entries"][0]["URI"] == "SEG/6154" and cat["entries"][0]["createdBy"] == "bob"


def test_xnat_catalog_fields_from_entry_or_elements(tmp_path):
    p = tmp_path / "catalog.xml"
    p.write_text('<Catalog xmlns="http://nrg.wustl.edu/catalog"><entries>'
                 '<entry URI="a.dcm" createdBy="carol" createdTime="2022-01-01T00:00:00"/></entries></Catalog>')
    assert read_xnat_catalog(p)["createdBy"] == "carol"
    p.write_text('<x:Catalog xmlns:x="urn:x"><x:createdBy>dave</x:createdBy>'
                 '<x:createdTime>2023-02-02</x:createdTime></x:Catalog>')
    cat = read_xnat_catalog(p)
    assert (cat["createdBy"], cat["createdTime"]) == ("dave", "2023-02-02")


def test_exam_folders(testdata, tmp_path):
    root = tmp_path / "exams"
    e1 = _copy(testdata / DD / "77654033/CT2", root / "exam_one")
    e2 = _copy(testdata / DD / "98892001/CT5N", root / "exam_two")
    _copy(testdata / DD / "98892001/CT2N", root / "exam_two/scout")   # same study
    assert detect_layout(root) == "exam"
    build_index(root, tmp_path / "out", log=_quiet())
    inst = _units(tmp_path / "out")
    expect = {("exam", "exam", str(_header(e1[0]).PatientID), "exam_one"),
              ("exam", "exam", str(_header(e2[0]).PatientID), "exam_two")}
    got = set(map(tuple, inst[["orig_group", "orig_sequence", "orig_subject", "orig_scan"]].values))
    assert got == expect


def test_dicom_hierarchy_fallback(testdata, tmp_path):
    root = tmp_path / "mixed"
    files = _copy(testdata / DD / "98892003/MR1", root / "folder")   # three studies in one folder
    assert detect_layout(root) == "dicom"
    build_index(root, tmp_path / "out", log=_quiet())
    inst = _units(tmp_path / "out").set_index("relpath")
    for f in files:
        ds = _header(f)
        assert inst.loc[f"folder/{f.name}", "orig_unit"] == f"dicom/dicom/{ds.PatientID}/{ds.StudyInstanceUID}"
    assert inst["orig_scan"].nunique() == 3


def test_rules_without_files():
    assert detect_layout_from_relpaths(["a/dicom/S/p/s/f1"]) == "cdti"
    assert detect_layout_from_relpaths(["p/s/SCANS/1/DICOM/f"]) == "xnat"
    assert detect_layout_from_relpaths(["e1/f", "e2/f"], ["1.2", "1.3"]) == "exam"
    assert detect_layout_from_relpaths(["e1/f", "e1/g"], ["1.2", "1.3"]) == "dicom"
    assert detect_layout_from_relpaths(["f", "g"], ["1.2", "1.2"]) == "dicom"
    hdr = {"PatientID": "P/1", "IssuerOfPatientID": "HOSP", "StudyInstanceUID": "1.2.3"}
    assert unit_for("x/y", hdr, "dicom") == ("dicom", "dicom", "P_1@HOSP", "1.2.3")
    assert unit_for("file", {}, "exam") == ("dicom", "dicom", "unknown", "unknown-study")
    assert assign_units(["a/dicom/S/p/s/f"], [{}], "auto") == [("a", "S", "p", "s")]
    with pytest.raises(ConfigError):
        unit_for("a", {}, "bogus")
