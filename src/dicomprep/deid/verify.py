"""Leak verifier: scan every file under ``share/`` for identifiers the private index knows.

Issue #3 item 6. The identifiers come from two places (:func:`collect_identifiers`):

* ``private/index/instances.parquet`` (docs/contracts.md): names, IDs, dates,
  times, UIDs, institution, station, serial numbers and the subject/scan
  folder names of the layout (``orig_subject``, ``orig_scan``, ``orig_unit``);
* the headers of the indexed input files themselves, walked at every depth
  (PS3.5 section 7.5 sequences): every PN, DA, DT, TM and UI element plus the
  identifying LO/SH/ST/LT attributes of PS3.15 Table E.1-1 (IDs, addresses,
  institution, station, serials). The result is cached per file (path, size,
  mtime) in ``private/index/identifiers.json``.

:func:`verify_share` searches every share file (DICOM elements and raw bytes,
NIfTI header fields and extensions, JSON, CSV/TSV/Parquet cells and column
names, HDF5 names and attributes, YAML/HTML/text, PNG text chunks, NRRD
headers, any other file's bytes) and every path component with one trie-shaped
regular expression per boundary rule, so thousands of identifiers cost about
as much as a few. Results (``share/verification.json``) name the file, the
identifier's kind and where it was found, never the value; any text taken from
the data (JSON keys, column names, path components) is redacted with ``***``
where it matches an identifier.
"""
from __future__ import annotations

import base64
import csv
import datetime as dt
import functools
import gzip
import io
import json
import os
import re
import struct
import sys
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from ..errors import DicomprepError
from ..logs import get_logger
from .spellings import compact_id, encoded_forms, fold_accents, name_spellings, trie_regex

KINDS = ("name", "id", "date", "time", "uid", "institution", "address", "station", "serial", "folder")

#: Values that identify no one however often they appear (compared lower-case).
COMMON_WORDS = frozenset("""
test tests testing anonymous anonymized anonymised anonymize anon unknown none null nan n/a na
yes no true false patient subject subj volunteer phantom research study series scan scans exam
male female other dr mr mrs ms miss prof doctor physician operator tech technician nurse
original primary secondary derived other axial coronal sagittal localizer scout mpr
ct mr pt nm us cr dx mg ot sc seg sr rtstruct xa rf head brain body chest heart abdomen
water qa demo default admin user anonymous^anonymous de-identified removed deidentified
dicom nifti nii json csv png html yaml hdf5 data image images file files
one two three four five six seven eight nine ten first second third
""".split())

#: Colour names: segment labels (SegmentLabel (0062,0005)) and display colours use
#: them, so one as a whole InstitutionName / StationName (dcm_qa_ge's "orange") is
#: no identifier. Not applied to person names (Brown, Green, White are surnames).
COLOUR_WORDS = frozenset("""
red green blue yellow orange purple violet pink brown black white gray grey cyan magenta
""".split())

#: Structural folder names of the layouts (layout.py, contracts.md) that are not identifying.
STRUCTURAL_FOLDERS = frozenset("""
dicom dicoms se steam scans scan assessors assessor resources resource files file secondary
in out input data exam exams xnat cdti dwi dti nifti raw session sessions subjects subject
""".split())

#: Vendor names and the words of their company names: equipment, never an
#: identifier, whatever their length (a ``ge/`` folder beside "GE MEDICAL SYSTEMS").
VENDOR_WORDS = frozenset("""
ge gems gehc gemedical siemens healthineers philips toshiba canon hitachi fuji fujifilm agfa carestream
hologic samsung esaote mindray uih united imaging medical systems healthcare bruker varian elscint
marconi picker neusoft shimadzu konica minolta
""".split())

#: Site-neutral words of exports and layouts (modality, sequence and body-part code
#: words): not identifiers in any spelling or combination (``GE_DTI``, ``dicom-scans``).
SITE_NEUTRAL_WORDS = frozenset("""
dicom dicoms dcm scans scan series study studies exam exams export exports import images image
raw nifti nii data input output in out archive anon anonymized anonymised deid deidentified
ct mr mri fmri pet spect us cr dx mg xa rf nm ot sc sr seg rtstruct pt ncct cta
dti dwi dki hardi epi bold asl swi flair t1 t2 t1w t2w pd mprage spgr fspgr tse fse gre steam cdti
cine lge perfusion diffusion localizer scout survey axial coronal sagittal ax cor sag
head brain neuro heart cardiac chest thorax abdomen pelvis spine knee body whole wb liver
phantom qa qc test research project cohort site center centre
""".split())

#: Kinds whose values are judged word by word: a folder, station or institution whose
#: every word is equipment, a code word, a site-neutral word or a short token is no identifier.
WORDWISE_KINDS = frozenset({"folder", "station", "institution"})

#: What the user can do about a hit, by the kind of identifier.
FIX = {
    "folder": ("if this input folder name identifies no one, list it in the config key verify.safe_values "
               "(or set deid.keep_folder_names: true when every folder name is safe); otherwise rename the "
               "input folder or fix the stage that copied the name into share/"),
    "_": ("if this value identifies no one (an equipment or site-neutral word), list it in the config key "
          "verify.safe_values; otherwise fix the de-identification (or the stage that wrote this file) and "
          "run again"),
}

#: PS3.15 Table E.1-1 attributes (by keyword) that are identifying but not PN/DA/DT/TM/UI.
KEYWORD_KIND = {
    "PatientID": "id", "OtherPatientIDs": "id", "IssuerOfPatientID": "id",
    "AccessionNumber": "id", "MedicalRecordLocator": "id", "StudyID": "id",
    "AdmissionID": "id", "ServiceEpisodeID": "id", "PatientTelephoneNumbers": "id",
    "RequestedProcedureID": "id", "ScheduledProcedureStepID": "id",
    "PerformedProcedureStepID": "id", "FillerOrderNumberImagingServiceRequest": "id",
    "PlacerOrderNumberImagingServiceRequest": "id", "InsurancePlanIdentification": "id",
    "MilitaryRank": "id", "PatientInsurancePlanCodeSequence": "id",
    "PatientAddress": "address", "RegionOfResidence": "address",
    "PersonAddress": "address", "PersonTelephoneNumbers": "id",
    "InstitutionName": "institution", "InstitutionAddress": "institution",
    "InstitutionalDepartmentName": "institution",
    "StationName": "station", "StationAETitle": "station",
    "DeviceSerialNumber": "serial", "DetectorID": "serial", "DeviceID": "serial",
    "GantryID": "serial", "PlateID": "serial", "CassetteID": "serial",
    "SourceSerialNumber": "serial",
    "Manufacturer": "equipment", "ManufacturerModelName": "equipment",
    "SoftwareVersions": "equipment",
}

#: Index columns (contracts.md, private/index/instances.parquet) and their kinds.
INDEX_COLUMNS = {
    "PatientName": "name", "ReferringPhysicianName": "name", "PerformingPhysicianName": "name",
    "OperatorsName": "name",
    "PatientID": "id", "OtherPatientIDs": "id", "IssuerOfPatientID": "id",
    "AccessionNumber": "id", "StudyID": "id",
    "PatientBirthDate": "date", "StudyDate": "date", "SeriesDate": "date",
    "AcquisitionDate": "date", "ContentDate": "date",
    "StudyTime": "time", "SeriesTime": "time", "AcquisitionTime": "time", "ContentTime": "time",
    "StudyInstanceUID": "uid", "SeriesInstanceUID": "uid", "SOPInstanceUID": "uid",
    "FrameOfReferenceUID": "uid",
    "InstitutionName": "institution", "InstitutionAddress": "institution",
    "StationName": "station", "DeviceSerialNumber": "serial",
    "orig_subject": "folder", "orig_scan": "folder",
    "Manufacturer": "equipment", "ManufacturerModelName": "equipment",
    "ImageType": "code", "Modality": "code", "BodyPartExamined": "code",
    "ScanningSequence": "code", "SequenceVariant": "code",
}

#: UI attributes naming a standard thing (class, syntax, coding scheme), never an instance.
_UID_NOT_INSTANCE = re.compile(r"ClassUID|TransferSyntax|Implementation|CodingScheme|Context|MappingResource")

#: Deflated explicit VR little endian (PS3.5 A.5): raw bytes are compressed.
DEFLATED_TS = "1.2.840.10008.1.2.1.99"

#: deid config options that retain a kind by the user's explicit choice (PS3.15 E.3).
RETAINING_OPTIONS = {
    "keep_folder_names": ("folder",),
    "retain_device_identity": ("station", "serial"),
    "retain_institution_identity": ("institution",),
    "retain_uids": ("uid",),
}

