"""Attribute edits of the shared copy (config ``deid.edits``), after de-identification.

Each edit names the series it applies to and what to do::

    deid:
      edits:
        - select: {Modality: CT}                       # conditions on the ORIGINAL headers
          set:                                         # keyword: value or template
            ClinicalTrialSponsorName: ACME
            ClinicalTrialProtocolID: PROT-01
            ClinicalTrialSiteID: "07"
            ClinicalTrialSubjectID: "{patient_pseudonym}"
          replace:                                     # keyword: {pattern, with} (Python regex)
            SeriesDescription: {pattern: "(?i)\\\\s*acme hospital", with: ""}
          delete: [ProtocolName]

* ``select`` takes the forms of the ``select:`` conditions (value, list,
  ``{regex}``, ``{min, max}``), evaluated on the original file's attributes
  (nothing of them is written); empty or absent selects every series.
* ``set`` values are text; ``{patient_pseudonym}`` and ``{Keyword}`` (a
  DICOM keyword, read from the *de-identified* data set) are filled in.
* ``replace`` applies ``re.sub(pattern, with, value)`` to the de-identified
  value, or, when the profile removed the attribute, to the original value
  (e.g. to keep a SeriesDescription without a site name).
* ``delete`` removes attributes.

Edits act on the de-identified copy only: the input is never touched. Every
edit that changes a file is counted in the de-identification counts (so in
``audit.yaml``: ``edit N: set Keyword``). An edit that would put back an
identifier the profile removed is refused:

* at config check time (:func:`check_edits`) when the config shows it: a
  literal ``set`` of an attribute the profile pseudonymises (PatientName,
  PatientID, UIDs), a person name, a date/time the profile shifts, or a
  direct identifier (birth date, address, accession number, institution...);
  deleting the UIDs that keep references valid;
* at run time (:func:`apply_edits`) when the value it writes contains an
  identifying string of the original file (patient name parts, IDs, dates in
  several spellings, institution, station): the edit is skipped for that
  file, the de-identified value stays, and the refusal is counted with its reason.
"""
from __future__ import annotations

import io
import logging
import re
import string
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import pydicom
from pydicom.datadict import dictionary_VR, tag_for_keyword

from ..errors import ConfigError
from ..select import condition_mask
from .encode import encode_file
from .patient import identifier_pattern
from .profile import plan_from_config, vr_of

#: Attributes never set to a literal or by a regex: they identify the patient, or a
#: person, or a place, even when the profile blanks rather than pseudonymises them.
IDENTITY_KEYWORDS = frozenset({
    "PatientName", "PatientID", "IssuerOfPatientID", "OtherPatientIDs", "OtherPatientIDsSequence",
    "OtherPatientNames", "PatientBirthName", "PatientMotherBirthName", "PatientBirthDate", "PatientBirthTime",
    "PatientAddress", "PatientTelephoneNumbers", "PatientTelecomInformation", "MedicalRecordLocator",
    "AccessionNumber", "InstitutionName", "InstitutionAddress", "InstitutionalDepartmentName", "StationName",
    "DeviceSerialNumber", "ReferringPhysicianName", "PerformingPhysicianName", "OperatorsName",
    "NameOfPhysiciansReadingStudy", "PhysiciansOfRecord", "RequestingPhysician", "MilitaryRank",
    "EthnicGroup", "Occupation", "PatientReligiousPreference", "CountryOfResidence", "RegionOfResidence",
    "AdditionalPatientHistory", "PatientComments",
})
#: UIDs that keep references (SEG → source, frame of reference) valid: never deleted.
REFERENCE_UIDS = frozenset({"SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID",
                            "FrameOfReferenceUID"})
#: Type 2 attributes of the Clinical Trial modules (PS3.3 C.7.1.3 Subject, C.7.2.3
#: Study, C.7.3.2 Series): when an edit creates a module, its missing Type 2
#: attributes are added empty so the file stays valid.
CLINICAL_TRIAL_TYPE2 = {
    "subject": ("ClinicalTrialSponsorName", "ClinicalTrialProtocolID", "ClinicalTrialProtocolName",
                "ClinicalTrialSiteID", "ClinicalTrialSiteName"),
    "study": ("ClinicalTrialTimePointID",),
    "series": ("ClinicalTrialCoordinatingCenterName",),
}
_TRIAL_MODULE = {
    **{k: "subject" for k in CLINICAL_TRIAL_TYPE2["subject"] + ("ClinicalTrialSubjectID",
                                                                 "ClinicalTrialSubjectReadingID")},
    **{k: "study" for k in ("ClinicalTrialTimePointID", "ClinicalTrialTimePointDescription")},
    **{k: "series" for k in ("ClinicalTrialCoordinatingCenterName", "ClinicalTrialSeriesID",
                             "ClinicalTrialSeriesDescription")},
}
#: Placeholders besides DICOM keywords.
PLACEHOLDERS = frozenset({"patient_pseudonym"})

