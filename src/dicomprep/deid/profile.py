"""PS3.15 Annex E Basic Application Level Confidentiality Profile: what to do with each attribute.

The attribute table and its action codes (D, Z, X, U and the combined codes
X/Z, X/D, Z/D, X/Z/D, X/Z/U*) are imported from dicom-anonymizer's newest
table (:data:`ANNEX_E_TABLE`, pinned with the package), never typed by hand.
The option columns of PS3.15 Table E.1-1 (Retain Patient Characteristics,
Device Identity, Institution Identity, UIDs, Safe Private, Longitudinal
Temporal Information with Modified Dates, Clean Descriptors, Clean Graphics)
are not in that table; they are listed here by keyword, each list citing its
column, and resolved onto the imported codes.

The result is a :class:`ProfilePlan`: three dicts ``tag -> primitive action``
(one per context: top level of an ordinary IOD, top level of an enhanced /
multi-frame IOD, inside sequences), so the engine looks one action up per
element and never re-resolves a combined code.

Primitive actions:

==== =========================================================================
X    remove
Z    replace with a zero-length value (a sequence: no items)
D    replace with a dummy value of the VR (a sequence: kept, items cleaned)
K    keep (a sequence: kept, items cleaned)
U    replace UIDs with keyed pseudonyms (a sequence: kept, items cleaned)
C    clean: DA/DT/TM shifted by the patient's offset; text scrubbed of
     identifiers; a sequence: kept, items cleaned
P    patient pseudonym (PatientID, PatientName)
A    age: kept, ages over 89 years capped to ``090Y``
==== =========================================================================
"""
from __future__ import annotations

import csv
import importlib
import importlib.metadata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from pydicom.datadict import dictionary_VR, tag_for_keyword

from ..errors import ConfigError
from .presets import get_preset

#: dicom-anonymizer module holding the newest PS3.15 Table E.1-1 transcription.
ANNEX_E_PACKAGE = "dicom-anonymizer"
ANNEX_E_TABLE = "dicomfields_2026c"
#: dicom-anonymizer category -> PS3.15 action code.
CATEGORY_CODES = {
    "D_TAGS": "D", "Z_TAGS": "Z", "X_TAGS": "X", "U_TAGS": "U", "Z_D_TAGS": "Z/D",
    "X_Z_TAGS": "X/Z", "X_D_TAGS": "X/D", "X_Z_D_TAGS": "X/Z/D", "X_Z_U_STAR_TAGS": "X/Z/U*",
}

#: PS3.16 CID 7050 De-identification Method codes (DCM), by option name.
CID7050 = {
    "basic": ("113100", "Basic Application Confidentiality Profile"),
    "retain_longitudinal_modified_dates": ("113107", "Retain Longitudinal Temporal Information Modified Dates Option"),
    "retain_patient_characteristics": ("113108", "Retain Patient Characteristics Option"),
    "retain_device_identity": ("113109", "Retain Device Identity Option"),
    "retain_institution_identity": ("113112", "Retain Institution Identity Option"),
    "retain_uids": ("113110", "Retain UIDs Option"),
    "retain_safe_private": ("113111", "Retain Safe Private Option"),
    "clean_descriptors": ("113105", "Clean Descriptors Option"),
    "clean_graphics": ("113103", "Clean Graphics Option"),
}
OPTION_NAMES = tuple(k for k in CID7050 if k != "basic")
DEFAULT_OPTIONS = {
    "retain_longitudinal_modified_dates": True, "retain_patient_characteristics": False,
    "retain_device_identity": False, "retain_institution_identity": False, "retain_uids": False,
    "retain_safe_private": True, "clean_descriptors": False, "clean_graphics": True,
}

# --- option columns of PS3.15 Table E.1-1 (by keyword) ---------------------------

