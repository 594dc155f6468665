"""Issue 12 item 2: the leak verifier raises no false alarm on equipment and code words,
and a real failure says what was found, where it came from and what to do.

The index is built from real GE files (dcm_qa_ge, Manufacturer "GE MEDICAL
SYSTEMS", model "SIGNA Pioneer") placed in vendor-named folders; share/ holds a
dcm2niix-like sidecar that uses the same words.
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pydicom
import pytest

from dicomprep.verify.identifiers import IdentifierSet
from dicomprep.verify.share import check_share, verify_share
from dicomprep.deid.audit import build_audit
from dicomprep.errors import DicomprepError

SECRET = b"test-secret-0123456789abcdef-xyz"


def _index(testdata: Path, out: Path, subject: str) -> None:
    rows = []
    for f in sorted((testdata / "dcm_qa_ge" / "In" / "01_Ax_DWI_TENSOR_R2").iterdir())[:3]:
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        rows.append({"path": str(f), "orig_group": "ge", "orig_sequence": "GE_DTI", "orig_subject": subject,
                     "orig_scan": "scans", "orig_unit": f"ge/GE_DTI/{subject}/scans",
                     **{k: str(ds.get(k, "")) for k in ("PatientName", "PatientID", "Manufacturer",
                                                        "ManufacturerModelName", "InstitutionName",
                                                        "StationName", "StudyDate", "Modality")}})
    (out / "private" / "index").mkdir(parents=True)
    pd.DataFrame(rows).to_parquet(out / "private" / "index" / "instances.parquet")
    sidecar = {"Modality": "MR", "Manufacturer": "GE", "ManufacturersModelName": "SIGNA Pioneer",
               "PhaseEncodingPolarityGE": "Unflipped", "SeriesDescription": "GE DTI scans",
               "ge": {"dti": 1}, "SIGNA_Pioneer": 2, "CT": "mr"}
    nii = out / "share" / "nifti" / "ge" / "GE_DTI" / "P12345678" / "S1"
    nii.mkdir(parents=True)
    (nii / "dwi.json").write_text(json.dumps(sidecar))


def test_vendor_folders_and_code_words_raise_no_alarm(testdata, tmp_path):
    out = tmp_path / "OUT"
    _index(testdata, out, "SIGNA_Pioneer")
    result = verify_share(out)
    assert result["status"] == "pass", result["hits"]
    assert json.loads((out / "share" / "verification.json").read_text())["status"] == "pass"
    ids = IdentifierSet()
    ids.add("equipment", "GE MEDICAL SYSTEMS")
    ids.add("equipment", "Skyra")  # ManufacturerModelName of another series
    for folder in ("ge", "GE", "GE_DTI", "dicom", "scans", "ct", "mr", "dti", "Siemens Skyra", "dicom-scans"):
        ids.add("folder", folder)
    ids.add("folder", "subjKowalczyk")
    assert ids.effective()["folder"] == {"subjKowalczyk"}


def test_a_real_leak_names_kind_file_source_and_fix(testdata, tmp_path, capsys):
    out = tmp_path / "OUT"
    _index(testdata, out, "Kowalczyk_ge")
    leak = out / "share" / "nifti" / "ge" / "GE_DTI" / "P12345678" / "S1" / "dwi.json"
    leak.write_text(json.dumps({"Kowalczyk_ge": 1, "Modality": "MR"}))
    with pytest.raises(DicomprepError) as err:
        check_share(out, config={})
    written = json.loads((out / "share" / "verification.json").read_text())  # written on a failure too
    assert written["status"] == "fail" and written["n_hits"] == 1
    hit = written["hits"][0]
    assert hit["kind"] == "folder" and hit["file"].endswith("dwi.json") and "JSON key" in hit["where"]
    assert "input folder name (subject level)" in hit["source"]
    assert "verify.safe_values" in hit["fix"] and "deid.keep_folder_names" in hit["fix"]
    assert "Kowalczyk" not in json.dumps(written)  # the value never reaches share/
    assert written["what_to_do"] and "verify.safe_values" in written["what_to_do"][0]
    message = str(err.value)  # what the terminal shows
    assert "dwi.json: folder" in message and "input folder name (subject level)" in message
    assert "'Kowalczyk_ge'" in message and "verify.safe_values" in message
    private = json.loads((out / "private" / "logs" / "verification.json").read_text())  # survives a failed job
    assert private["status"] == "fail" and private["hits"][0]["values"] == ["Kowalczyk_ge"]
    log = (out / "private" / "logs" / "verify.log").read_text()
    assert "'Kowalczyk_ge'" in log and "input folder name (subject level)" in log
    # declared safe: searched no more, counted in verification.json, recorded in the audit
    config = {"verify": {"safe_values": ["Kowalczyk_ge"]}, "deid": {}}
    result = check_share(out, config=config)
    assert result["status"] == "pass" and result["declared_safe"] == 1
    audit = build_audit(config, [], secret=SECRET, n_units=0)
    assert audit["verify"]["safe_values"] == ["Kowalczyk_ge"]


def test_verification_json_is_written_when_the_scan_cannot_start(tmp_path):
    (tmp_path / "share").mkdir()
    with pytest.raises(DicomprepError, match="instances.parquet"):
        verify_share(tmp_path)
    written = json.loads((tmp_path / "share" / "verification.json").read_text())
    assert written["status"] == "error" and "instances.parquet" in written["error"]