CACHE_VERSION = 4


# --------------------------------------------------------------------------- identifiers

def _clean(value: Any) -> str:
    text = "" if value is None else str(value)
    return text.replace("\x00", "").strip()


@functools.lru_cache(maxsize=1)
def dictionary_words() -> frozenset[str]:
    """Words of the DICOM data dictionary's keywords (``SliceTiming`` → slice, timing).

    A lone name component that is such a word (phantom "patients" are named
    ``IRC - Slice Timing``) is searched only as part of the whole name: on its
    own it would match every table column and header that uses the word.
    """
    from pydicom.datadict import DicomDictionary

    words = set()
    for entry in DicomDictionary.values():
        for word in re.findall(r"[A-Z][a-z]+", entry[4] or ""):
            if len(word) >= 4:
                words.add(word.lower())
    return frozenset(words)


def _harmless(text: str) -> bool:
    """True for values that must never count: short, common, or short numbers."""
    t = text.strip().lower()
    if len(t) < 3 or t in COMMON_WORDS:
        return True
    if not re.search(r"[a-z0-9\u00c0-\uffff]", t):
        return True
    if re.fullmatch(r"[\d\s.,:/+-]+", t) and len(re.sub(r"\D", "", t)) < 5:
        return True
    return False


def parse_date(value: Any) -> dt.date | None:
    """Date of a DA (YYYYMMDD), a DT (date part) or an ISO spelling; None if not a date."""
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    text = re.sub(r"[-/.]", "", _clean(value))
    if len(text) < 8 or not text[:8].isdigit():
        return None
    try:
        return dt.date(int(text[:4]), int(text[4:6]), int(text[6:8]))
    except ValueError:
        return None


def date_spellings(day: dt.date) -> list[str]:
    """The spellings searched for one date (:func:`.spellings.date_spellings`): 19710203,
    1971-02-03, 03.02.1971, 03/02/1971, 02/03/1971, 1971/02/03, 1971.02.03, 03-02-1971,
    3 Feb 1971, Feb 3, 1971, 03-Feb-1971 ..."""
    from .spellings import date_spellings as spell

    return spell(day)


def _time_hhmmss(value: Any) -> str | None:
    """HHMMSS of a TM value with at least 6 digits (PS3.5 6.2 TM), else None;
    ``HHMMSS.ff`` when it has a non-zero fraction. The fraction makes the match
    ~100x more specific: a date shift moves whole seconds and keeps the fraction,
    so a shifted time rarely equals another original time to the 1/100 s."""
    text = _clean(value).replace(":", "")
    digits = text.split(".")[0]
    if len(digits) < 6 or not digits[:6].isdigit():
        return None
    hhmmss = digits[:6]
    if hhmmss == "000000" or int(hhmmss[:2]) > 23 or int(hhmmss[2:4]) > 59 or int(hhmmss[4:6]) > 60:
        return None
    fraction = text.split(".")[1][:2] if "." in text else ""
    if len(fraction) == 2 and fraction.isdigit() and fraction != "00":
        return f"{hhmmss}.{fraction}"
    return hhmmss


@dataclass
class IdentifierSet:
    """Identifiers by kind, already filtered of harmless values (canonical spellings)."""

    values: dict[str, set[str]] = field(default_factory=lambda: {k: set() for k in KINDS})
    #: Manufacturer / model / software names (lower-case): never identifying, even
    #: when a file also uses one as InstitutionName (e.g. PixelMed's ContributingEquipment).
    equipment: set[str] = field(default_factory=set)
    #: Terms of the data's own code strings (ImageType, BodyPartExamined ...):
    #: a lone name component equal to one ("Perfusion") is that term, not a person.
    code_words: set[str] = field(default_factory=set)
    #: Where each identifier came from: ``(kind, value) -> {"attribute InstitutionName", ...}``.
    sources: dict = field(default_factory=dict)
    #: Values the user declared safe (``verify.safe_values``), lower case: never searched.
    safe: set[str] = field(default_factory=set)
    #: Specific Character Set (0008,0005) values the input files declare: every identifier
    #: is searched in each of these encodings too (PS3.5 6.1).
    charsets: set[str] = field(default_factory=set)

    def add(self, kind: str, value: Any, source: str = "") -> None:
        """Add one raw attribute value as identifiers of ``kind`` (with its components);
        ``source`` says where it came from (an attribute keyword or an input folder level)."""
        if value is None:
            return
        if isinstance(value, (list, tuple, set)) or type(value).__name__ in ("MultiValue", "ndarray"):
            for item in value:
                self.add(kind, item, source)
            return
        self._add(kind, value)
        if source:  # every component derived from this value is attributed to the source
            self._attribute(kind, value, source)

    def _attribute(self, kind: str, value: Any, source: str) -> None:
        probe = IdentifierSet()
        probe._add(kind, value)
        for k, vals in probe.values.items():
            for v in vals:
                self.sources.setdefault((k, v), set()).add(source)

    def source_of(self, kind: str, value: str) -> str:
        """Where an identifier came from (``attribute X``, ``input folder name``), for messages."""
        found = sorted(self.sources.get((kind, value), ()))
        return ", ".join(found) if found else "the input headers"

    def _add(self, kind: str, value: Any) -> None:
        text = _clean(value)
        if not text or text.lower() in ("nan", "none", "nat"):
            return
        if kind == "charset":
            self.charsets.add(text)
        elif kind == "equipment":
            self.equipment.add(text.lower())
        elif kind == "code":
            self.code_words.update(t.strip().lower() for t in re.split(r"[\\/\s]+", text) if len(t.strip()) >= 3)
        elif kind == "name":
            self._add_name(text)
        elif kind == "date":
            day = parse_date(text)
            # 19000101 is the usual "unknown" dummy (and the engine's Z value): never identifying
            if day is not None and day != dt.date(1900, 1, 1):
                self.values["date"].add(day.strftime("%Y%m%d"))
        elif kind == "time":
            hhmmss = _time_hhmmss(text)
            if hhmmss:
                self.values["time"].add(hhmmss)
        elif kind == "uid":
            if re.fullmatch(r"[0-9.]+", text) and len(text) >= 10 and not text.startswith("1.2.840.10008."):
                self.values["uid"].add(text)
        elif kind in ("address", "institution"):
            if not _harmless(text) and text.lower() not in COLOUR_WORDS:
                self.values[kind].add(text)
            if kind == "address" or len(text) > 20:
                for part in re.split(r"[,;\n^]+", text):
                    part = part.strip(" -")
                    if len(part) >= 6 and not _harmless(part):
                        self.values[kind].add(part)
        elif kind == "folder":
            if not _harmless(text) and text.lower() not in STRUCTURAL_FOLDERS:
                self.values["folder"].add(text)
        else:
            if not _harmless(text) and not (kind == "station" and text.lower() in COLOUR_WORDS):
                self.values[kind].add(text)

    def _add_name(self, text: str) -> None:
        """A PN value (PS3.5 6.2.1): whole value, ``^``-free spellings and the components."""
        for group in text.split("="):
            group = group.strip()
            if not group:
                continue
            parts = [p.strip() for p in group.split("^") if p.strip()]
            wholes = {group, " ".join(parts), " ".join(reversed(parts)), ", ".join(parts)}
            wholes |= name_spellings(group)  # "Smith, John", "J. Smith", "John Smith", no accents
            for whole in wholes:
                if not _harmless(whole) and not whole.replace(" ", "").isdigit() and len(whole) >= 5:
                    self.values["name"].add(whole)
            for part in re.split(r"[\s^,]+", group):
                part = part.strip(".-'")
                ideographic = len(part) >= 2 and all(ord(c) >= 0x2E80 for c in part)  # 山田, やまだ
                if ideographic or (len(part) >= 3 and not _harmless(part) and not any(c.isdigit() for c in part)
                                   and part.lower() not in dictionary_words()):
                    self.values["name"].add(part)
                    self.values["name"].add(fold_accents(part))

    def update(self, pairs: Iterable[tuple]) -> None:
        """Add ``(kind, value)`` or ``(kind, value, source)`` tuples."""
        for pair in pairs:
            self.add(*pair)

    def without(self, kinds: Iterable[str]) -> "IdentifierSet":
        drop = set(kinds)
        return IdentifierSet({k: (set() if k in drop else set(v)) for k, v in self.values.items()},
                             set(self.equipment), set(self.code_words), dict(self.sources), set(self.safe),
                             set(self.charsets))

    def declare_safe(self, values: Iterable[Any]) -> None:
        """Values the user declared not identifying (config ``verify.safe_values``)."""
        self.safe |= {_clean(v).lower() for v in values or () if _clean(v)}

    def _benign_word(self, word: str, blocked: set[str]) -> bool:
        return (len(word) <= 2 or word in blocked or word in VENDOR_WORDS or word in SITE_NEUTRAL_WORDS
                or word in STRUCTURAL_FOLDERS or word in COMMON_WORDS or word in self.code_words
                or word in self.safe)

    def effective(self) -> dict[str, set[str]]:
        """The identifiers searched. Left out: values equal to an equipment name or
        to one word of it, of any length (a folder ``ge/`` or ``Philips/`` beside
        Manufacturer "GE MEDICAL SYSTEMS" / "Philips Medical Systems"); vendor
        names; values declared safe (``verify.safe_values``); folder, station and
        institution values made only of equipment, code, site-neutral words and
        short tokens (``GE_DTI``, ``dicom-scans``, ``Siemens Skyra``)."""
        split = re.compile(r"[^0-9a-z\u00c0-\uffff]+")
        words = {w for name in self.equipment for w in split.split(name) if w}
        blocked = self.equipment | words
        strong = blocked | VENDOR_WORDS | self.safe
        out = {}
        for k, vals in self.values.items():
            if k in ("date", "time", "uid"):
                out[k] = {v for v in vals if v.lower() not in self.safe}
                continue
            keep = set()
            for v in vals:
                low = v.lower()
                if low in self.safe or (low in blocked and (k != "name" or len(low) >= 3)):
                    continue
                if k != "name" and low in strong:
                    continue
                if k in WORDWISE_KINDS:
                    tokens = [t for t in split.split(low) if t]
                    if tokens and all(self._benign_word(t, blocked) for t in tokens):
                        continue
                keep.add(v)
            out[k] = keep
        out["name"] = {v for v in out["name"] if v.lower() not in self.code_words}
        return out

    def counts(self) -> dict[str, int]:
        return {k: len(v) for k, v in self.effective().items()}

    def __len__(self) -> int:
        return sum(self.counts().values())