#: "Rtn. Pat. Chars. Opt." column: K (kept) ...
PATIENT_CHARACTERISTICS_KEEP = (
    "PatientAge", "PatientSex", "PatientSize", "PatientWeight", "EthnicGroup", "SmokingStatus",
    "PregnancyStatus", "PatientSexNeutered", "PatientSpeciesDescription", "PatientBreedDescription",
    "PatientBodyMassIndex", "MeasuredAPDimension", "MeasuredLateralDimension",
)
#: ... and C (cleaned free text).
PATIENT_CHARACTERISTICS_CLEAN = (
    "Allergies", "MedicalAlerts", "SpecialNeeds", "PatientState", "Occupation",
    "AdditionalPatientHistory",
)
#: "Rtn. Dev. Id. Opt." column.
DEVICE_IDENTITY_KEEP = (
    "DeviceSerialNumber", "StationName", "DetectorID", "DeviceUID", "PlateID", "CassetteID",
    "GantryID", "GeneratorID", "SourceSerialNumber", "TreatmentMachineName", "XRayDetectorID",
    "XRayDetectorLabel", "DeviceLabel", "DeviceDescription", "PerformedStationName",
    "PerformedStationAETitle", "ScheduledStationName", "ScheduledStationAETitle",
    "ManufacturerDeviceIdentifier", "DeviceAlternateIdentifier", "DeviceID",
    "ManufacturerDeviceClassUID", "UniqueDeviceIdentifier", "AcquisitionFieldOfViewLabel",
    "DateOfLastDetectorCalibration", "TimeOfLastDetectorCalibration",
)
#: "Rtn. Inst. Id. Opt." column.
INSTITUTION_IDENTITY_KEEP = (
    "InstitutionName", "InstitutionAddress", "InstitutionCodeSequence",
    "InstitutionalDepartmentName", "InstitutionalDepartmentTypeCodeSequence",
)
#: "Clean Desc. Opt." column: free-text descriptors cleaned instead of removed.
DESCRIPTORS_CLEAN = (
    "StudyDescription", "SeriesDescription", "ImageComments", "ProtocolName", "AcquisitionComments",
    "PerformedProcedureStepDescription", "RequestedProcedureDescription", "ContrastBolusAgent",
    "DerivationDescription", "AcquisitionDeviceProcessingDescription", "StudyComments",
    "PatientComments", "FrameComments", "ImagingServiceRequestComments", "RequestedContrastAgent",
    "ReasonForStudy", "ReasonForTheRequestedProcedure", "ScheduledProcedureStepDescription",
    "ServiceEpisodeDescription", "VisitComments", "AdmittingDiagnosesDescription",
    "DischargeDiagnosisDescription", "InterpretationText", "ResultsComments",
    "AcquisitionProtocolDescription", "CommentsOnThePerformedProcedureStep",
    "TextComments", "AcquisitionContextDescription", "ContentCreatorName",
)
#: Never shifted as "longitudinal": the birth date is removed (PS3.15 E.1-1 row).
BIRTH_DATE_TIME = ("PatientBirthDate", "PatientBirthTime", "PatientBirthDateInAlternativeCalendar")

#: UI attributes whose values are standard (class, syntax, coding-scheme) UIDs, never replaced.
STANDARD_UID_KEYWORDS = (
    "SOPClassUID", "ReferencedSOPClassUID", "MediaStorageSOPClassUID", "TransferSyntaxUID",
    "ReferencedSOPClassUIDInFile", "ReferencedTransferSyntaxUIDInFile", "SOPClassesInStudy",
    "RelatedGeneralSOPClassUID", "OriginalSpecializedSOPClassUID", "CodingSchemeUID", "ContextUID",
    "MappingResourceUID", "ImplementationClassUID", "AffectedSOPClassUID", "RequestedSOPClassUID",
    "ReferencedRelatedGeneralSOPClassUIDInFile", "PrivateRecordUID", "TemplateExtensionOrganizationUID",
)
#: Root of UIDs defined by the standard itself (PS3.6 Annex A): never replaced.
STANDARD_UID_ROOT = "1.2.840.10008."

#: Type 1 / 2 attributes at the top level of the common image IODs (General Patient,
#: General Study, General Image modules, PS3.3 C.7.1.1, C.7.2.1, C.7.6.1), used to
#: resolve combined codes: D if Type 1, Z if Type 2, X otherwise.
TOP_LEVEL_TYPE = {
    "PatientName": 2, "PatientID": 2, "PatientBirthDate": 2, "PatientSex": 2, "StudyDate": 2,
    "StudyTime": 2, "ReferringPhysicianName": 2, "StudyID": 2, "AccessionNumber": 2,
    "ContentDate": 2, "ContentTime": 2,
}
#: Extra Type 1 / 2 attributes at the top level of enhanced / multi-frame IODs (Enhanced
#: General Equipment C.7.5.2, Multi-frame Functional Groups C.7.6.16, Enhanced MR/CT Image,
#: Acquisition Context C.7.6.14, whose sequence is Type 2: emptied, not removed, so the
#: copy stays valid (dciodvfy)).
ENHANCED_TOP_LEVEL_TYPE = {
    "DeviceSerialNumber": 1, "ContentDate": 1, "ContentTime": 1, "AcquisitionDateTime": 1,
    "AcquisitionContextSequence": 2,
}