log = logging.getLogger("dicomprep.deid.edits")


@dataclass
class Edit:
    """One compiled ``deid.edits`` item."""

    number: int
    select: dict = field(default_factory=dict)
    set: dict = field(default_factory=dict)
    replace: dict = field(default_factory=dict)          # keyword -> (compiled pattern, with)
    delete: list = field(default_factory=list)


def _placeholders(template: str) -> list[str]:
    try:
        return [name for _, name, _, _ in string.Formatter().parse(template) if name]
    except ValueError as exc:
        raise ConfigError(f"bad template {template!r}: {exc}; write placeholders as {{patient_pseudonym}} "
                          "or {Keyword}, and a literal brace as {{ or }}.") from None


def _tag(keyword: str, where: str) -> int:
    tag = tag_for_keyword(keyword)
    if tag is None:
        raise ConfigError(f"config: {where}: {keyword!r} is not a DICOM keyword (e.g. SeriesDescription, "
                          "ClinicalTrialSponsorName).")
    return int(tag)


def _protected(keyword: str, plan) -> str:
    """Why a literal value of ``keyword`` would put back an identifier, or ''."""
    tag = _tag(keyword, "deid.edits")
    action = plan.top.get(tag, "K") if plan is not None else "K"
    vr = vr_of(tag) or ""
    if keyword in IDENTITY_KEYWORDS:
        return "it identifies the patient, a person or a place"
    if action == "P":
        return "the profile replaces it by a pseudonym"
    if action == "U" or vr == "UI":
        return "the profile replaces UIDs by keyed UIDs (a literal UID would break references or restore one)"
    if vr == "PN":
        return "it is a person name"
    if vr in ("DA", "DT", "TM") and action != "K":
        return "the profile shifts or removes dates and times (a literal one could restore the real date)"
    return ""


def check_edits(config: dict, plan=None) -> list[Edit]:
    """Validate and compile ``deid.edits``; raise :class:`ConfigError` naming the edit,
    keyword and reason when one would put back an identifier the profile removed."""
    items = ((config or {}).get("deid", {}) or {}).get("edits") or []
    if not items:
        return []
    if plan is None:
        plan = plan_from_config(config)
    out = []
    for n, item in enumerate(items):
        where = f"deid.edits[{n}]"
        edit = Edit(number=n, select=dict(item.get("select") or {}))
        for kw, value in (item.get("set") or {}).items():
            _tag(kw, f"{where}.set")
            text = "" if value is None else str(value)
            names = _placeholders(text)
            for name in names:
                if name not in PLACEHOLDERS:
                    _tag(name, f"{where}.set.{kw} placeholder {{{name}}}")
            literal = re.sub(r"\{[^{}]*\}", "", text).strip()
            why = _protected(kw, plan)
            if why and literal:
                raise ConfigError(
                    f"config: {where}.set.{kw}: refused, a literal value would put back an identifier the "
                    f"de-identification profile removed ({why}). Set it from a template holding only "
                    "placeholders, e.g. '{patient_pseudonym}', or leave it to the profile.")
            edit.set[kw] = text
        for kw, rule in (item.get("replace") or {}).items():
            _tag(kw, f"{where}.replace")
            why = _protected(kw, plan)
            if why:
                raise ConfigError(f"config: {where}.replace.{kw}: refused, a regex edit of this attribute could "
                                  f"put back an identifier the profile removed ({why}).")
            if not isinstance(rule, dict) or "pattern" not in rule:
                raise ConfigError(f"config: {where}.replace.{kw}: write {{pattern: REGEX, with: TEXT}}.")
            try:
                rx = re.compile(str(rule["pattern"]))
            except re.error as exc:
                raise ConfigError(f"config: {where}.replace.{kw}.pattern is not a valid regular expression: "
                                  f"{exc}.") from None
            edit.replace[kw] = (rx, str(rule.get("with", "") or ""))
        for kw in item.get("delete") or []:
            _tag(kw, f"{where}.delete")
            if kw in REFERENCE_UIDS:
                raise ConfigError(f"config: {where}.delete: {kw} cannot be deleted: it keeps references "
                                  "(SEG → source, frame of reference) and the file valid.")
            edit.delete.append(kw)
        if not (edit.set or edit.replace or edit.delete):
            raise ConfigError(f"config: {where}: the edit does nothing; give set, replace or delete.")
        out.append(edit)
    return out


def audit_summary(config: dict) -> list[dict]:
    """The configured edits for ``audit.yaml``: selection, the keywords and templates
    (config values only: they passed :func:`check_edits`), never per-file values."""
    items = ((config or {}).get("deid", {}) or {}).get("edits") or []
    return [{"select": dict(i.get("select") or {}), "set": dict(i.get("set") or {}),
             "replace": {k: dict(v) for k, v in (i.get("replace") or {}).items()},
             "delete": list(i.get("delete") or [])} for i in items]


