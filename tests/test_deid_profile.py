"""PS3.15 Annex E profile table, options, presets, value transforms, allowlist."""
from __future__ import annotations

import datetime as dt
import importlib

import pytest
from pydicom.datadict import tag_for_keyword as tag

from dicomprep.deid import pseudonym
from dicomprep.deid.dates import cap_age, shift_date, shift_date_time_pair, shift_datetime, shift_time
from dicomprep.deid.presets import PRESETS, get_preset
from dicomprep.deid.profile import (
    ANNEX_E_TABLE, CID7050, ProfileOptions, build_plan, load_annex_e_table, load_private_allowlist,
    resolve_code,
)
from dicomprep.errors import ConfigError


def test_table_is_dicom_anonymizers_newest():
    """The codes come from dicom-anonymizer's table module, not a hand-typed list."""
    module = importlib.import_module(f"dicomanonymizer.dicom_anonymization_databases.{ANNEX_E_TABLE}")
    codes = load_annex_e_table()
    assert len(codes) >= len(module.X_TAGS)
    assert codes[tag("PatientBirthDate")] == "Z"  # PS3.15 E.1-1: Patient's Birth Date Z
    assert codes[tag("SOPInstanceUID")] == "U"
    assert codes[tag("InstitutionName")] == "X/Z/D"
    assert codes[tag("SourceImageSequence")] == "X/Z/U*"
    assert codes[0x60003000] == "X"  # overlay data, repeating group expanded


@pytest.mark.parametrize("code,typ,expected", [
    ("X/Z", None, "X"), ("X/Z", 2, "Z"), ("X/D", 1, "D"), ("X/Z/D", 2, "Z"), ("X/Z/D", 1, "D"),
    ("X/Z/D", None, "X"), ("Z/D", None, "Z"), ("Z/D", 1, "D"), ("X/Z/U*", None, "U"), ("D", None, "D"),
])
def test_combined_code_resolution(code, typ, expected):
    assert resolve_code(code, typ, None) == expected


def test_basic_plan_defaults():
    plan = build_plan({})
    assert plan.top[tag("PatientID")] == "P" and plan.top[tag("PatientName")] == "P"
    assert plan.top[tag("StudyDate")] == "C"  # longitudinal modified dates is the default
    assert plan.top[tag("PatientBirthDate")] == "Z"  # birth date is never shifted
    assert plan.top[tag("InstitutionName")] == "X"
    assert plan.top_enhanced[tag("DeviceSerialNumber")] == "D"  # Type 1 in Enhanced General Equipment
    assert plan.top[tag("OriginalAttributesSequence")] == "X"
    assert plan.top[tag("SeriesDescription")] == "X"
    assert not plan.remove_all_private


def test_options_change_actions():
    plan = build_plan({"retain_longitudinal_modified_dates": False, "retain_patient_characteristics": True,
                       "retain_device_identity": True, "retain_institution_identity": True,
                       "clean_descriptors": True, "retain_uids": True, "retain_safe_private": False})
    assert plan.top[tag("StudyDate")] == "Z"
    assert plan.top[tag("PatientSex")] == "K" and plan.top[tag("PatientAge")] == "A"
    assert plan.top[tag("DeviceSerialNumber")] == "K" and plan.top[tag("InstitutionName")] == "K"
    assert plan.top[tag("SeriesDescription")] == "C"
    assert plan.top[tag("SOPInstanceUID")] == "K"
    assert plan.remove_all_private
    codes = [c for c, _ in plan.options.method_codes()]
    assert codes == ["113100", "113108", "113109", "113112", "113110", "113105", "113103"]


def test_unknown_option_is_a_config_error():
    with pytest.raises(ConfigError, match="deid.options"):
        ProfileOptions.from_config({"retain_everything": True})


def test_cid7050_codes():
    assert CID7050["basic"][0] == "113100"
    assert CID7050["retain_longitudinal_modified_dates"][0] == "113107"
    assert CID7050["retain_safe_private"][0] == "113111"
    assert CID7050["clean_graphics"][0] == "113103"


def test_presets():
    orbit = build_plan({}, preset="orbitct")
    assert orbit.remove_all_private
    assert orbit.top[tag("InstitutionName")] == "D" and orbit.top[tag("AccessionNumber")] == "D"
    assert orbit.top[tag("SOPInstanceUID")] == "U"  # layered on the basic profile
    only = build_plan({}, preset="orbitct", preset_only=True)
    assert tag("SOPInstanceUID") not in only.top and only.top[tag("OperatorsName")] == "D"
    cdti = build_plan({}, preset="cdti")
    assert cdti.top[tag("PatientAge")] == "A" and cdti.top[tag("PatientWeight")] == "K"
    assert cdti.top[tag("SeriesDescription")] == "C" and not cdti.remove_all_private
    for p in PRESETS.values():
        for kw in p.keyword_actions:
            assert tag(kw) is not None, kw
    with pytest.raises(ConfigError):
        get_preset("nope")