#: Free-text attributes that can carry a name or date but that the Annex E
#: table (dicom-anonymizer 2026c) does not list; applied under the basic
#: profile unless the table has them. Codes as in PS3.15 E.1-1: D dummy value
#: (keeps a Type 1/1C attribute present), Z empty (Type 2), X remove (Type 3).
SUPPLEMENT = {
    "TrackingID": "D",              # (0062,0020) SEG, Type 1C beside Tracking UID
    "ContentDescription": "Z",      # (0070,0081) SEG/PR/KO content identification, Type 2
    "SegmentDescription": "X",      # (0062,0006) SEG, Type 3, free text
    "TextValue": "D",               # (0040,A160) SR TEXT content item, Type 1
    "UnformattedTextValue": "D",    # (0070,0006) presentation-state text annotation
}


def _tags(keywords: Iterable[str]) -> set[int]:
    """Tags of the keywords pydicom's dictionary knows (unknown keywords are skipped)."""
    out = set()
    for kw in keywords:
        tag = tag_for_keyword(kw)
        if tag is not None:
            out.add(int(tag))
    return out


def vr_of(tag: int) -> str | None:
    """Dictionary VR of a public tag (first of ambiguous ones), None if unknown."""
    try:
        vr = dictionary_VR(tag)
    except KeyError:
        return None
    return vr.split(" or ")[0]


def annex_e_version() -> str:
    """``dicom-anonymizer <version> <table>``: the pinned source of the table."""
    try:
        ver = importlib.metadata.version(ANNEX_E_PACKAGE)
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover
        ver = "unknown"
    return f"{ANNEX_E_PACKAGE} {ver} {ANNEX_E_TABLE}"


def load_annex_e_table(table: str = ANNEX_E_TABLE) -> dict[int, str]:
    """PS3.15 Table E.1-1 basic-profile action code per tag, from dicom-anonymizer."""
    try:
        module = importlib.import_module(f"dicomanonymizer.dicom_anonymization_databases.{table}")
    except ModuleNotFoundError:
        raise ConfigError(
            f"The PS3.15 Annex E table '{table}' of {ANNEX_E_PACKAGE} is not installed; "
            f"install {ANNEX_E_PACKAGE} (see envs/) to de-identify."
        ) from None
    codes: dict[int, str] = {}
    for category, code in CATEGORY_CODES.items():
        for entry in getattr(module, category):
            for tag in _expand_entry(entry):
                codes[tag] = code
    return codes


def _expand_entry(entry: tuple) -> list[int]:
    """Tags of a table entry: ``(group, element)`` or a repeating-group mask
    ``(group, element, group_mask, element_mask)`` such as overlays (60xx,3000)
    and curves (50xx,eeee). Masked element 0 means every element of the group;
    those are returned as ``(group << 16) | 0xFFFF`` markers (see ``GROUP_WIDE``)."""
    if len(entry) == 2:
        return [(entry[0] << 16) | entry[1]]
    group, element, group_mask, element_mask = entry
    out = []
    for g in range(group, group + 0x100, 2):  # repeating groups are even: 6000-60FF
        if g & group_mask != group:
            continue
        out.append((g << 16) | (element if element_mask == 0xFFFF else GROUP_WIDE))
    return out


#: Element marker for "every element of this group" (curves 50xx in Table E.1-1).
GROUP_WIDE = 0xFFFF