def _selected(edit: Edit, original) -> bool:
    if not edit.select:
        return True
    row = {}
    for kw in edit.select:
        v = original[kw].value if kw in original else None
        if type(v).__name__ == "MultiValue":
            v = [str(x) for x in v]
        row[kw] = [v]
    table = pd.DataFrame(row)
    for kw, cond in edit.select.items():
        ok = bool(condition_mask(table, kw, cond, where=f"deid.edits[{edit.number}].select").iloc[0])
        if not ok and isinstance(cond, str) and isinstance(row[kw][0], list):
            ok = cond in row[kw][0]               # one value of a multi-valued attribute
        if not ok:
            return False
    return True


class _Fields(dict):
    def __init__(self, ds, pseudonym: str):
        super().__init__(patient_pseudonym=pseudonym)
        self.ds = ds

    def __missing__(self, key):
        v = self.ds[key].value if key in self.ds else None
        if v is None:
            return ""
        if type(v).__name__ == "MultiValue":
            return "\\".join(str(x) for x in v)
        return str(v)


def _set_value(ds, keyword: str, text: str) -> None:
    vr = dictionary_VR(keyword)
    if vr in ("US", "SS", "UL", "SL", "IS") and text.strip():
        value: Any = int(text) if "\\" not in text else [int(x) for x in text.split("\\")]
    elif vr in ("FL", "FD") and text.strip():
        value = float(text) if "\\" not in text else [float(x) for x in text.split("\\")]
    elif vr == "SQ":
        raise ValueError(f"{keyword} is a sequence; it can be deleted but not set to text")
    else:
        value = text if "\\" not in text else text.split("\\")
    setattr(ds, keyword, value)


def apply_edits(deid, original_bytes: bytes, out_bytes: bytes, info: dict) -> bytes:
    """The de-identified file ``out_bytes`` with the edits of ``deid.edits`` applied.

    Returns ``out_bytes`` unchanged (the same object) when no edit is configured
    or none selects this file. ``info['patient']`` is the engine's patient
    context (its pseudonym fills ``{patient_pseudonym}``).
    """
    edits = getattr(deid, "edits", None)
    if not edits:
        return out_bytes
    original = pydicom.dcmread(io.BytesIO(original_bytes), force=True, stop_before_pixels=True)
    chosen = [e for e in edits if _selected(e, original)]
    if not chosen:
        return out_bytes
    ds = pydicom.dcmread(io.BytesIO(out_bytes), force=True)
    identifiers = identifier_pattern(original)
    patient = info.get("patient")
    fields = _Fields(ds, getattr(patient, "pseudonym", "") or "")
    changed = False

    def refuse(edit: Edit, action: str, kw: str) -> None:
        reason = (f"edit {edit.number}: {action} {kw} refused: the value would contain an identifying string "
                  "of the original file (name, ID, date, institution or station)")
        deid.counts[reason] += 1
        log.warning("%s; the de-identified value is kept", reason)

    for edit in chosen:
        for kw, template in edit.set.items():
            value = template.format_map(fields)
            if identifiers is not None and identifiers.search(value):
                refuse(edit, "set", kw)
                continue
            _set_value(ds, kw, value)
            deid.counts[f"edit {edit.number}: set {kw}"] += 1
            changed = True
        for kw, (rx, repl) in edit.replace.items():
            elem = ds[kw] if kw in ds else (original[kw] if kw in original else None)
            if elem is None or elem.value in (None, ""):
                continue
            value = rx.sub(repl, str(elem.value))
            if identifiers is not None and identifiers.search(value):
                refuse(edit, "replace", kw)
                continue
            _set_value(ds, kw, value)
            deid.counts[f"edit {edit.number}: replace {kw}"] += 1
            changed = True
        for kw in edit.delete:
            if kw in ds:
                delattr(ds, kw)
                deid.counts[f"edit {edit.number}: delete {kw}"] += 1
                changed = True
    if changed:
        _complete_trial_modules(ds)
    return encode_file(ds) if changed else out_bytes


def _complete_trial_modules(ds) -> None:
    """Add the empty Type 2 attributes of every Clinical Trial module the file now has."""
    present = {_TRIAL_MODULE[e.keyword] for e in ds if e.keyword in _TRIAL_MODULE}
    for module in present:
        for kw in CLINICAL_TRIAL_TYPE2[module]:
            if kw not in ds:
                setattr(ds, kw, "")


def attach(deid, config: dict) -> None:
    """Compile ``config['deid']['edits']`` onto a Deidentifier (the engine's hook)."""
    deid.edits = check_edits(config, deid.plan)