def _iter_elements(dataset: Any, prefix: str = "") -> Iterator[tuple[str, Any, str, str, Any, Any]]:
    """Walk a dataset at every depth without converting plain values.

    Yields ``(path, tag, vr, keyword, raw, parent)`` for every non-sequence element,
    where ``raw`` is the undecoded value bytes of a not-yet-converted element
    (pydicom ``RawDataElement``) or the converted value. Sequences (PS3.5 7.5)
    are converted and walked item by item; the path reads
    ``(0008,1140)[0]>(0008,1155)``. Converting only sequences keeps a header
    walk ~5x faster than iterating the dataset.
    """
    from pydicom.datadict import dictionary_VR, keyword_for_tag
    from pydicom.dataelem import RawDataElement

    for tag in list(dataset.keys()):
        try:
            elem = dataset._dict[tag]
            label = f"{prefix}({tag.group:04X},{tag.element:04X})"
            if isinstance(elem, RawDataElement):
                vr = elem.VR
                if vr is None or vr == "UN":
                    try:
                        vr = dictionary_VR(tag)
                    except KeyError:
                        vr = "UN"
                undefined = elem.length == 0xFFFFFFFF
                if vr == "SQ" or undefined:
                    elem = dataset[tag]  # converts to a Sequence
                    vr = elem.VR
                else:
                    yield label, tag, vr, keyword_for_tag(tag) or "", elem.value, dataset
                    continue
            else:
                vr = elem.VR
            if vr == "SQ":
                for i, item in enumerate(elem.value or []):
                    yield from _iter_elements(item, f"{label}[{i}]>")
            else:
                yield label, tag, vr, elem.keyword or "", elem.value, dataset
        except Exception:  # a malformed element must not stop the walk
            continue


def _value_strings(value: Any) -> list[str]:
    """The values of an element as strings (multi-values split on backslash)."""
    if value is None:
        return []
    if isinstance(value, (bytes, bytearray)):
        raw = bytes(value).rstrip(b"\x00 ")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            text = raw.decode("latin-1")
        return [v for v in text.split("\\")]
    if type(value).__name__ == "MultiValue" or isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    return [str(value)]


def header_identifiers(ds: Any) -> list[tuple[str, str, str]]:
    """(kind, value, source) of every identifying element of a dataset, at every depth.

    PN -> name; DA -> date; DT -> date and time; TM -> time; UI -> uid unless it
    names a class/syntax/scheme; plus :data:`KEYWORD_KIND` attributes. File meta
    (PS3.10 7.1) included. PN values are decoded with the dataset's
    SpecificCharacterSet (0008,0005); other values as UTF-8, else Latin-1.
    """
    found: list[tuple[str, str, str]] = []
    charset = ds.get("SpecificCharacterSet") if hasattr(ds, "get") else None
    if charset:
        values = [charset] if isinstance(charset, str) else list(charset)
        found.append(("charset", "\\".join(str(v) for v in values), "attribute SpecificCharacterSet"))
    sources = [getattr(ds, "file_meta", None), ds]
    for source in sources:
        if source is None:
            continue
        for _, tag, vr, keyword, value, parent in _iter_elements(source):
            if vr == "PN" and isinstance(value, (bytes, bytearray)):
                value = _decoded_pn(parent, tag, value)
            strings = _value_strings(value)
            src = "attribute " + (keyword or f"({int(tag) >> 16:04X},{int(tag) & 0xFFFF:04X})")
            if vr == "PN":
                found.extend(("name", v, src) for v in strings)
            elif vr == "DA":
                found.extend(("date", v, src) for v in strings)
            elif vr == "DT":
                for v in strings:
                    found.append(("date", v, src))
                    if len(v) >= 14:
                        found.append(("time", v[8:], src))
            elif vr == "TM":
                found.extend(("time", v, src) for v in strings)
            elif vr == "UI":
                if not _UID_NOT_INSTANCE.search(keyword):
                    found.extend(("uid", v, src) for v in strings)
            elif keyword in KEYWORD_KIND:
                found.extend((KEYWORD_KIND[keyword], v, src) for v in strings)
    return sorted(set(found))


def _decoded_pn(dataset: Any, tag: Any, value: bytes) -> Any:
    """A PN value decoded by pydicom with the character set in force (PS3.5 6.1);
    ``dataset`` is the (sequence item) dataset that holds the element."""
    try:
        return dataset[tag].value if tag in dataset else value
    except Exception:
        return value


def _file_header_identifiers(path: str) -> list[tuple[str, str]]:
    from ..dicomio import read_dataset

    ds = read_dataset(path, stop_before_pixels=True)
    return header_identifiers(ds)


def _header_identifiers_or_error(path: str) -> tuple[list[tuple[str, str]], str | None]:
    try:
        return _file_header_identifiers(path), None
    except Exception as exc:  # unreadable now: the index row still gave its columns
        return [], f"{type(exc).__name__}: {exc}"


#: Source labels of the layout's folder levels (index columns, docs/contracts.md).
FOLDER_SOURCES = {"orig_subject": "input folder name (subject level)", "orig_scan": "input folder name (scan level)"}


def _folder_identifiers(row: dict) -> list[tuple[str, str, str]]:
    """Subject/scan/exam folder names of one index row (not group/sequence)."""
    out = []
    structural = {_clean(row.get("orig_group")).lower(), _clean(row.get("orig_sequence")).lower()}
    for col in ("orig_subject", "orig_scan"):
        name = _clean(row.get(col))
        if name and name.lower() not in structural:
            out.append(("folder", name, FOLDER_SOURCES[col]))
    unit = _clean(row.get("orig_unit"))
    for part in unit.split("/"):
        if part and part.lower() not in structural:
            out.append(("folder", part, "input folder name (unit path)"))
    return out


def collect_identifiers(out_dir: str | os.PathLike, *, read_headers: bool = True,
                        log: Any = None, workers: int = 1) -> IdentifierSet:
    """Every identifier the private index knows (see module docstring).

    Reads ``OUT/private/index/instances.parquet`` and, with ``read_headers``,
    the header of every indexed input file (cached in
    ``OUT/private/index/identifiers.json`` keyed by path, size and mtime_ns).
    """
    import pandas as pd

    out_dir = Path(out_dir)
    index_path = out_dir / "private" / "index" / "instances.parquet"
    if not index_path.is_file():
        raise DicomprepError(
            f"the leak verifier needs the private index {index_path}; run the index stage first "
            "(or `dicomprep run`) so the verifier knows what to look for")
    table = pd.read_parquet(index_path)
    ids = IdentifierSet()
    for col, kind in INDEX_COLUMNS.items():
        if col in table.columns:
            source = FOLDER_SOURCES.get(col, f"attribute {col}")
            for value in table[col].dropna().unique():
                ids.add(kind, value, source)
    folder_cols = [c for c in ("orig_group", "orig_sequence", "orig_subject", "orig_scan", "orig_unit")
                   if c in table.columns]
    if folder_cols:
        for row in table[folder_cols].drop_duplicates().to_dict("records"):
            ids.update(_folder_identifiers(row))
    if read_headers and "path" in table.columns:
        ids.update(_cached_header_identifiers(out_dir, table, log, workers))
    return ids