@dataclass(frozen=True)
class ProfileOptions:
    """The profile options of PS3.15 E.3 chosen in ``deid.options``."""

    retain_longitudinal_modified_dates: bool = True
    retain_patient_characteristics: bool = False
    retain_device_identity: bool = False
    retain_institution_identity: bool = False
    retain_uids: bool = False
    retain_safe_private: bool = True
    clean_descriptors: bool = False
    clean_graphics: bool = True

    @classmethod
    def from_config(cls, options: dict | None) -> "ProfileOptions":
        options = dict(options or {})
        unknown = set(options) - set(OPTION_NAMES)
        if unknown:
            raise ConfigError(
                f"config: unknown deid.options {sorted(unknown)}; allowed: {', '.join(OPTION_NAMES)}."
            )
        return cls(**{k: bool(options.get(k, DEFAULT_OPTIONS[k])) for k in OPTION_NAMES})

    def as_dict(self) -> dict[str, bool]:
        return {k: getattr(self, k) for k in OPTION_NAMES}

    def method_codes(self) -> list[tuple[str, str]]:
        """CID 7050 (code value, meaning) of the basic profile and every option in use."""
        codes = [CID7050["basic"]]
        codes += [CID7050[k] for k in OPTION_NAMES if getattr(self, k)]
        return codes


def resolve_code(code: str, required_type: int | None, vr: str | None) -> str:
    """A primitive action for a (combined) PS3.15 code (E.1.1 resolution rules).

    X/Z, X/D, X/Z/D: X unless the attribute is Type 2 (then Z) or Type 1 (then D)
    in the IOD. Z/D: Z unless Type 1. X/Z/U*: the sequence is kept with its
    instance UIDs replaced (U): references such as Source Image Sequence
    (0008,2112) in a SEG's derivation functional group must still resolve.
    """
    if code in ("D", "Z", "X", "U", "K", "C"):
        return code
    if code == "X/Z/U*":
        return "U"
    options = code.split("/")
    if required_type == 1 and "D" in options:
        return "D"
    if required_type == 1 and "Z" in options:  # a Type 1 attribute needs a value
        return "D"
    if required_type == 2 and "Z" in options:
        return "Z"
    if required_type == 2 and "D" in options:
        return "D"
    if options[0] == "Z":  # Z/D outside Type 1
        return "Z"
    return "X"


@dataclass
class ProfilePlan:
    """Resolved actions per context plus everything the engine needs to know."""

    options: ProfileOptions
    top: dict[int, str]
    top_enhanced: dict[int, str]
    nested: dict[int, str]
    preset: str = "basic"
    preset_only: bool = False
    remove_all_private: bool = False
    table_source: str = field(default_factory=annex_e_version)
    standard_uid_tags: frozenset = frozenset()

    def actions(self, depth: int, enhanced: bool) -> dict[int, str]:
        if depth:
            return self.nested
        return self.top_enhanced if enhanced else self.top


def _option_overrides(options: ProfileOptions) -> dict[int, str]:
    """Actions the chosen options put in place of the basic-profile codes."""
    over: dict[int, str] = {}
    if options.retain_patient_characteristics:
        over.update({t: "K" for t in _tags(PATIENT_CHARACTERISTICS_KEEP)})
        over.update({t: "C" for t in _tags(PATIENT_CHARACTERISTICS_CLEAN)})
        over[int(tag_for_keyword("PatientAge"))] = "A"
    if options.retain_device_identity:
        over.update({t: "K" for t in _tags(DEVICE_IDENTITY_KEEP)})
    if options.retain_institution_identity:
        over.update({t: "K" for t in _tags(INSTITUTION_IDENTITY_KEEP)})
    if options.clean_descriptors:
        over.update({t: "C" for t in _tags(DESCRIPTORS_CLEAN)})
    return over


def build_plan(
    options: ProfileOptions | dict | None = None,
    *,
    preset: str = "basic",
    preset_only: bool = False,
    table: str = ANNEX_E_TABLE,
) -> ProfilePlan:
    """Resolve the basic profile + options (+ a preset) into per-context action dicts."""
    if not isinstance(options, ProfileOptions):
        options = ProfileOptions.from_config(options)
    recipe = get_preset(preset)
    options = recipe.adjust_options(options)
    codes = {} if preset_only else load_annex_e_table(table)
    if not preset_only:
        for keyword, code in SUPPLEMENT.items():
            codes.setdefault(int(tag_for_keyword(keyword)), code)
    birth = _tags(BIRTH_DATE_TIME)
    over = {} if preset_only else _option_overrides(options)
    top_types = {int(tag_for_keyword(k)): v for k, v in TOP_LEVEL_TYPE.items()}
    enh_types = dict(top_types)
    enh_types.update({int(tag_for_keyword(k)): v for k, v in ENHANCED_TOP_LEVEL_TYPE.items()})

    def resolve(types: dict[int, str]) -> dict[int, str]:
        out: dict[int, str] = {}
        for tag, code in codes.items():
            vr = vr_of(tag)
            action = resolve_code(code, types.get(tag), vr)
            if options.retain_longitudinal_modified_dates and vr in ("DA", "DT", "TM") and tag not in birth:
                action = "C"
            if options.retain_uids and vr == "UI" and action in ("U", "D"):
                action = "K"
            out[tag] = action
        out.update(over)
        if not preset_only:
            out[int(tag_for_keyword("PatientID"))] = "P"
            out[int(tag_for_keyword("PatientName"))] = "P"
            out[int(tag_for_keyword("OriginalAttributesSequence"))] = "X"
        out.update(recipe.actions(options))
        return out

    return ProfilePlan(
        options=options,
        top=resolve(top_types),
        top_enhanced=resolve(enh_types),
        nested=resolve({}),
        preset=preset,
        preset_only=preset_only,
        remove_all_private=recipe.remove_all_private or not options.retain_safe_private,
        standard_uid_tags=frozenset(_tags(STANDARD_UID_KEYWORDS)),
    )