def test_date_time_shifts_preserve_intervals():
    delta = dt.timedelta(days=-800, seconds=-(3600 * 2 + 7))
    # hand-computed: 2020-03-01 - 800 days = 2017-12-22 (731 days back to 2018-03-01, then 69)
    assert shift_date("20200301", -800) == "20171222"
    a = shift_date_time_pair("20200301", "010000", delta)  # 01:00 - 2 h 7 s: the day before
    b = shift_date_time_pair("20200302", "010000.25", delta)
    moment = lambda d, t: dt.datetime.strptime(d + t[:6], "%Y%m%d%H%M%S")  # noqa: E731
    assert moment(*b) - moment(*a) == dt.timedelta(days=1)
    assert a == ("20171221", "225953") and b == ("20171222", "225953.25")
    assert shift_time("1200", -3600 * 2) == "1000"  # precision kept
    assert shift_datetime("20200301220000.5+0100", delta) == "20171222195953.5+0100"
    assert shift_datetime("20200301", delta, -800) == "20171222"
    assert shift_datetime("2020", delta, -800) == "2017"
    secret = b"k" * 20
    for pid in ("a", "b", "c", "d"):
        s = pseudonym.time_offset_seconds(secret, pid)
        assert -4 * 3600 <= s <= -15 * 60


def test_age_cap():
    assert cap_age("095Y") == "090Y" and cap_age("089Y") == "089Y" and cap_age("999M") == "999M"
    assert cap_age("012M") == "012M" and cap_age("garbage") == ""


def test_allowlist(tmp_path):
    keys = load_private_allowlist()
    assert ("SIEMENS CSA HEADER", 0x0029, 0x10) in keys
    assert ("GEMS_PARM_01", 0x0043, 0x39) in keys
    empty = tmp_path / "empty.csv"
    empty.write_text("creator,group,element,name,source\n")
    assert load_private_allowlist(empty) == frozenset()
    bad = tmp_path / "bad.csv"
    bad.write_text("creator,group,element,name,source\nX,0028,10,n,s\n")
    with pytest.raises(ConfigError, match="not private"):
        load_private_allowlist(bad)


def test_fixed_length_uid():
    uid = "1.3.12.2.1107.5.2.19.45160.2018091812204221515890105"
    new = pseudonym.uid_pseudonym_fixed_length(b"s" * 20, uid, len(uid))
    assert len(new) == len(uid) and new.startswith("2.25.") and "20180918" not in new


def test_supplement_covers_free_text_annex_e_misses():
    """TrackingID / ContentDescription / SegmentDescription are free text in SEG
    objects; the demo plants names there and the verifier found them."""
    from pydicom.datadict import tag_for_keyword

    from dicomprep.deid.profile import build_plan

    plan = build_plan({})
    nested = plan.actions(depth=1, enhanced=False)
    top = plan.actions(depth=0, enhanced=False)
    assert nested[int(tag_for_keyword("TrackingID"))] == "D"
    assert nested[int(tag_for_keyword("SegmentDescription"))] == "X"
    assert top[int(tag_for_keyword("ContentDescription"))] in ("Z", "X")


def test_every_allowlist_entry_names_a_checked_source():
    """Each shipped entry is vouched for by PS3.15 Table E.3.10-1 or by the dcm2niix constant that reads it."""
    from dicomprep.deid.profile import load_private_allowlist_entries

    entries = load_private_allowlist_entries()
    assert len(entries) == len(load_private_allowlist())  # no duplicate rows
    for key, info in entries.items():
        assert any(s.startswith(("PS3.15 Table E.3.10-1", "dcm2niix nii_dicom.cpp k"))
                   for s in info["source"].split("; ")), (key, info)
    # from the standard's table (checked against its text)
    for key in (("GEMS_ACQU_01", 0x0019, 0x23), ("ELSCINT1", 0x01F1, 0x26), ("Philips PET Private Group", 0x7053, 0x00)):
        assert entries[key]["source"].startswith("PS3.15 Table E.3.10-1")
    # from memory, confirmed by neither: gone
    for key in (("Philips Imaging DD 001", 0x2001, 0x85), ("GEMS_PARM_01", 0x0043, 0x82), ("SIEMENS MR HEADER", 0x0019, 0x15)):
        assert key not in entries