def _cached_header_identifiers(out_dir: Path, table: Any, log: Any, workers: int = 1) -> list[tuple[str, str, str]]:
    from ..dicomio import write_text

    cache_path = out_dir / "private" / "index" / "identifiers.json"
    cache: dict = {}
    if cache_path.is_file():
        try:
            loaded = json.loads(cache_path.read_text(encoding="utf-8"))
            if loaded.get("version") == CACHE_VERSION:
                cache = loaded.get("files", {})
        except (OSError, ValueError):
            cache = {}
    files: dict = {}
    stale: list[tuple[str, os.stat_result]] = []
    for path in table["path"].dropna().unique():
        path = str(path)
        try:
            st = os.stat(path)
        except OSError:  # input moved away: keep what was read before
            if path in cache:
                files[path] = cache[path]
            continue
        entry = cache.get(path)
        if entry and entry.get("size") == st.st_size and entry.get("mtime_ns") == st.st_mtime_ns:
            files[path] = entry
        else:
            stale.append((path, st))
    paths = [p for p, _ in stale]
    if workers > 1 and len(paths) > 64:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(_header_identifiers_or_error, paths, chunksize=32))
    else:
        results = [_header_identifiers_or_error(p) for p in paths]
    for (path, st), (found, error) in zip(stale, results):
        if error and log:
            log.warning("identifiers: cannot read header of %s (%s)", path, error)
        files[path] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ids": [list(p) for p in found]}
    changed = bool(stale)
    pairs = {tuple(p) for entry in files.values() for p in entry["ids"]}
    if changed or set(files) != set(cache):
        write_text(cache_path, json.dumps({"version": CACHE_VERSION, "files": files}))
    return sorted(pairs)


# --------------------------------------------------------------------------- matcher

_trie_regex = trie_regex  # one implementation, shared with the engine (spellings.py)


#: Boundary rule per mode (on lower-case bytes): the bytes that may not touch a
#: match on the left (checked in Python, so the regex starts with literal bytes
#: and the engine can skip ahead fast) and the regex lookahead on the right.
_ALPHA = frozenset(b"abcdefghijklmnopqrstuvwxyz")
_DIGIT = frozenset(b"0123456789")
_BOUNDARIES = {
    "substring": (frozenset(), b""),
    "word": (_ALPHA, rb"(?![a-z])"),
    "alnum": (_ALPHA | _DIGIT, rb"(?![a-z0-9])"),
    "number": (_DIGIT, rb"(?![0-9])"),
    # an all-digit ID/serial: not the decimals of a number (0.45160 is no serial number)
    "numid": (_ALPHA | _DIGIT | frozenset(b"."), rb"(?![a-z0-9])"),
    # not the decimals of a number either (0.121229 in a bvec is no time of day)
    # and not a finer time: 000627 (to the second) is not 000627.827
    "time": (_DIGIT | frozenset(b"."), rb"(?![0-9])(?![.,]0*[1-9])"),
    # HHMMSS.ff: more fraction digits may follow (122458.102500, or dcm2niix's rounded .103)
    "timefrac": (_DIGIT | frozenset(b"."), b""),
    # a date may be followed by a DT time part (PS3.5 6.2 DT) but not by other digits
    "date": (_DIGIT, rb"(?:(?![0-9])|(?=[0-2][0-9][0-5][0-9]))"),
}


def _encodings(text: str, charsets: Iterable[str] = ()) -> set[bytes]:
    """``text`` (and its lower/upper case) as bytes in UTF-8, Latin-1 and every character
    set the input declares (ISO 2022 with its escape sequences), lower-cased."""
    out = set()
    for variant in {text, text.lower(), text.upper()}:
        if variant.isascii():
            out.add(variant.encode("ascii").lower())
            continue
        out |= {b.lower() for b in encoded_forms(variant, charsets)}
    return out


#: Separators the verifier looks through inside IDs (123-45-678 for 12345678). Spaces and
#: dots are left out: numbers in text (bvec, CSV) are separated by them.
#: Only between two digits, so a separator next to a letter still bounds a word (sub-123-45-678).
_ID_SEP = re.compile(rb"(?<=[0-9])[-/_](?=[0-9])")


class Matcher:
    """Multi-pattern search of identifiers in bytes, case-insensitive for ASCII."""

    def __init__(self, ids: IdentifierSet):
        by_mode: dict[str, dict[bytes, set[str]]] = {m: {} for m in _BOUNDARIES}
        #: encoded spelling -> {(kind, identifier)}: what a match stands for (messages only)
        self.values_of: dict[bytes, set[tuple[str, str]]] = {}
        #: (kind, identifier) matched since the last :meth:`forget` (the file being scanned)
        self.recent: set[tuple[str, str]] = set()
        current: list = [None]

        charsets = sorted(ids.charsets)
        sep_table: dict[str, dict[bytes, set[str]]] = {"numid": {}, "alnum": {}}

        def put(mode: str, text: str, kind: str) -> None:
            for enc in _encodings(text, charsets):
                by_mode[mode].setdefault(enc, set()).add(kind)
                self.values_of.setdefault(enc, set()).add((kind, current[0]))

        for kind, values in ids.effective().items():
            for value in values:
                current[0] = value
                if kind == "name":
                    put("substring" if len(value) >= 8 else "word", value, kind)
                elif kind == "date":
                    day = parse_date(value)
                    if day:
                        for spelling in date_spellings(day):
                            put("date", spelling, kind)
                elif kind == "time":
                    hhmmss = value[:6]
                    put("time", f"{hhmmss[:2]}:{hhmmss[2:4]}:{hhmmss[4:6]}", kind)  # text, reports
                    if "." in value:  # with the original's fraction: 122458.10..., 12:24:58.10...
                        put("timefrac", value, kind)
                        put("timefrac", f"{hhmmss[:2]}:{hhmmss[2:4]}:{value[4:]}", kind)
                    else:  # bare digits only for a time known to the second (an integer
                        put("time", hhmmss, kind)  # such as 122500 in a protocol is no time)
                elif kind == "uid":
                    put("number", value, kind)
                else:
                    put("numid" if value.isdigit() else "alnum", value, kind)
                    core = compact_id(value).lower()
                    if kind in ("id", "serial") and len(core) >= 6 and core.isascii() and core.isalnum():
                        mode = "numid" if core.isdigit() else "alnum"
                        sep_table[mode].setdefault(core.encode(), set()).add(kind)
                        self.values_of.setdefault(core.encode(), set()).add((kind, value))
        self.kinds_of: dict[bytes, set[str]] = {}
        self.regexes: list[tuple[re.Pattern, frozenset, str]] = []
        for mode, table in by_mode.items():
            if not table:
                continue
            left, right = _BOUNDARIES[mode]
            self.regexes.append((re.compile(b"(?:" + _trie_regex(table) + b")" + right), left, mode))
            for enc, kinds in table.items():
                self.kinds_of.setdefault(enc, set()).update(kinds)
        #: IDs searched through separators: (regex, left boundary, kinds by compact bytes)
        self.sep_regexes = []
        for mode, table in sep_table.items():
            if table:
                left, right = _BOUNDARIES[mode]
                self.sep_regexes.append((re.compile(b"(?:" + _trie_regex(table) + b")" + right), left))
                for enc, kinds in table.items():
                    self.kinds_of.setdefault(enc, set()).update(kinds)
        # Without the right boundary: in raw DICOM bytes a value's end touches the
        # next element's tag, whose bytes may be letters or digits ((0038,0010) is "8\0").
        every = {enc for table in by_mode.values() for enc in table}
        self.loose = re.compile(b"(?:" + _trie_regex(every) + b")") if every else None

    def loose_hit(self, data: bytes) -> bool:
        """Whether any identifier occurs in ``data`` as a plain substring (a cheap
        screen; the element walk then decides with the boundaries)."""
        return self.loose is not None and self.loose.search(data.lower()) is not None

    def spans(self, data: bytes) -> Iterator[tuple[int, int, set[str]]]:
        low = data.lower()
        for rx, left, mode in self.regexes:
            pos = 0
            while True:
                m = rx.search(low, pos)
                if m is None:
                    break
                start = m.start()
                if start and low[start - 1] in left:  # glued to a letter/digit: retry one on
                    pos = start + 1
                    continue
                if (mode == "date" and start and low[start - 1] == 0x2E and m.end() < len(low)
                        and low[m.end()] in _DIGIT):  # head of a long UID component, not a DT
                    pos = start + 1
                    continue
                self.recent |= self.values_of.get(m.group(), set())
                yield start, m.end(), self.kinds_of.get(m.group(), set())
                pos = max(m.end(), start + 1)

    def forget(self) -> None:
        """Start a new file: :attr:`recent` empties."""
        self.recent = set()

    def kinds(self, data: bytes | str) -> set[str]:
        """Kinds of the identifiers found in ``data`` (str is searched as UTF-8)."""
        if isinstance(data, str):
            data = data.encode("utf-8", "replace")
        found: set[str] = set()
        for _, _, kinds in self.spans(data):
            found |= kinds
        if self.sep_regexes:
            found |= self._separated_kinds(data.lower())
        return found

    def _separated_kinds(self, low: bytes) -> set[str]:
        """Kinds of IDs written with separators (123-45-678): searched in the text with the
        separators between letters/digits taken out."""
        compact = _ID_SEP.sub(b"", low)
        if compact == low:
            return set()
        found: set[str] = set()
        for rx, left in self.sep_regexes:
            for m in rx.finditer(compact):
                start = m.start()
                if start and compact[start - 1] in left:
                    continue
                self.recent |= self.values_of.get(m.group(), set())
                found |= self.kinds_of.get(m.group(), set())
        return found

    def redact(self, text: str) -> str:
        """``text`` with every identifier replaced by ``***`` (safe for share/)."""
        data = text.encode("utf-8", "replace")
        spans = sorted((s, e) for s, e, _ in self.spans(data))
        if self.sep_regexes and self._separated_kinds(data.lower()):
            return "***"  # an ID written with separators: the whole text goes
        if not spans:
            return text
        out, pos = bytearray(), 0
        for s, e in spans:
            if s < pos:
                s = pos
            if e <= s:
                continue
            out += data[pos:s] + b"***"
            pos = e
        out += data[pos:]
        return out.decode("utf-8", "replace")