def plan_from_config(config: dict) -> ProfilePlan:
    """The plan for ``config['deid']`` (options, preset, preset_only)."""
    deid = (config or {}).get("deid", {}) or {}
    return build_plan(
        deid.get("options"), preset=deid.get("preset", "basic") or "basic",
        preset_only=bool(deid.get("preset_only", False)),
    )


# --- the private allowlist (Retain Safe Private Option, PS3.15 E.3.10) -----------------

ALLOWLIST_COLUMNS = ("creator", "group", "element", "name", "source")


def default_allowlist_path() -> Path:
    return Path(__file__).resolve().parents[1] / "data" / "private_allowlist.csv"


def load_private_allowlist_entries(path: str | Path | None = None) -> dict[tuple[str, int, int], dict]:
    """``{(creator, group, element byte): {"name": ..., "source": ...}}`` of the allowlist
    (the audit says which source each kept entry has)."""
    path = Path(path) if path else default_allowlist_path()
    load_private_allowlist(path)  # validates, with the sentences of its errors
    out: dict[tuple[str, int, int], dict] = {}
    with open(path, newline="", encoding="utf-8") as fh:
        rows = [line for line in fh if line.strip() and not line.lstrip().startswith("#")]
    for row in csv.DictReader(rows):
        key = (row["creator"].strip(), int(row["group"].strip(), 16), int(row["element"].strip(), 16) & 0xFF)
        out[key] = {"name": (row.get("name") or "").strip(), "source": (row.get("source") or "").strip()}
    return out


def allowlist_label(key: tuple[str, int, int]) -> str:
    """``SIEMENS CSA HEADER (0029,xx10)``: how counts and the audit name an allowlist entry."""
    creator, group, element = key
    return f"{creator} ({group:04X},xx{element:02X})"


def load_private_allowlist(path: str | Path | None = None) -> frozenset[tuple[str, int, int]]:
    """``{(creator, group, element byte)}`` of private attributes kept under Retain Safe Private.

    The CSV has columns ``creator,group,element,name,source`` (group and element
    in hex; ``element`` is the low byte, e.g. ``10`` for (0029,xx10)); lines
    starting with ``#`` are comments. An empty file keeps no private attribute.
    """
    path = Path(path) if path else default_allowlist_path()
    if not path.is_file():
        raise ConfigError(f"deid.private_allowlist: {path} does not exist. Give a CSV with columns "
                          f"{','.join(ALLOWLIST_COLUMNS)} (an empty file keeps no private attribute).")
    keys = set()
    with open(path, newline="", encoding="utf-8") as fh:
        rows = [line for line in fh if line.strip() and not line.lstrip().startswith("#")]
    for n, row in enumerate(csv.DictReader(rows), start=2):
        try:
            creator = row["creator"].strip()
            group = int(row["group"].strip(), 16)
            element = int(row["element"].strip(), 16) & 0xFF
        except (KeyError, ValueError, AttributeError):
            raise ConfigError(
                f"deid.private_allowlist: {path} row {n} is not 'creator,group,element,name,source' "
                "with group/element in hex (e.g. SIEMENS CSA HEADER,0029,10,...)."
            ) from None
        if not group & 1:
            raise ConfigError(f"deid.private_allowlist: {path} row {n}: group {group:04X} is not private (odd).")
        keys.add((creator, group, element))
    return frozenset(keys)
