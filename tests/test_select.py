"""Cohort selection: conditions, subject lists, unit keys, incremental writes."""
from __future__ import annotations

import pandas as pd
import pytest

from dicomprep.deid.pseudonym import DEMO_SECRET, patient_pseudonym
from dicomprep.errors import ConfigError, SecretMissing
from dicomprep.select import build_units, condition_mask, select_series
from dicomprep.units import unit_sources


def _series():
    return pd.DataFrame({
        "orig_unit": ["g/SE/DOE_J/scan1", "g/SE/DOE_J/scan1", "g/STEAM/ROE_R/scan2"],
        "orig_group": ["g", "g", "g"], "orig_sequence": ["SE", "SE", "STEAM"],
        "orig_subject": ["DOE_J", "DOE_J", "ROE_R"], "orig_scan": ["scan1", "scan1", "scan2"],
        "series_key": ["k1", "k2", "k3"], "series_id": ["s001", "s002", "s003"],
        "SeriesNumber": [1, 2, 3], "Modality": ["MR", "CT", "MR"], "kind": ["dwi", "ct_axial", "dwi"],
        "SeriesDescription": ["DTI steam", "Head 5mm", "localizer"], "slice_spacing": [8.0, 5.0, 1.0],
        "PatientID": ["123", "123", "456"], "IssuerOfPatientID": ["", "", ""],
        "StudyInstanceUID": ["1.2", "1.2", "1.3"], "n_instances": [10, 20, 30],
    })


def _instances():
    return pd.DataFrame({
        "path": ["/in/a", "/in/b", "/in/c"], "series_key": ["k1", "k2", "k3"],
        "orig_unit": ["g/SE/DOE_J/scan1", "g/SE/DOE_J/scan1", "g/STEAM/ROE_R/scan2"],
    })


def _write_index(out):
    idx = out / "private" / "index"
    idx.mkdir(parents=True)
    _series().to_parquet(idx / "series.parquet")
    _instances().to_parquet(idx / "instances.parquet")


def test_conditions():
    s = _series()
    assert list(condition_mask(s, "Modality", "MR", where="t")) == [True, False, True]
    assert list(condition_mask(s, "SeriesNumber", [1, 3], where="t")) == [True, False, True]
    assert list(condition_mask(s, "SeriesDescription", {"regex": "^dti|head"}, where="t")) == [True, True, False]
    assert list(condition_mask(s, "slice_spacing", {"min": 2, "max": 6}, where="t")) == [False, True, False]
    with pytest.raises(ConfigError, match="no series column 'Modalty'"):
        condition_mask(s, "Modalty", "MR", where="select.include")


def test_include_exclude_and_subject_file(tmp_path):
    subjects = tmp_path / "subjects.txt"
    subjects.write_text("# wanted\nDOE_J\n")
    kept, left = select_series(_series(), {"include": {"Modality": "MR"}, "subjects_file": str(subjects)})
    assert list(kept["series_key"]) == ["k1"]
    assert dict(zip(left["series_key"], left["reason"])) == {
        "k2": "not included by select.include.Modality", "k3": "subject not in select.subjects_file"}
    kept, _ = select_series(_series(), {"exclude": {"SeriesDescription": {"regex": "local"}}})
    assert list(kept["series_key"]) == ["k1", "k2"]


def test_units_are_pseudonymous_and_stable(tmp_path):
    out = tmp_path / "out"
    _write_index(out)
    cfg = {"anonymisation": True, "deid": {"secret_file": None, "keep_folder_names": False}, "select": {}}
    units = build_units(out, cfg, demo=True)
    assert len(units) == 2
    doe = units[units["orig_subject"] == "DOE_J"].iloc[0]
    assert doe["subject"] == patient_pseudonym(DEMO_SECRET, "123", "")
    assert doe["unit"].startswith("g/SE/") and "DOE" not in doe["unit"] and "scan1" not in doe["unit"]
    lists = out / "private" / "units" / doe["unit"] / "instances.parquet"
    mtime = lists.stat().st_mtime_ns
    again = build_units(out, cfg, demo=True)
    assert list(again["unit"]) == list(units["unit"])
    assert lists.stat().st_mtime_ns == mtime, "an unchanged unit's list must not be rewritten"


def test_units_need_a_secret_when_anonymising(tmp_path, monkeypatch):
    monkeypatch.delenv("DICOMPREP_SECRET", raising=False)
    out = tmp_path / "out"
    _write_index(out)
    with pytest.raises(SecretMissing, match="DICOMPREP_SECRET"):
        build_units(out, {"anonymisation": True, "deid": {}, "select": {}}, demo=False)


def test_unit_sources_prefers_deidentified_copies(tmp_path):
    out = tmp_path / "out"
    _write_index(out)
    units = build_units(out, {"anonymisation": True, "deid": {}, "select": {}}, demo=True)
    unit = units[units["orig_subject"] == "DOE_J"].iloc[0]["unit"]
    from dicomprep.paths import layout

    man = layout(out).stage_manifest("deid", unit)
    man.parent.mkdir(parents=True)
    pd.DataFrame({"path": ["/in/a", "/in/b"], "series_key": ["k1", "k2"], "output_path": ["share/dicom/x/1.dcm", ""],
                  "status": ["written", "dropped"], "reason": ["", "localizer"]}).to_parquet(man)
    src = unit_sources(out, unit, anonymisation=True)
    assert list(src["source_path"]) == [str(man.parent / "share/dicom/x/1.dcm")]   # in the deid stage folder
    src = unit_sources(out, unit, anonymisation=False)
    assert sorted(src["source_path"]) == ["/in/a", "/in/b"]


def test_segmentation_joins_the_unit_of_its_source(tmp_path, testdata):
    """dcmqi's liver SEG filed in another exam folder than its CT source ends up
    in the CT's unit (it must be decoded on that grid and de-identified with it)."""
    import shutil

    from dicomprep.index import build_index

    inp = tmp_path / "in"
    shutil.copytree(testdata / "dcmqi" / "segmentations" / "ct-3slice", inp / "exam_ct")
    (inp / "exam_seg").mkdir()
    shutil.copy(testdata / "dcmqi" / "segmentations" / "liver.dcm", inp / "exam_seg" / "liver.dcm")
    out = tmp_path / "out"
    build_index(inp, out, layout="exam")
    series = pd.read_parquet(out / "private" / "index" / "series.parquet")
    assert series["orig_unit"].nunique() == 2                   # the folders put them apart
    units = build_units(out, {"anonymisation": True, "deid": {}, "select": {}}, demo=True)
    assert len(units) == 1 and set(units["kinds"].iloc[0].split(";")) == {"ct_axial", "seg"}
    inst = pd.read_parquet(out / "private" / "units" / units["unit"].iloc[0] / "instances.parquet")
    assert len(inst) == 4


def test_a_short_secret_in_the_environment_is_refused(monkeypatch):
    """As a short secret file is: a probe's `DICOMPREP_SECRET=abc` ran a whole cohort."""
    from dicomprep.deid.pseudonym import load_secret

    monkeypatch.setenv("DICOMPREP_SECRET", "abc")
    with pytest.raises(SecretMissing, match="DICOMPREP_SECRET holds fewer than 16 bytes"):
        load_secret(None)
    monkeypatch.setenv("DICOMPREP_SECRET", "0123456789abcdef")
    assert load_secret(None) == b"0123456789abcdef"