# --------------------------------------------------------------------------- scanners

Found = Callable[[str, set[str]], None]  # (where, kinds)


def _scan_text(data: bytes, matcher: Matcher, found: Found, label: str) -> None:
    """Line-located search of a text file."""
    if not matcher.kinds(data):
        return
    for n, line in enumerate(data.splitlines(), 1):
        kinds = matcher.kinds(line)
        if kinds:
            found(f"{label} line {n}", kinds)


def _as_bytes(value: Any) -> bytes:
    if value is None:
        return b""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if type(value).__name__ == "MultiValue" or isinstance(value, (list, tuple)):
        return "\\".join(str(v) for v in value).encode("utf-8", "replace")
    return str(value).encode("utf-8", "replace")


#: Numeric VRs (PS3.5 6.2): an all-digit ID or serial number equal to one of
#: their values (SeriesNumber 123456) is a coincidence, not a leak.
NUMERIC_VRS = {"IS", "DS", "US", "SS", "UL", "SL", "UV", "SV", "FL", "FD", "AT"}
#: Kinds an all-digit value of which, met in a numeric element, is a coincidence. A
#: subject "folder" key may be an all-digit PatientID (xnat arcNNN and exam rules).
NUMERIC_COINCIDENCE_KINDS = {"id", "serial", "folder"}


def _numeric_keyword(key: str) -> bool:
    """True when ``key`` is a DICOM keyword of a numeric VR (dcm2niix sidecars use
    them: SeriesNumber, AcquisitionNumber, ...)."""
    from pydicom.datadict import dictionary_VR, tag_for_keyword

    tag = tag_for_keyword(str(key))
    try:
        return tag is not None and dictionary_VR(tag) in NUMERIC_VRS
    except KeyError:
        return False


def _walk_dicom(dataset: Any, prefix: str, matcher: Matcher, found: Found,
                located: set[str] | None = None) -> None:
    """Report every element (any depth) whose value holds an identifier; add
    the kinds seen (also the exempted ones) to ``located``."""
    for label, tag, vr, keyword, value, parent in _iter_elements(dataset):
        if _is_pixel_tag(int(tag)):
            continue
        kinds = matcher.kinds(_as_bytes(value))
        if not kinds and vr == "PN" and isinstance(value, (bytes, bytearray)):
            kinds = matcher.kinds(_as_bytes(_decoded_pn(parent, tag, value)))  # ISO 2022 names
        if located is not None:
            located |= kinds
        if kinds and vr in NUMERIC_VRS:
            kinds = kinds - NUMERIC_COINCIDENCE_KINDS
        if kinds:
            keyword = keyword or ("private" if tag.is_private else "")
            found(f"DICOM {prefix}{label} {keyword}".rstrip(), kinds)


#: Pixel Data (7FE0,0010), Float (7FE0,0008) and Double Float Pixel Data (7FE0,0009):
#: numbers (or compressed bytes), where a short name would match by chance.
PIXEL_TAGS = {0x7FE00010, 0x7FE00008, 0x7FE00009}


def _is_pixel_tag(tag: int) -> bool:
    """Pixel data, or Overlay Data (60xx,3000), a 1-bit bitmap."""
    return tag in PIXEL_TAGS or (tag & 0xFF00FFFF) == 0x60003000


def pixel_data_span(raw: bytes) -> tuple[int, int] | None:
    """Byte range of the top-level Pixel Data value of a DICOM file's bytes.

    Found from the end (Pixel Data is the last large element): explicit VR
    (OB/OW/OF/OD/UN, 4-byte length) or implicit VR, little or big endian;
    undefined length (encapsulated, PS3.5 A.4) runs to the sequence delimiter.
    """
    for tag, order in ((b"\xe0\x7f\x10\x00", "little"), (b"\x7f\xe0\x00\x10", "big")):
        i = raw.rfind(tag)
        while i >= 0:
            if raw[i + 4:i + 6] in (b"OB", b"OW", b"OF", b"OD", b"UN"):
                length, start = int.from_bytes(raw[i + 8:i + 12], order), i + 12
            else:
                length, start = int.from_bytes(raw[i + 4:i + 8], order), i + 8
            if length == 0xFFFFFFFF:
                end = raw.rfind(b"\xfe\xff\xdd\xe0" if order == "little" else b"\xff\xfe\xe0\xdd")
                if end > start:
                    return start, end
            elif 0 < length and start + length <= len(raw):
                return start, start + length
            i = raw.rfind(tag, 0, i)
    return None


def scan_dicom(path: Path, matcher: Matcher, found: Found) -> None:
    """All elements at every depth incl. file meta and private ones, plus raw bytes.

    The raw bytes (un-gzipped) are searched first; only a file with a hit, or
    a deflated one (PS3.5 A.5) whose bytes hide the values, is walked element by
    element to say where.
    """
    from ..dicomio import read_bytes

    raw = read_bytes(path)
    span = pixel_data_span(raw)
    outside_pixels = raw if span is None else raw[:span[0]] + b"\x00" + raw[span[1]:]
    raw_kinds = matcher.kinds(outside_pixels)
    if not raw_kinds and DEFLATED_TS.encode() not in raw[:4096] and not matcher.loose_hit(outside_pixels):
        return
    try:
        import pydicom

        ds = pydicom.dcmread(io.BytesIO(raw), force=True)
    except Exception:
        if raw_kinds:
            found("DICOM raw bytes (unparseable)", raw_kinds)
        return
    located: set[str] = set()
    meta = getattr(ds, "file_meta", None)
    if meta is not None:
        _walk_dicom(meta, "meta ", matcher, found, located)
    _walk_dicom(ds, "", matcher, found, located)
    if raw_kinds - located:
        found("DICOM raw bytes", raw_kinds - located)


