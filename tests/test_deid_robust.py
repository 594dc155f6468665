"""Issue 12 item 1: a value that does not parse as its VR costs that attribute, never the unit.

A vendor's already-anonymised export holds ``***`` in identifying fields. Real
GE DWI files (dcm_qa_ge) are copied, ``***`` is written into a DA, TM, AS, DS,
IS and UI element with pydicom (VR kept), and the whole unit must still be
written, recorded, and converted by dcm2niix.
"""
from __future__ import annotations

import subprocess
from pathlib import Path

import pandas as pd
import pydicom
import pytest
from pydicom.dataelem import RawDataElement
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.tag import Tag

from dicomprep.deid.audit import build_audit
from dicomprep.deid.instance import deidentify_bytes
from dicomprep.deid.unit import deidentify_unit
from dicomprep.deid.dataset import make_deidentifier

SECRET = b"test-secret-0123456789abcdef-xyz"
STARS = ("PatientBirthDate", "StudyDate", "AcquisitionTime", "PatientAge", "PatientWeight", "SeriesNumber",
         "FrameOfReferenceUID")


def _plant_stars(src: Path, dst: Path) -> None:
    ds = pydicom.dcmread(src)
    for kw in STARS:
        tag = tag_for_keyword(kw)
        # a raw element keeps the VR and the bytes exactly as a vendor wrote them
        ds._dict[tag] = RawDataElement(Tag(tag), dictionary_VR(tag), 4, b"*** ", 0, ds.is_implicit_VR,
                                       ds.is_little_endian)
    ds.save_as(dst)
    back = pydicom.dcmread(dst)
    for kw in STARS:
        assert back.data_element(kw).VR == dictionary_VR(tag_for_keyword(kw))


@pytest.fixture()
def starred(testdata, tmp_path) -> list[Path]:
    src = sorted((testdata / "dcm_qa_ge" / "In" / "01_Ax_DWI_TENSOR_R2").iterdir())
    out = tmp_path / "in" / "ge_dti"
    out.mkdir(parents=True)
    files = []
    for f in src:
        dst = out / (f.name + ".dcm")
        _plant_stars(f, dst)
        files.append(dst)
    return files


@pytest.mark.parametrize("cfg", [{"deid": {}}, {"deid": {"preset": "cdti"}},
                                 {"deid": {"options": {"retain_patient_characteristics": True}}}])
def test_stars_cost_the_attribute_not_the_file(starred, cfg):
    data = starred[0].read_bytes()
    fast = make_deidentifier(cfg, SECRET)
    slow = make_deidentifier(cfg, SECRET)
    slow.fast_path = False
    out_fast, _ = deidentify_bytes(fast, data)
    out_slow, _ = deidentify_bytes(slow, data)
    assert out_fast == out_slow  # both paths decide the same, attribute by attribute
    assert fast.counts == slow.counts and fast.notes == slow.notes
    import io

    ds = pydicom.dcmread(io.BytesIO(out_fast))
    for kw in ("StudyDate", "AcquisitionTime"):  # a shift cannot apply: emptied, never kept
        assert kw not in ds or not str(ds.data_element(kw).value or "").strip()
    assert "***" not in str(ds.get("PatientAge", ""))
    assert str(ds.FrameOfReferenceUID).startswith("2.25.")  # replaced like any UID
    assert any("StudyDate" in n for n in fast.notes) and any("AcquisitionTime" in n for n in fast.notes)
    assert all("***" not in n for n in fast.notes)  # the notes never repeat a value


def test_starred_unit_is_written_indexed_and_converted(starred, tmp_path):
    from dicomprep.convert.dcm2niix import dcm2niix_binary
    from dicomprep.index import build_index

    out = tmp_path / "out"
    build_index(tmp_path / "in", out)  # the index's header reader must not trip either
    instances = pd.read_parquet(out / "private" / "index" / "instances.parquet")
    assert len(instances) == len(starred)
    instances["series_key"] = "k1"
    instances["series_id"] = "s001"
    deid = make_deidentifier({"deid": {}}, SECRET)
    manifest, counts, _ = deidentify_unit(instances, share_dir=tmp_path / "share", deid=deid,
                                          drop_cfg={"max_instances": 0})
    assert (manifest["status"] == "written").all(), manifest[["status", "reason"]]
    assert manifest["reason"].str.startswith("value_not_parsed:").all()
    assert counts["written"] == len(starred)
    assert counts["values_not_parsed"]["StudyDate"] == len(starred)
    audit = build_audit({"deid": {}}, [counts], secret=SECRET, n_units=1)
    assert audit["values_not_parsed"]["AcquisitionTime"] == len(starred)
    nii = tmp_path / "nii"
    nii.mkdir()
    proc = subprocess.run([dcm2niix_binary(), "-z", "n", "-f", "x", "-o", str(nii), str(tmp_path / "share")],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    import nibabel as nib

    img = nib.load(nii / "x.nii")
    assert img.shape == (256, 256, 2, 7)  # the reference of dcm_qa_ge: 7 volumes of 2 slices
    assert (nii / "x.bval").read_text().split() == ["0"] + ["1000"] * 6
