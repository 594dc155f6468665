"""deid.edits: attribute edits of the shared copy (issue 17, part 4), on a real GE MR file
(dcm_qa_nih: PatientName Test^Regression, InstitutionName NIH)."""
from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import pydicom
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dicomwrite_helpers import new_errors  # noqa: E402

from dicomprep.config import validate_config  # noqa: E402
from dicomprep.deid.dataset import make_deidentifier  # noqa: E402
from dicomprep.deid.instance import deidentify_file  # noqa: E402
from dicomprep.errors import ConfigError  # noqa: E402

SECRET = b"test-secret-for-deid-edits-0123456789"
GE = "dcm_qa_nih/In/20180918GE/mr_0004/axial_epi_fmri_interleaved_i_to_s-00001.dcm"


def _config(edits):
    return validate_config({"input_dir": "demo", "deid": {"edits": edits}})


@pytest.mark.parametrize("edit,words", [
    ({"set": {"PatientName": "Doe^John"}}, ["PatientName", "literal"]),
    ({"set": {"PatientID": "ID-{patient_pseudonym}"}}, ["PatientID", "pseudonym"]),
    ({"set": {"StudyInstanceUID": "1.2.3"}}, ["StudyInstanceUID", "UID"]),
    ({"set": {"StudyDate": "20200101"}}, ["StudyDate", "date"]),
    ({"set": {"InstitutionName": "General Hospital"}}, ["InstitutionName"]),
    ({"replace": {"PatientName": {"pattern": "x", "with": "y"}}}, ["PatientName", "regex"]),
    ({"delete": ["SOPInstanceUID"]}, ["SOPInstanceUID", "references"]),
    ({"set": {"SeriesDescriptoin": "x"}}, ["SeriesDescriptoin", "not a DICOM keyword"]),
    ({"set": {"SeriesDescription": "{PatientNmae}"}}, ["PatientNmae"]),
])
def test_config_check_refuses_edits_that_restore_identifiers(edit, words):
    with pytest.raises(ConfigError) as err:
        _config([edit])
    assert all(w in str(err.value) for w in words), str(err.value)


def test_config_accepts_pseudonym_templates_and_trial_attributes():
    cfg = _config([{"select": {"Modality": "MR"},
                    "set": {"PatientName": "{patient_pseudonym}", "ClinicalTrialSponsorName": "ACME",
                            "ClinicalTrialSubjectID": "{patient_pseudonym}"}}])
    assert cfg["deid"]["edits"][0]["set"]["ClinicalTrialSponsorName"] == "ACME"


def test_edits_are_applied_counted_and_refused_at_run_time(testdata, tmp_path):
    src = testdata / GE
    before = hashlib.sha256(src.read_bytes()).hexdigest()
    cfg = _config([
        {"select": {"Modality": "MR", "SeriesDescription": {"regex": "EPI"}},
         "set": {"ClinicalTrialSponsorName": "ACME Trials", "ClinicalTrialProtocolID": "PROT-01",
                 "ClinicalTrialSiteID": "07", "ClinicalTrialSubjectID": "{patient_pseudonym}",
                 "ClinicalTrialProtocolName": "{Modality} study"},
         "replace": {"SeriesDescription": {"pattern": r"\s*\(.*\)", "with": ""}},
         "delete": ["ImageComments"]},
        # the site name holds "Regression", a part of the original PatientName: refused per file
        {"set": {"ClinicalTrialSiteName": "Regression site"}},
        # not selected: no CT here
        {"select": {"Modality": "CT"}, "set": {"ClinicalTrialCoordinatingCenterName": "never"}},
    ])
    deid = make_deidentifier(cfg, SECRET)
    plain = make_deidentifier(_config([]), SECRET)
    info = deidentify_file(deid, src, tmp_path / "edited.dcm")
    deidentify_file(plain, src, tmp_path / "plain.dcm")
    assert hashlib.sha256(src.read_bytes()).hexdigest() == before          # input untouched
    ds = pydicom.dcmread(tmp_path / "edited.dcm")
    pseudo = info["patient"].pseudonym
    assert ds.ClinicalTrialSponsorName == "ACME Trials"
    assert ds.ClinicalTrialProtocolID == "PROT-01" and ds.ClinicalTrialSiteID == "07"
    assert ds.ClinicalTrialSubjectID == pseudo == ds.PatientName
    assert ds.ClinicalTrialProtocolName == "MR study"
    assert ds.SeriesDescription == "Axial EPI-FMRI"            # original, with "(Interleaved I to S)" cut
    assert "ImageComments" not in ds
    assert ds.ClinicalTrialSiteName == ""     # refused: left empty (Type 2 of the Clinical Trial Subject module)
    assert "ClinicalTrialCoordinatingCenterName" not in ds
    counts = dict(deid.counts)
    assert counts["edit 0: set ClinicalTrialSponsorName"] == 1
    assert counts["edit 0: replace SeriesDescription"] == 1
    refused = [k for k in counts if "refused" in k]
    assert refused and "edit 1: set ClinicalTrialSiteName" in refused[0]
    assert not any(k.startswith("edit 2") for k in counts)
    # apart from the edited attributes, the file is the plain de-identified copy
    plain_ds = pydicom.dcmread(tmp_path / "plain.dcm")
    edited_kw = {"ClinicalTrialSponsorName", "ClinicalTrialProtocolID", "ClinicalTrialSiteID",
                 "ClinicalTrialSubjectID", "ClinicalTrialProtocolName", "SeriesDescription", "ImageComments",
                 "ClinicalTrialSiteName"}
    assert {e.keyword for e in plain_ds if e.keyword not in edited_kw} == \
           {e.keyword for e in ds if e.keyword not in edited_kw}
    assert ds.pixel_array.tobytes() == plain_ds.pixel_array.tobytes()
    # deterministic, valid
    deidentify_file(make_deidentifier(cfg, SECRET), src, tmp_path / "again.dcm")
    assert (tmp_path / "again.dcm").read_bytes() == (tmp_path / "edited.dcm").read_bytes()
    assert not new_errors(tmp_path / "edited.dcm", tmp_path / "plain.dcm")


def test_no_edits_leaves_the_engine_output_unchanged(testdata, tmp_path):
    src = testdata / GE
    deidentify_file(make_deidentifier({"deid": {}}, SECRET), src, tmp_path / "a.dcm")
    deidentify_file(make_deidentifier(_config([{"select": {"Modality": "CT"}, "delete": ["ImageComments"]}]),
                                      SECRET), src, tmp_path / "b.dcm")
    assert (tmp_path / "a.dcm").read_bytes() == (tmp_path / "b.dcm").read_bytes()


def test_audit_lists_the_configured_edits():
    from dicomprep.deid.audit import build_audit

    cfg = _config([{"select": {"Modality": "MR"}, "set": {"ClinicalTrialSponsorName": "ACME"}}])
    audit = build_audit(cfg, [{"written": 1, "actions": {"edit 0: set ClinicalTrialSponsorName": 1}}],
                        secret=SECRET, n_units=1)
    assert audit["edits"][0]["set"] == {"ClinicalTrialSponsorName": "ACME"}
    assert audit["counts"]["actions"]["edit 0: set ClinicalTrialSponsorName"] == 1