def scan_nifti(path: Path, matcher: Matcher, found: Found) -> None:
    """NIfTI-1/2 header fields (descrip, aux_file, intent_name, db_name), extensions,
    and the raw bytes before the voxel data."""
    import nibabel as nib

    located: set[str] = set()
    outer = found

    def found(where: str, kinds: set[str]) -> None:  # noqa: F811 - records what was located
        located.update(kinds)
        outer(where, kinds)

    try:
        img = nib.load(str(path))
        hdr = img.header
    except Exception:
        scan_raw(path, matcher, found)
        return
    for fld in ("descrip", "aux_file", "intent_name", "db_name"):
        try:
            value = hdr[fld]
        except Exception:
            continue
        data = value.tobytes() if hasattr(value, "tobytes") else bytes(str(value), "utf-8")
        kinds = matcher.kinds(data)
        if kinds:
            found(f"NIfTI {fld}", kinds)
    for i, ext in enumerate(getattr(hdr, "extensions", []) or []):
        try:
            content = ext.get_content()
            data = content if isinstance(content, bytes) else ext._mangle(content)
        except Exception:
            data = b""
        if not isinstance(data, (bytes, bytearray)):
            data = str(data).encode("utf-8", "replace")
        kinds = matcher.kinds(data)
        if kinds:
            found(f"NIfTI extension {i} (code {ext.get_code()})", kinds)
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as fh:
            head = fh.read(max(int(hdr.get("vox_offset", 352) or 352), 352))
    except Exception:
        head = b""
    kinds = matcher.kinds(head) - located
    if kinds:
        outer("NIfTI header bytes", kinds)


def _walk_json(obj: Any, where: str, matcher: Matcher, found: Found, key: str = "") -> None:
    if isinstance(obj, dict):
        for k, value in obj.items():
            key_kinds = matcher.kinds(str(k))
            sub = f"{where}.{matcher.redact(str(k))}"
            if key_kinds:
                found(f"JSON key {sub}", key_kinds)
            _walk_json(value, sub, matcher, found, str(k))
    elif isinstance(obj, list):
        for i, value in enumerate(obj):
            _walk_json(value, f"{where}[{i}]", matcher, found, key)
    elif obj is not None:
        kinds = matcher.kinds(str(obj))
        if kinds and isinstance(obj, (int, float)) and not isinstance(obj, bool) and _numeric_keyword(key):
            kinds = kinds - NUMERIC_COINCIDENCE_KINDS   # SeriesNumber 123456 is no PatientID
        if kinds:
            found(f"JSON value {where or '.'}", kinds)


def scan_json(path: Path, matcher: Matcher, found: Found) -> None:
    raw = path.read_bytes()
    if not matcher.kinds(raw):
        # JSON escapes (\u00e9) hide non-ASCII values from a byte search: parse too
        if not re.search(rb"\\u[0-9a-fA-F]{4}", raw):
            return
    try:
        obj = json.loads(raw.decode("utf-8", "replace"))
    except ValueError:
        _scan_text(raw, matcher, found, "JSON")
        return
    _walk_json(obj, "", matcher, found)


def _cell_scan(header: list[str], rows: Iterable[Iterable[Any]], label: str,
               matcher: Matcher, found: Found) -> None:
    safe = [matcher.redact(str(h)) for h in header]
    for c, name in enumerate(header):
        kinds = matcher.kinds(str(name))
        if kinds:
            found(f"{label} column name {c + 1}", kinds)
    for r, row in enumerate(rows, 1):
        for c, cell in enumerate(row):
            if cell is None:
                continue
            kinds = matcher.kinds(str(cell))
            if kinds:
                col = safe[c] if c < len(safe) else str(c + 1)
                found(f"{label} row {r} column {col}", kinds)


def scan_table_text(path: Path, matcher: Matcher, found: Found) -> None:
    """CSV/TSV: column names and cells."""
    raw = path.read_bytes()
    if not matcher.kinds(raw):
        return
    text = raw.decode("utf-8", "replace")
    delim = "\t" if path.suffix.lower() in (".tsv", ".tab") else ","
    rows = list(csv.reader(io.StringIO(text), delimiter=delim))
    if not rows:
        return
    _cell_scan(rows[0], rows[1:], path.suffix.lstrip(".").upper(), matcher, found)


def scan_parquet(path: Path, matcher: Matcher, found: Found) -> None:
    """Parquet: column names, every cell (as text) and the key-value metadata."""
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception:
        scan_raw(path, matcher, found)
        return
    meta = table.schema.metadata or {}
    for key, value in meta.items():
        kinds = matcher.kinds(key + b"=" + value)
        if kinds:
            found("Parquet schema metadata", kinds)
    columns = [table.column(i).to_pylist() for i in range(table.num_columns)]
    # one big search first: most tables are clean
    blob = "\x1f".join(table.column_names) + "\x1f" + "\x1f".join(
        str(v) for col in columns for v in col if v is not None)
    if not matcher.kinds(blob):
        return
    _cell_scan(table.column_names, zip(*columns) if columns else [], "Parquet", matcher, found)


def scan_hdf5(path: Path, matcher: Matcher, found: Found) -> None:
    """HDF5: names of groups/datasets, attributes at every level, string datasets."""
    import h5py
    import numpy as np

    def attr_bytes(value: Any) -> bytes:
        if isinstance(value, bytes):
            return value
        if isinstance(value, np.ndarray):
            if value.dtype.kind in ("S", "U", "O"):
                return "\x1f".join(v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
                                   for v in value.ravel()).encode("utf-8")
            return value.tobytes() if value.dtype.kind == "V" else str(value.tolist()).encode()
        return str(value).encode("utf-8", "replace")

    try:
        fh = h5py.File(path, "r")
    except Exception:
        scan_raw(path, matcher, found)
        return
    located: set[str] = set()
    numeric_storage: list[tuple[int, int]] = []
    outer = found

    def found(where: str, kinds: set[str]) -> None:  # noqa: F811 - records what was located
        located.update(kinds)
        outer(where, kinds)

    with fh:
        def check_attrs(obj: Any, where: str) -> None:
            for key in obj.attrs.keys():
                safe_key = matcher.redact(key)
                kinds = matcher.kinds(key)
                if kinds:
                    found(f"HDF5 attribute name {where}@{safe_key}", kinds)
                try:
                    kinds = matcher.kinds(attr_bytes(obj.attrs[key]))
                except Exception:
                    continue
                if kinds:
                    found(f"HDF5 attribute {where}@{safe_key}", kinds)

        check_attrs(fh, "/")

        def visit(name: str, obj: Any) -> None:
            where = "/" + matcher.redact(name)
            base = name.rsplit("/", 1)[-1]
            kinds = matcher.kinds(base)
            if kinds:
                found(f"HDF5 name {where}", kinds)
            check_attrs(obj, where)
            if isinstance(obj, h5py.Dataset) and obj.dtype.kind in "biufc":
                numeric_storage.extend(_dataset_storage(obj))
            if isinstance(obj, h5py.Dataset) and obj.dtype.kind in ("S", "U", "O") and obj.size <= 1_000_000:
                try:
                    kinds = matcher.kinds(attr_bytes(np.asarray(obj[()])))
                except Exception:
                    kinds = set()
                if kinds:
                    found(f"HDF5 string dataset {where}", kinds)

        fh.visititems(visit)
    # Anything the structure did not explain (a compound or vlen value, free
    # space): the file's bytes outside the numeric datasets' storage. Pixel
    # chunks are numbers, and compressed ones are random bytes in which short
    # names would match by chance.
    kinds = set()
    for block in _bytes_outside(path, numeric_storage):
        kinds |= matcher.kinds(block)
    kinds -= located
    if kinds:
        outer("HDF5 raw bytes outside pixel data", kinds)


def _dataset_storage(dataset: Any) -> list[tuple[int, int]]:
    """(offset, size) of a dataset's stored bytes: every chunk, or the contiguous block."""
    dsid = dataset.id
    try:
        if dataset.chunks:
            out = []
            for i in range(dsid.get_num_chunks()):
                info = dsid.get_chunk_info(i)
                out.append((int(info.byte_offset), int(info.size)))
            return out
        offset = dsid.get_offset()
        return [] if offset is None else [(int(offset), int(dsid.get_storage_size()))]
    except Exception:  # compact storage or an unusual layout: nothing to skip
        return []


def _bytes_outside(path: Path, ranges: list[tuple[int, int]], block: int | None = None) -> Iterator[bytes]:
    """The file's bytes with the given ranges left out, as contiguous pieces."""
    block = block or RAW_CHUNK
    size = path.stat().st_size
    keep, pos = [], 0
    for start, length in sorted(ranges):
        if start > pos:
            keep.append((pos, start))
        pos = max(pos, start + length)
    if pos < size:
        keep.append((pos, size))
    with open(path, "rb") as fh:
        for start, end in keep:
            fh.seek(start)
            while start < end:
                n = min(block, end - start)
                yield fh.read(n)
                start += n


def scan_png(path: Path, matcher: Matcher, found: Found) -> None:
    """PNG text chunks tEXt, zTXt, iTXt (PNG spec 11.3.4) and eXIf."""
    data = path.read_bytes()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        scan_raw(path, matcher, found)
        return
    scan_png_bytes(data, matcher, found)


def scan_png_bytes(data: bytes, matcher: Matcher, found: Found, label: str = "PNG") -> None:
    """The text-bearing chunks of PNG bytes (pixel data is not text)."""
    pos = 8
    while pos + 8 <= len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        ctype = data[pos + 4:pos + 8]
        body = data[pos + 8:pos + 8 + length]
        pos += 12 + length
        text = b""
        if ctype == b"tEXt" or ctype == b"eXIf":
            text = body
        elif ctype == b"zTXt":
            key, _, rest = body.partition(b"\x00")
            try:
                text = key + b"\x00" + zlib.decompress(rest[1:])
            except zlib.error:
                text = body
        elif ctype == b"iTXt":
            key, _, rest = body.partition(b"\x00")
            flag = rest[:1]
            rest = rest[2:]
            lang, _, rest = rest.partition(b"\x00")
            tkey, _, txt = rest.partition(b"\x00")
            if flag == b"\x01":
                try:
                    txt = zlib.decompress(txt)
                except zlib.error:
                    pass
            text = b"\x00".join([key, lang, tkey, txt])
        if text:
            kinds = matcher.kinds(text)
            if kinds:
                found(f"{label} {ctype.decode('latin-1')} chunk", kinds)
        if ctype == b"IEND":
            break


def scan_nrrd(path: Path, matcher: Matcher, found: Found) -> None:
    """NRRD header lines (up to the blank line); detached or raw data is not text."""
    data = path.read_bytes()
    end = data.find(b"\n\n")
    header = data if end < 0 else data[:end]
    _scan_text(header, matcher, found, "NRRD header")


#: Raw scans read this much at a time (overlapping by RAW_OVERLAP bytes, longer
#: than any identifier), so a multi-GB HDF5 or .gz never sits in memory whole.
RAW_CHUNK = 64 * 1024 * 1024
RAW_OVERLAP = 4096


def _raw_chunks(path: Path) -> Iterator[bytes]:
    """The file's bytes (un-gzipped when gzip-wrapped) in overlapping chunks."""
    from ..dicomio import GZIP_MAGIC

    with open(path, "rb") as probe:
        gz = probe.read(2) == GZIP_MAGIC
    opener = gzip.open if gz else open
    tail = b""
    try:
        with opener(path, "rb") as fh:
            while True:
                block = fh.read(RAW_CHUNK)
                if not block:
                    break
                yield tail + block
                tail = block[-RAW_OVERLAP:]
    except (OSError, EOFError, zlib.error):
        if gz:  # a corrupt .gz: its stored bytes are all there is
            yield from _raw_chunks_plain(path)
        else:
            raise


def _raw_chunks_plain(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as fh:
        tail = b""
        while block := fh.read(RAW_CHUNK):
            yield tail + block
            tail = block[-RAW_OVERLAP:]


def scan_raw(path: Path, matcher: Matcher, found: Found, label: str = "raw bytes") -> None:
    """Any file: its bytes (un-gzipped when gzip-wrapped), chunk by chunk."""
    kinds: set[str] = set()
    for chunk in _raw_chunks(path):
        kinds |= matcher.kinds(chunk)
    if kinds:
        found(label, kinds)


#: An embedded file in HTML/CSS/SVG (RFC 2397 data URL, base64-encoded).
DATA_URI = re.compile(rb"data:([a-z0-9.+/-]*)(?:;[a-z0-9=.-]+)*;base64,([a-z0-9+/=\s]+)", re.IGNORECASE)


def scan_html(path: Path, matcher: Matcher, found: Found) -> None:
    """HTML text, with each base64 data URI decoded and scanned as what it holds.

    Base64 text is random letters: scanning it as text would match short names
    by chance; its decoded bytes (an image's text chunks, or raw bytes) are what
    could carry an identifier.
    """
    data = path.read_bytes()
    payloads: list[tuple[bytes, bytes]] = []

    def cut(m: re.Match) -> bytes:
        payloads.append((m.group(1).lower(), m.group(2)))
        return b"data:embedded"

    text = DATA_URI.sub(cut, data)
    _scan_text(text, matcher, found, "HTML")
    for n, (mime, b64) in enumerate(payloads, 1):
        try:
            raw = base64.b64decode(b64, validate=False)
        except (ValueError, TypeError):
            raw = b64
        if raw[:8] == b"\x89PNG\r\n\x1a\n":
            scan_png_bytes(raw, matcher, found, label=f"HTML embedded image {n}")
        else:
            kinds = matcher.kinds(raw)
            if kinds:
                found(f"HTML embedded {mime.decode('latin-1') or 'data'} {n}", kinds)


TEXT_SUFFIXES = {".yaml", ".yml", ".txt", ".md", ".log", ".bval", ".bvec",
                 ".xml", ".tsv_", ".js", ".css", ".svg", ".ini", ".cfg", ".toml"}


def _scanner(path: Path) -> Callable[[Path, Matcher, Found], None]:
    name = path.name.lower()
    suffix = path.suffix.lower()
    if name.endswith((".nii", ".nii.gz", ".hdr", ".img")):
        return scan_nifti
    if suffix in (".dcm", ".dicom", ".ima") or name.endswith(".dcm.gz"):
        return scan_dicom
    if suffix == ".json":
        return scan_json
    if suffix in (".csv", ".tsv", ".tab"):
        return scan_table_text
    if suffix in (".parquet", ".pq"):
        return scan_parquet
    if suffix in (".h5", ".hdf5", ".hdf", ".he5"):
        return scan_hdf5
    if suffix == ".png":
        return scan_png
    if suffix in (".nrrd", ".nhdr"):
        return scan_nrrd
    if suffix in (".html", ".htm", ".svg", ".css"):
        return scan_html
    if suffix in TEXT_SUFFIXES:
        return lambda p, m, f: _scan_text(p.read_bytes(), m, f, suffix.lstrip(".").upper())
    with open(path, "rb") as fh:
        head = fh.read(132)
    if head[128:132] == b"DICM":
        return scan_dicom
    return scan_raw


# --------------------------------------------------------------------------- verify

def retained_kinds(config: dict | None, audit: dict | None = None) -> dict[str, str]:
    """Kinds the user chose to keep in share/ (PS3.15 E.3 options), with the config key.

    Reads ``deid.options.<option>`` and ``deid.keep_folder_names`` from the
    config and, when given, the effective ``options`` that the de-identification
    recorded in ``share/audit.yaml`` (after a preset adjusted them).
    """
    deid = ((config or {}).get("deid") or {})
    sources = [("deid.", deid), ("deid.options.", deid.get("options") or {}),
               ("audit.yaml options.", (audit or {}).get("options") or {})]
    out = {}
    for key, kinds in RETAINING_OPTIONS.items():
        for prefix, source in sources:
            if isinstance(source, dict) and source.get(key) is True:
                for kind in kinds:
                    out.setdefault(kind, prefix + key)
    return out


def _read_audit(share: Path) -> dict | None:
    """``share/audit.yaml`` as written by the de-identification stage, if any."""
    path = share / "audit.yaml"
    if not path.is_file():
        return None
    try:
        import yaml

        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except Exception:
        return None
    return doc if isinstance(doc, dict) else None


def _share_files(share: Path, exclude: set[Path]) -> list[Path]:
    files = []
    for root, dirs, names in os.walk(share):
        dirs.sort()
        for name in sorted(names):
            p = Path(root) / name
            if p in exclude or (name.startswith(".verification.json") and name.endswith(".part")):
                continue
            files.append(p)
    return files


def _share_dirs(share: Path) -> list[Path]:
    return sorted(Path(root) / d for root, dirs, _ in os.walk(share) for d in dirs)


class VerifyResult(dict):
    """The result written to verification.json; ``private_hits`` (an attribute, not an
    item, so it never reaches a JSON dump or the report) adds the identifying values."""

    private_hits: list = []


def safe_values(config: dict | None, audit: dict | None = None) -> list[str]:
    """``verify.safe_values`` of the config, and those the audit recorded (so
    ``dicomprep verify OUT`` without a config honours them): values the user
    declared not identifying."""
    values = list(((config or {}).get("verify") or {}).get("safe_values") or [])
    values += list(((audit or {}).get("verify") or {}).get("safe_values") or [])
    return sorted({str(v) for v in values if str(v).strip()})


def verify_share(out_dir: str | os.PathLike, *, log: str | os.PathLike | None = None,
                 config: dict | None = None, ids: IdentifierSet | None = None,
                 output: str | os.PathLike | None = None, status_if_clean: str = "pass",
                 status_if_hits: str = "fail", workers: int = 1) -> dict:
    """Scan every file and path component under ``OUT/share/``; write the result.

    Writes ``share/verification.json`` (or ``output``) atomically in every case
    (pass, fail, or an error before the scan) and the hits with full paths, the
    source of each identifier and its value to ``private/logs/verify.log`` (or
    ``log``). Returns the result dict: status, files_scanned,
    identifiers_checked (count per kind), not_checked (kind -> config key that
    retains it), declared_safe (how many values ``verify.safe_values`` lists),
    hits [{file, kind, where, source, fix}] (no values) and, on a failure,
    what_to_do. The attribute ``private_hits`` of the returned
    :class:`VerifyResult` holds the hits with their identifying values (for the
    terminal message and the private log; never written to share/).
    """
    from ..dicomio import write_text

    out_dir = Path(out_dir)
    share = out_dir / "share"
    output = Path(output) if output else share / "verification.json"
    log_path = Path(log) if log else out_dir / "private" / "logs" / "verify.log"
    logger = get_logger("verify", log_path, stderr=False)
    try:
        if ids is None:
            ids = collect_identifiers(out_dir, log=logger, workers=workers)
    except Exception as exc:
        message = (f"the leak scan could not start: {exc}. Nothing in share/ may be handed out until "
                   "`dicomprep verify OUT` passes.")
        failed = json.dumps({"status": "error", "error": message, "files_scanned": 0, "n_hits": 0, "hits": []},
                            indent=2) + "\n"
        write_text(output, failed)
        write_text(log_path.parent / "verification.json", failed)
        logger.error("verify: %s", message)
        raise
    audit = _read_audit(share)
    retained = retained_kinds(config, audit)
    declared = safe_values(config, audit)
    ids = ids.without(retained)
    ids.declare_safe(declared)
    matcher = Matcher(ids)
    logger.info("verify: %d identifiers (%s) against %s", len(ids),
                ", ".join(f"{k} {n}" for k, n in ids.counts().items() if n), share)
    if declared:
        logger.info("verify: %d values declared safe in verify.safe_values are not searched", len(declared))

    hits: list[dict] = []
    private_hits: list[dict] = []
    seen: set[tuple[str, str, str]] = set()
    files = _share_files(share, {output.resolve(), output}) if share.is_dir() else []

    def report(rel: Path, where: str, kinds: set[str]) -> None:
        safe_file = "/".join(matcher.redact(part) for part in rel.parts)
        safe_where = matcher.redact(where)
        for kind in sorted(kinds):
            key = (safe_file, kind, safe_where)
            if key in seen:
                continue
            seen.add(key)
            values = sorted(v for k, v in matcher.recent if k == kind)
            source = "; ".join(sorted({ids.source_of(kind, v) for v in values})) or "the input headers"
            fix = FIX.get(kind, FIX["_"])
            hits.append({"file": safe_file, "kind": kind, "where": safe_where, "source": source, "fix": fix})
            private_hits.append({"file": str(share / rel), "kind": kind, "where": safe_where, "source": source,
                                 "values": values, "fix": fix})
            logger.error("leak: %s: %s in %s; the identifier %s comes from %s; to do: %s", share / rel, kind,
                         safe_where, " / ".join(repr(v) for v in values) or "(see the file)", source, fix)

    matcher.forget()
    for d in _share_dirs(share) if share.is_dir() else []:
        rel = d.relative_to(share)
        kinds = matcher.kinds(d.name)
        if kinds:
            report(rel, f"path component {len(rel.parts)} (folder)", kinds)
        matcher.forget()
    for path in files:
        rel = path.relative_to(share)
        matcher.forget()
        kinds = matcher.kinds(path.name)
        if kinds:
            report(rel, "path component (file name)", kinds)
        try:
            scanner = _scanner(path)
            scanner(path, matcher, lambda where, k, rel=rel: report(rel, where, k))
        except Exception as exc:  # never let a strange file pass unseen: fall back to bytes
            logger.warning("verify: %s could not be parsed (%s); scanning its raw bytes", path, exc)
            try:
                scan_raw(path, matcher, lambda where, k, rel=rel: report(rel, where, k))
            except OSError as err:
                report(rel, f"unreadable file ({type(err).__name__})", {"unreadable"})
    from .verify_pixels import scan_share_pixels  # the pixels too: OCR (deid/verify_pixels.py)
    pixel_scan = scan_share_pixels(out_dir, files, matcher, ids, report, config, logger)
    result = {
        "status": status_if_hits if hits else status_if_clean,
        "files_scanned": len(files),
        "pixels": pixel_scan,
        "identifiers_checked": ids.counts(),
        "not_checked": retained,
        "declared_safe": len(declared),
        "n_hits": len(hits),
        "hits": hits,
    }
    if hits and status_if_hits == "fail":
        result["what_to_do"] = _what_to_do(hits)
    # share/ is byte-identical for the same input and secret: the scan's seconds stay in the private copy
    shared = {**result, "pixels": {k: v for k, v in (pixel_scan or {}).items() if k != "seconds"}}
    write_text(output, json.dumps(shared, indent=2) + "\n")
    # a private copy with the values, beside the log: it survives a workflow engine that
    # deletes the outputs of a failed job, and tells the user exactly what was found
    write_text(log_path.parent / "verification.json",
               json.dumps({**result, "hits": private_hits}, indent=2, ensure_ascii=False) + "\n")
    result = VerifyResult(result)
    result.private_hits = private_hits
    logger.info("verify: %s, %d files scanned, %d hits", result["status"], len(files), len(hits))
    if hits and status_if_hits == "fail":
        logger.error("verify: %s", _failure_message(result))
    return result


def _what_to_do(hits: list[dict]) -> list[str]:
    """One sentence per (kind, source): what the user can do (no identifying values)."""
    out = []
    for kind, source in sorted({(h["kind"], h.get("source", "")) for h in hits}):
        n = sum(1 for h in hits if h["kind"] == kind and h.get("source", "") == source)
        out.append(f"{kind} from {source or 'the input headers'} found {n} time(s): "
                   f"{FIX.get(kind, FIX['_'])}")
    return out


def _failure_message(result: dict, limit: int = 20) -> str:
    """The sentence a person reads in the terminal: how many hits, each as
    ``file: kind (where)`` with the source of the identifier (an input folder is
    named: the user owns it; other values stay in private/logs/verify.log), and
    what to do per kind and source."""
    hits = getattr(result, "private_hits", None) or result["hits"]
    public = result["hits"]
    lines = []
    for pub, h in list(zip(public, hits))[:limit]:
        values = h.get("values", [])
        named = (" " + ", ".join(repr(v) for v in values[:3])) if h["kind"] == "folder" and values else ""
        lines.append(f"  {pub['file']}: {pub['kind']} ({pub['where']}) from {h.get('source') or 'the input headers'}"
                     f"{named}")
    if len(public) > limit:
        lines.append(f"  and {len(public) - limit} more")
    todo = [f"  {line}" for line in _what_to_do(public)]
    return (f"{len(public)} identifiers found in share/, so nothing in share/ may be handed out yet:\n"
            + "\n".join(lines) + "\nWhat to do:\n" + "\n".join(todo)
            + "\nEvery hit is listed in share/verification.json and, with the values, in private/logs/verify.log.")


def verify_rule(*, out_dir: str, output: Any = None, log: str | None = None, enforce: bool = True,
                config: dict | None = None, output_files: list | None = None, threads: int = 1,
                **_: Any) -> dict:
    """Workflow entry (rule ``verify``): write share/verification.json; fail on a hit.

    With ``enforce`` false (``anonymisation: false``) the status is
    ``not-deidentified`` and the rule succeeds whatever is found.
    """
    target = None
    if isinstance(output, dict) and output:
        target = output.get("result") or next(iter(output.values()))
    elif output_files:
        target = output_files[0]
    elif isinstance(output, (str, os.PathLike)):
        target = output
    result = verify_share(out_dir, log=log, config=config, output=target,
                          status_if_clean="pass" if enforce else "not-deidentified",
                          status_if_hits="fail" if enforce else "not-deidentified",
                          workers=max(1, int(threads or 1)))
    if enforce and result["hits"]:
        raise DicomprepError(_failure_message(result))
    return result


def verify_command(out_dir: str | os.PathLike, config: dict | None = None) -> int:
    """``dicomprep verify OUT``: scan, print a summary, exit status 0 (pass) or 1 (hits)."""
    try:
        result = verify_share(out_dir, config=config)
    except DicomprepError as exc:
        print(f"dicomprep verify: {exc}", file=sys.stderr)
        return 2
    counts = ", ".join(f"{n} {k}" for k, n in result["identifiers_checked"].items() if n)
    print(f"{result['status']}: {result['files_scanned']} files scanned for {counts}")
    if result["hits"]:
        print(_failure_message(result), file=sys.stderr)
        return 1
    return 0
