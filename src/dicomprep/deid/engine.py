"""Apply the PS3.15 Annex E profile to datasets, files and units.

:class:`Deidentifier` walks every element at every depth (all sequences,
listed or not, and allowlisted private sequences) with pydicom's raw elements:
an element that is only kept is never decoded, one that is removed is deleted
unparsed, and only replaced values are built. One action lookup per element
(:class:`~.profile.ProfilePlan`). Pseudonyms, UIDs and date shifts come from
:mod:`.pseudonym` (keyed HMAC), so output is byte-identical for the same input
and secret in any order or process: nothing depends on the clock or a random
source.

:class:`ByteRewriter` is the fast path used for files: the same decisions made
on the encoded bytes (kept elements are copied, never parsed into Python
values); anything unusual falls back to :class:`Deidentifier`, and the tests
check both give identical bytes. Files are written atomically by rename
(:func:`write_bytes`) without the per-file fsync of ``dicomio.write_dataset``.

:func:`deidentify_unit` filters a unit's series (:func:`series_filter_reasons`),
de-identifies every remaining file into ``share/dicom/<unit>/<series_id>/NNNN.dcm``,
quarantines files whose de-identification fails, and writes the manifest,
``counts.json`` and the unit's crosswalk rows (docs/contracts.md).
"""
from __future__ import annotations

import datetime as dt
import functools
import hashlib
import math
import os
import re
import struct
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pydicom
import pydicom.uid
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.datadict import tag_for_keyword
from pydicom.valuerep import VR as VR_ENUM

from .. import dicomio
from ..errors import DicomprepError, UnreadableDicom
from ..logs import get_logger
from . import edits, pixels, pseudonym
from .profile import (
    STANDARD_UID_ROOT, ProfilePlan, allowlist_label, load_private_allowlist, plan_from_config, vr_of,
)

PIXEL_TAGS = (0x7FE00008, 0x7FE00009, 0x7FE00010)
SHARED_FG, PER_FRAME_FG = 0x52009229, 0x52009230
PATIENT_ID, ISSUER, PATIENT_NAME, PATIENT_SEX = 0x00100020, 0x00100021, 0x00100010, 0x00100040
SPECIFIC_CHARSET = 0x00080005
UNDEFINED_LENGTH = 0xFFFFFFFF
#: File meta elements that are kept; all others of group 0002 are removed
#: (Source/Sending/Receiving AE titles, private information).
FILE_META_KEEP = {0x00020000, 0x00020001, 0x00020002, 0x00020003, 0x00020010, 0x00020012, 0x00020013}
TEXT_VRS = {"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UT", "UR", "AS"}
#: VRs whose values the engine rewrites as ASCII bytes directly (no pydicom conversion).
ASCII_VRS = frozenset({"UI", "DA", "TM", "DT", "AS", "CS", "SH", "LO", "PN", "IS", "DS", "AE"})
#: Dummy values for the D action (PS3.15 E.1.1: a non-zero-length value consistent with the VR).
DUMMY = {
    "PN": "ANONYMIZED", "LO": "ANONYMIZED", "SH": "ANONYMIZED", "CS": "ANONYMIZED", "LT": "ANONYMIZED",
    "ST": "ANONYMIZED", "UT": "ANONYMIZED", "UC": "ANONYMIZED", "AE": "ANONYMIZED", "UR": "ANONYMIZED",
    "DA": "19000101", "TM": "000000", "DT": "19000101000000", "AS": "000Y", "IS": "0", "DS": "0",
    "US": 0, "SS": 0, "UL": 0, "SL": 0, "UV": 0, "SV": 0, "FL": 0.0, "FD": 0.0, "AT": 0,
    "OB": b"\x00\x00", "OW": b"\x00\x00", "OD": b"\x00" * 8, "OF": b"\x00" * 4, "OL": b"\x00" * 4,
    "OV": b"\x00" * 8, "UN": b"\x00\x00",
}
MAX_AGE_YEARS = 89
#: (0002,0012) / (0002,0013) of every written file (PS3.10 7.1): pydicom's implementation UID.
IMPLEMENTATION_CLASS_UID = str(pydicom.uid.PYDICOM_IMPLEMENTATION_UID)
IMPLEMENTATION_VERSION_NAME = "DICOMPREP_DEID"
#: Value Representations of PS3.5 Table 6.2-1 (plus pydicom's ambiguous "US or SS" forms).
VALID_VRS = frozenset(v.value for v in VR_ENUM)
#: A UID inside a binary or text blob: at least 5 numeric components, 10+ characters.
EMBEDDED_UID = re.compile(rb"(?<![\d.])[0-2](?:\.\d+){4,}(?![\d.])")


class DeidentificationFailed(DicomprepError):
    """A file could not be de-identified; it is quarantined, never copied through."""


# --- dates, times, ages ----------------------------------------------------------

def _date_time_pairs() -> dict[int, int]:
    """DA tag -> TM tag of the same name (StudyDate -> StudyTime, ...), from the dictionary."""
    from pydicom.datadict import DicomDictionary, tag_for_keyword

    pairs = {}
    for tag, entry in DicomDictionary.items():
        if entry[0] == "DA" and entry[4].endswith("Date"):
            t = tag_for_keyword(entry[4][:-4] + "Time")
            if t is not None and DicomDictionary.get(t, ("",))[0] == "TM":
                pairs[int(tag)] = int(t)
    return pairs


DATE_TIME_PAIRS = _date_time_pairs()
_TIME_RE = re.compile(r"^(\d{2})(\d{2})?(\d{2})?(?:\.(\d{1,6}))?$")
_DT_RE = re.compile(r"^(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(?:\.(\d{1,6}))?([+-]\d{4})?$")


@functools.lru_cache(maxsize=4096)  # pure: a series repeats its dates and times
def shift_date(value: str, days: int) -> str:
    """Shift a DA value (YYYYMMDD; a range ``a-b`` shifts both ends) by ``days``."""
    value = value.strip()
    if not value:
        return value
    if "-" in value:
        return "-".join(shift_date(v, days) if v else "" for v in value.split("-"))
    digits = value.replace(".", "")  # ACR-NEMA YYYY.MM.DD
    if len(digits) != 8 or not digits.isdigit():
        raise ValueError("DA value is not YYYYMMDD")
    day = dt.date(int(digits[:4]), int(digits[4:6]), int(digits[6:8]))
    return (day + dt.timedelta(days=days)).strftime("%Y%m%d")


def _parse_time(value: str) -> tuple[int, str]:
    """Seconds since midnight (microseconds dropped into the fraction) and a format tag."""
    m = _TIME_RE.match(value.strip().replace(":", ""))
    if not m:
        raise ValueError("TM value is not HHMMSS.FFFFFF")
    hh, mm, ss, frac = m.groups()
    seconds = int(hh) * 3600 + int(mm or 0) * 60 + int(ss or 0)
    precision = "h" if mm is None else "m" if ss is None else "s"
    return seconds, precision + (frac or "")


def _format_time(seconds: int, fmt: str) -> str:
    seconds %= 86400
    hh, rem = divmod(seconds, 3600)
    mm, ss = divmod(rem, 60)
    precision, frac = fmt[0], fmt[1:]
    if precision == "h":
        return f"{hh:02d}"
    if precision == "m":
        return f"{hh:02d}{mm:02d}"
    return f"{hh:02d}{mm:02d}{ss:02d}" + (f".{frac}" if frac else "")


@functools.lru_cache(maxsize=4096)  # pure: a series repeats its dates and times
def shift_time(value: str, seconds: int) -> str:
    """Shift a TM value (with no date beside it) by ``seconds`` modulo one day, keeping its precision."""
    value = value.strip()
    if not value:
        return value
    if "-" in value:
        return "-".join(shift_time(v, seconds) if v else "" for v in value.split("-"))
    base, fmt = _parse_time(value)
    return _format_time(base + seconds, fmt)


@functools.lru_cache(maxsize=4096)  # pure: a series repeats its dates and times
def shift_date_time_pair(date: str, time: str, delta: dt.timedelta) -> tuple[str, str]:
    """Shift a date and its time together (a day may carry over), keeping the time's precision."""
    date, time = date.strip(), time.strip()
    day = dt.date(int(date[:4]), int(date[4:6]), int(date[6:8]))
    seconds, fmt = _parse_time(time)
    moment = dt.datetime.combine(day, dt.time()) + dt.timedelta(seconds=seconds) + delta
    new_seconds = moment.hour * 3600 + moment.minute * 60 + moment.second
    return moment.strftime("%Y%m%d"), _format_time(new_seconds, fmt)


@functools.lru_cache(maxsize=4096)  # pure: a series repeats its dates and times
def shift_datetime(value: str, delta: dt.timedelta, days: int | None = None) -> str:
    """Shift a DT value (YYYY[MM[DD[HH[MM[SS[.F]]]]]][&ZZXX]) keeping its precision and offset.

    With a time part the whole ``delta`` applies; a date-only value moves by ``days``
    (default ``delta.days``), as a DA would."""
    if days is None:
        days = delta.days
    value = value.strip()
    if not value:
        return value
    if "-" in value[1:] and not re.search(r"[+-]\d{4}$", value):
        return "-".join(shift_datetime(v, delta, days) if v else "" for v in value.split("-"))
    m = _DT_RE.match(value)
    if not m:
        raise ValueError("DT value is not YYYYMMDDHHMMSS")
    y, mo, d, hh, mi, ss, frac, tz = m.groups()
    if mo is None or d is None:  # year or year-month only: shift the day offset's years/months roughly
        base = dt.date(int(y), int(mo or 1), 1) + dt.timedelta(days=days)
        return (f"{base.year:04d}" + (f"{base.month:02d}" if mo else "")) + (tz or "")
    moment = dt.datetime(int(y), int(mo), int(d), int(hh or 0), int(mi or 0), int(ss or 0))
    moment += delta if hh is not None else dt.timedelta(days=days)
    out = moment.strftime("%Y%m%d")
    if hh is not None:
        out += f"{moment.hour:02d}"
        if mi is not None:
            out += f"{moment.minute:02d}"
            if ss is not None:
                out += f"{moment.second:02d}" + (f".{frac}" if frac else "")
    return out + (tz or "")


#: What a value that does not parse as its VR expects (``***`` in a DA of a vendor's
#: already-anonymised export) raises; caught per attribute, never per file.
VALUE_ERRORS = (ValueError, OverflowError, TypeError, IndexError)
_UID_SYNTAX = re.compile(r"^[0-9]+(?:\.[0-9]+)*$")


def shift_values(vr: str, values: list[str], patient: "PatientContext") -> list[str] | None:
    """The values of a DA/TM/DT element shifted by the patient's offset, or None when
    one of them does not parse as its VR (the caller empties the element)."""
    try:
        if vr == "DA":
            return [shift_date(v, patient.days) for v in values]
        if vr == "TM":
            return [shift_time(v, patient.seconds) for v in values]
        return [shift_datetime(v, patient.delta, patient.days) for v in values]
    except VALUE_ERRORS:
        return None


def shift_pair(date: str, time: str, patient: "PatientContext") -> tuple[str | None, str | None]:
    """A date and its time shifted together; when one of them does not parse, the other
    is shifted alone and the bad one comes back as None (the caller empties it)."""
    try:
        return shift_date_time_pair(date, time, patient.delta)
    except VALUE_ERRORS:
        pass
    new_date, new_time = shift_values("DA", [date], patient), shift_values("TM", [time], patient)
    return (new_date[0] if new_date else None), (new_time[0] if new_time else None)


def cap_age(value: str) -> str:
    """PatientAge (0010,1010) with ages over 89 years capped to ``090Y`` (PS3.15 E.1.1 / HIPAA)."""
    value = (value or "").strip()
    m = re.match(r"^(\d{1,3})([DWMY])$", value)
    if not m:
        return ""
    n, unit = int(m.group(1)), m.group(2)
    years = n / {"D": 365.25, "W": 52.18, "M": 12.0, "Y": 1.0}[unit]
    return "090Y" if years > MAX_AGE_YEARS else value


# --- identifiers inside kept private blobs ------------------------------------------------------

#: Top-level attributes whose values are scrubbed out of kept private blobs (whole words).
BLOB_IDENTIFIER_TAGS = (
    0x00100010, 0x00100020, 0x00101000, 0x00101001, 0x00080080, 0x00080081, 0x00081010, 0x00181000,
    0x00080090, 0x00081050, 0x00081070, 0x00081040, 0x00080050, 0x00100030,
    0x00080020, 0x00080021, 0x00080022, 0x00080023, 0x00080030, 0x00080031, 0x00080032, 0x00080033,
)
#: Words never scrubbed from blobs: field names of the vendor headers converters read
#: (Siemens CSA: B_value, B_matrix, ICE_Dims, SliceNormalVector ...).
PROTECTED_BLOB_WORDS = frozenset({
    b"value", b"matrix", b"dims", b"ice", b"slice", b"time", b"times", b"image", b"images", b"mosaic",
    b"normal", b"vector", b"phase", b"direction", b"series", b"protocol", b"true", b"false", b"none",
    b"yes", b"no", b"test", b"dicom", b"siemens", b"ge", b"philips", b"mr", b"ct",
})
_BLOB_SPLIT = re.compile(rb"[\^\\=,]")


def _raw_bytes(ds: Dataset, tag: int) -> bytes:
    """The value of a top-level element as stored (raw bytes; latin-1 for converted text)."""
    elem = ds._dict.get(tag)
    if elem is None:
        return b""
    if type(elem) is RawDataElement:
        return elem.value or b""
    value = elem.value
    if value is None:
        return b""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        value = "\\".join(str(v) for v in value)
    return str(value).encode("latin-1", "ignore")


@dataclass(frozen=True)
class BlobPattern:
    """Whole-word regex of identifying strings, with the lower-cased literals for a quick
    test: ``tokens`` (each match contains one) and ``ids`` (IDs without separators: a
    match of an ID written with separators contains one once they are taken out)."""

    regex: re.Pattern
    tokens: tuple[bytes, ...]
    ids: tuple[bytes, ...] = ()

    def may_match(self, lowered: bytes) -> bool:
        """False when no match is possible in ``lowered`` (cheap: substring tests)."""
        if any(t in lowered for t in self.tokens):
            return True
        if self.ids:
            compact = lowered.translate(None, ID_SEPARATOR_BYTES)
            return any(i in compact for i in self.ids)
        return False


#: Separators taken out of text before looking for an ID (see :func:`.spellings.compact_id`).
ID_SEPARATOR_BYTES = b"-./ _"


#: Tags whose values are names (PN), dates (DA) and times (TM) among BLOB_IDENTIFIER_TAGS.
_BLOB_NAME_TAGS = frozenset({0x00100010, 0x00101001, 0x00080090, 0x00081050, 0x00081070})
_BLOB_DATE_TAGS = frozenset({0x00100030, 0x00080020, 0x00080021, 0x00080022, 0x00080023})
_BLOB_TIME_TAGS = frozenset({0x00080030, 0x00080031, 0x00080032, 0x00080033})
_BLOB_ID_TAGS = frozenset({0x00100020, 0x00101000, 0x00080050, 0x00181000})


@functools.lru_cache(maxsize=256)
def _compile_blob_pattern(tokens: tuple[bytes, ...], extra: tuple[tuple[bytes, bytes, bool], ...] = ()
                          ) -> BlobPattern:
    """``extra``: (regex source, literal every match holds, literal is an ID to look for
    without separators)."""
    from .spellings import trie_regex

    # matched on the lower-cased bytes (ASCII case folding, as re.IGNORECASE on bytes), tokens as a
    # trie: the longest token first at each position, then the extra patterns
    lowered = sorted({t.lower() for t in tokens})
    parts = ([trie_regex(lowered)] if lowered else []) + [x[0].lower() for x in extra]
    regex = re.compile(rb"(?<![a-z0-9])(?:" + b"|".join(parts) + rb")(?![a-z0-9])")
    quick = tuple(t.lower() for t in tokens) + tuple(x[1].lower() for x in extra if not x[2])
    ids = tuple(sorted({x[1].lower() for x in extra if x[2]}))
    return BlobPattern(regex, quick, ids)


def _decode_raw(value: bytes, charsets: list[str]) -> str:
    """A raw text value decoded with the file's Specific Character Set (PS3.5 6.1)."""
    from pydicom.charset import convert_encodings, decode_bytes

    try:
        return decode_bytes(value, convert_encodings(charsets or ["ISO_IR 6"]), {0x5C, 0x3D, 0x5E})
    except Exception:
        return value.decode("latin-1")


def blob_pattern(values: list[bytes], charset: bytes = b"", tags: tuple = ()) -> BlobPattern | None:
    """See :func:`_blob_pattern` (memoised: the files of a series share their identifiers)."""
    return _blob_pattern(tuple(bytes(v) for v in values), bytes(charset), tuple(tags))


@functools.lru_cache(maxsize=128)
def _blob_pattern(values: tuple, charset: bytes = b"", tags: tuple = ()) -> BlobPattern | None:
    """Whole-word, case-insensitive pattern of a dataset's identifying strings, in every
    spelling (:mod:`.spellings`) and every character set the file declares: names
    ("Smith, John", "J. Smith", no accents, ISO 2022 escapes), IDs with or without
    separators, dates (14.03.2019, 14 Mar 2019, ... and a DT ``20190314123000``),
    times (HHMMSS, HH:MM:SS), institution, station, serial (parts of 3+ characters).
    ``tags`` names the tag of each value (default :data:`BLOB_IDENTIFIER_TAGS`)."""
    from .spellings import compact_id, date_spellings, encoded_forms, fold_accents, id_regex_source, name_spellings

    tags = tags or BLOB_IDENTIFIER_TAGS
    charsets = [c.strip() for c in charset.decode("ascii", "replace").strip(" \x00").split("\\")] if charset else []
    texts: set[str] = set()
    extra: set[bytes] = set()
    for tag, value in zip(tags, values):
        value = value.rstrip(b"\x00 ")
        if not value:
            continue
        text = _decode_raw(value, charsets)
        for part in re.split(r"[\\=]", text):
            part = part.strip("\x00 ")
            if not part:
                continue
            if tag in _BLOB_DATE_TAGS:
                day = _parse_da(part)
                if day is not None:
                    texts.update(date_spellings(day))
                    # the date as the head of a DT (20190314123000.5): digits may follow
                    digits = day.strftime("%Y%m%d").encode()
                    extra.add((digits + rb"\d{0,6}(?:\.\d{1,6})?", digits, False))
                continue
            if tag in _BLOB_TIME_TAGS:
                digits = part.split(".")[0]
                if len(digits) == 6 and digits.isdigit() and digits != "000000":
                    texts.update({part, digits, f"{digits[:2]}:{digits[2:4]}:{digits[4:]}"})
                continue
            if tag in _BLOB_NAME_TAGS:
                texts.update(t for t in name_spellings(part) if len(t) >= 3)
            if tag in _BLOB_ID_TAGS:
                source = id_regex_source(part)
                if source:
                    extra.add((source.encode("ascii"), compact_id(part).encode("ascii"), True))
            for piece in re.split(r"[\^,]", part):
                piece = piece.strip()
                if len(piece) >= 3:
                    texts.update({piece, fold_accents(piece)})
                    texts.update(w for w in piece.split() if len(w) >= 3)
                    texts.update(fold_accents(w) for w in piece.split() if len(w) >= 3)
    tokens: set[bytes] = set()
    for text in texts:
        if text.lower().encode("utf-8", "replace") in PROTECTED_BLOB_WORDS:
            continue
        tokens |= {t for t in encoded_forms(text, charsets) if len(t) >= 3}
    tokens = {t for t in tokens if t.lower() not in PROTECTED_BLOB_WORDS}
    if not tokens and not extra:
        return None
    return _compile_blob_pattern(tuple(sorted(tokens, key=lambda t: (-len(t), t))), tuple(sorted(extra)))


def _parse_da(value: str) -> "dt.date | None":
    digits = value.strip().replace(".", "").replace("-", "")
    if len(digits) != 8 or not digits.isdigit():
        return None
    try:
        return dt.date(int(digits[:4]), int(digits[4:6]), int(digits[6:]))
    except ValueError:
        return None


def clean_ge_protocol_block(deid: "Deidentifier", value: bytes, pattern: BlobPattern | None) -> bytes:
    """GE Protocol Data Block (0025,xx1B of GEMS_SERS_01): a 4-byte length + gzip text of
    ``KEY "value"`` lines. Rewritten without the free-text lines (SEDESC: the series
    description, removed by the profile elsewhere) and with UIDs and the dataset's
    identifying strings scrubbed; re-compressed deterministically (mtime 0)."""
    import gzip
    import zlib

    if len(value) < 8 or value[4:6] != b"\x1f\x8b":
        return b""  # not the expected layout: keep nothing of it
    try:
        text = gzip.decompress(value[4:4 + int.from_bytes(value[:4], "little")])
    except (OSError, EOFError, zlib.error):
        return b""
    lines = [ln for ln in text.split(b"\n") if not ln.startswith(GE_PROTOCOL_FREE_TEXT)]
    text = deid.scrub_embedded_uids(b"\n".join(lines), pattern)
    packed = gzip.compress(text, compresslevel=6, mtime=0)
    out = len(packed).to_bytes(4, "little") + packed
    return out + b"\x00" if len(out) % 2 else out


#: Keys of free text in the GE protocol block (series description, comments).
GE_PROTOCOL_FREE_TEXT = (b"SEDESC ", b"COMMENT", b"EXAMDESC", b"PATIENT", b"REFPHY", b"OPERATOR")
#: Cleaners of kept private values that are not plain text or fixed binary layouts.
VENDOR_CLEANERS = {("GEMS_SERS_01", 0x0025, 0x1B): clean_ge_protocol_block}


#: VRs of private text values checked for a whole-value date or date-time.
PRIVATE_TEXT_VRS = frozenset({"LO", "SH", "ST", "LT", "UT", "UC", "CS", "OB"})
_WHOLE_DIGIT_DATE = re.compile(rb"^((?:19|20)\d{6})(\d{2,6}(?:\.\d{1,6})?)?([+-]\d{4})?$")
_WHOLE_SEP_DATE = re.compile(rb"^(?:\d{4}[-/.]\d{1,2}[-/.]\d{1,2}|\d{1,2}[-/.]\d{1,2}[-/.]\d{4})(?:[ T]\d{1,2}:\d{2}(?::\d{2}(?:\.\d+)?)?)?$")


def _whole_date(value: bytes, patient: "PatientContext") -> bytes | None:
    """A private text value that is a date or date-time as a whole, cleaned: the
    DA/DT digit form shifted (same length), a form with separators removed (b"").
    None when the value is something else."""
    text = value.rstrip(b"\x00 ").strip()
    if not 8 <= len(text) <= 32:
        return None
    m = _WHOLE_DIGIT_DATE.match(text)
    if m:
        if _parse_da(m.group(1).decode()) is None:
            return None
        try:
            new = shift_datetime(text.decode("ascii"), patient.delta, patient.days).encode("ascii")
        except VALUE_ERRORS:
            return b""
        pad = value[len(value.rstrip(b"\x00 ")):]  # keep the original padding
        out = new + pad
        return out + (b" " if len(out) % 2 else b"")
    if _WHOLE_SEP_DATE.match(text):
        return b""
    return None


# --- the patient context ---------------------------------------------------------------------

@dataclass
class PatientContext:
    """What the profile needs to know about the patient of one dataset."""

    patient_id: str
    issuer: str
    pseudonym: str
    days: int
    seconds: int
    identifiers: re.Pattern | None = None

    @property
    def delta(self) -> dt.timedelta:
        """The shift of a date-time (days + time-of-day seconds)."""
        return dt.timedelta(days=self.days, seconds=self.seconds)


def _text(ds: Dataset, tag: int) -> str:
    if tag not in ds._dict:
        return ""
    try:
        value = ds[tag].value
    except Exception:
        return ""
    if value is None:
        return ""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v) for v in value)
    return str(value)


def _identifier_pattern(ds: Dataset) -> re.Pattern | None:
    """Regex of the identifying strings of a dataset, for cleaning free text (C on text).

    Patient name components and the name in its spellings ("Smith, John", "J. Smith",
    without accents), IDs (also written with separators: 123-45-678), accession number,
    institution, station, and the patient's dates in every spelling (:mod:`.spellings`).
    Values are compared as decoded text, so the file's character set does not matter.
    """
    from .spellings import date_spellings, fold_accents, id_regex_source, name_spellings

    tokens: set[str] = set()
    sources: set[str] = set()
    for kw in ("PatientID", "AccessionNumber", "InstitutionName", "StationName", "DeviceSerialNumber",
               "ReferringPhysicianName", "OperatorsName", "PerformingPhysicianName", "OtherPatientNames"):
        value = getattr(ds, kw, None) if kw in ds else None
        if value is None:
            continue
        for part in re.split(r"[\^\\=,]", str(value)):
            part = part.strip()
            if len(part) >= 3:
                tokens.update({part, fold_accents(part)})
                tokens.update(w for w in part.split() if len(w) >= 3)
            if kw in ("PatientID", "AccessionNumber", "DeviceSerialNumber"):
                source = id_regex_source(part)
                if source:
                    sources.add(source)
    name = str(ds.get("PatientName", "") or "")
    for part in re.split(r"[\^\\= ,]", name):
        if len(part.strip()) >= 2:
            tokens.update({part.strip(), fold_accents(part.strip())})
    tokens.update(t for t in name_spellings(name) if len(t) >= 3)
    for kw in ("PatientBirthDate", "StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate"):
        value = str(ds.get(kw, "") or "").strip()
        if len(value) == 8 and value.isdigit():
            try:
                tokens.update(date_spellings(dt.date(int(value[:4]), int(value[4:6]), int(value[6:]))))
            except ValueError:
                continue
    if not tokens and not sources:
        return None
    alternatives = [re.escape(t) for t in sorted(tokens, key=len, reverse=True)] + sorted(sources)
    return re.compile("|".join(alternatives), re.IGNORECASE)


def patient_context(ds: Dataset, secret: bytes, fallback_key: str = "", *, identifiers: bool = True,
                    cache: dict | None = None) -> PatientContext:
    """Pseudonym and date shift of the dataset's patient (IssuerOfPatientID + PatientID).

    ``identifiers``: also build the pattern of the dataset's identifying strings
    (needed only when free text is cleaned). ``cache`` memoises the keyed values.
    """
    pid, issuer = _text(ds, PATIENT_ID).strip(), _text(ds, ISSUER).strip()
    key = (pid, issuer, "" if pid else fallback_key)
    if cache is not None and key in cache:
        pseudo, days, seconds = cache[key]
    else:
        if pid:
            pseudo = pseudonym.patient_pseudonym(secret, pid, issuer)
            key_id, key_issuer = pid, issuer
        else:
            pseudo = "P" + pseudonym.short_id(secret, "subject", fallback_key, length=8)
            key_id, key_issuer = f"subject:{fallback_key}", ""
        days = pseudonym.date_offset_days(secret, key_id, key_issuer)
        seconds = pseudonym.time_offset_seconds(secret, key_id, key_issuer)
        if cache is not None:
            cache[key] = (pseudo, days, seconds)
    pattern = _identifier_pattern(ds) if identifiers else None
    return PatientContext(pid, issuer, pseudo, days, seconds, pattern)


# --- the engine -----------------------------------------------------------------------------

@dataclass
class Deidentifier:
    """Applies a :class:`ProfilePlan` under one secret; reusable across files."""

    plan: ProfilePlan
    secret: bytes
    allowlist: frozenset = frozenset()
    counts: Counter = field(default_factory=Counter)
    uid_map: dict = field(default_factory=dict)
    burned_in: Any = None  # burned-in text screen (deid/pixels.py PixelSettings); None = off
    #: Attributes (by keyword) whose value did not parse as its VR, summed over files.
    not_parsed: Counter = field(default_factory=Counter)
    #: Sentences about the last file (attributes that did not parse): the unit's reasons.
    notes: list = field(default_factory=list)
    #: ``deid.structured_reports``: ``drop`` (documents and reports not shared) or ``clean``.
    structured_reports: str = "drop"
    #: Kept private elements by allowlist entry (``creator (gggg,xxEE)``), summed over files.
    private_kept_by: Counter = field(default_factory=Counter)

    def __post_init__(self) -> None:
        #: (creator, group) -> allowlisted element bytes: a quick test before the element key
        blocks: dict = {}
        for c, g, e in self.allowlist:
            blocks.setdefault((c, g), set()).add(e)
        self.allowlist_blocks = {k: frozenset(v) for k, v in blocks.items()}
        self._vr_cache: dict[int, str | None] = {}
        self._standard_uid_tags = self.plan.standard_uid_tags
        self._defaults = not self.plan.preset_only
        self._longitudinal = self.plan.options.retain_longitudinal_modified_dates
        self._retain_uids = self.plan.options.retain_uids
        self._graphics = self.plan.options.clean_graphics
        self._patients: dict = {}
        self._blob_pattern: BlobPattern | None = None
        self._clean_memo: dict = {}
        self.fast_path = True
        self._rewriter = None
        self._cleans_text = any(a == "C" and vr_of(t) in TEXT_VRS for t, a in self.plan.top.items())

    @property
    def rewriter(self) -> "ByteRewriter":
        """The byte-level fast path sharing this engine's plan, caches and counts."""
        if self._rewriter is None:
            self._rewriter = ByteRewriter(self)
        return self._rewriter

    # -- helpers
    def _vr(self, tag: int) -> str | None:
        try:
            return self._vr_cache[tag]
        except KeyError:
            vr = self._vr_cache[tag] = vr_of(tag)
            return vr

    def new_uid(self, uid: str) -> str:
        """Keyed replacement of a non-standard UID (standard ``1.2.840.10008.`` UIDs are kept)."""
        uid = uid.strip().rstrip("\x00")
        if not uid or uid.startswith(STANDARD_UID_ROOT) or self._retain_uids:
            return uid
        try:
            return self.uid_map[uid]
        except KeyError:
            new = self.uid_map[uid] = pseudonym.uid_pseudonym(self.secret, uid)
            return new

    def kept_private_value(self, key: tuple, tag: int, vr: str | None, value: bytes,
                           patient: "PatientContext") -> bytes:
        """The value of a kept (allowlisted) private element, cleaned; ``value`` itself
        when nothing changes. Both paths call this, so they decide alike.

        * VR DA/DT/TM: shifted by the patient's offset like public dates (emptied, and
          noted, when it does not parse);
        * a text value (or one of unknown VR) that is a date or date-time as a whole
          (``20230113``, ``20230113194316.95``): shifted; written with separators
          (``2023-01-13``, ``13.01.2023``): removed;
        * 16 bytes or more (vendor blobs: CSA headers, protocols): UIDs, the dataset's
          identifiers and its dates/times in every spelling overwritten in place
          (:meth:`clean_private_value`).
        """
        if vr in ("DA", "DT", "TM"):
            text = value.decode("ascii", "replace").rstrip("\x00 ")
            values = [v.strip("\x00 ") for v in text.split("\\")] if text else []
            new = shift_values(vr, values, patient)
            if new is None:
                self.note_not_parsed(tag, vr, "value emptied")
            data = ("\\".join(new or [])).encode("ascii", "replace")
            if len(data) % 2:
                data += b" "
            if data != value:
                self.counts["private_dates_shifted"] += 1
                return data
            return value
        if vr in PRIVATE_TEXT_VRS or vr is None or vr == "UN":
            shifted = _whole_date(value, patient)
            if shifted is not None:
                self.counts["private_dates_shifted"] += 1
                return shifted
        if len(value) >= 16:
            new = self.clean_private_value(key, value, self._blob_pattern)
            if new is not value:
                self.counts["private_blobs_scrubbed"] += 1
            return new
        return value

    def clean_private_value(self, key: tuple, value: bytes, pattern: "BlobPattern | None") -> bytes:
        """A kept private value, cleaned: a vendor cleaner when there is one for ``key``
        (creator, group, element byte), else :meth:`scrub_embedded_uids`."""
        memo_key = (key, value, pattern)
        hit = self._clean_memo.get(memo_key)
        if hit is not None:  # series-level blobs (CSA series header, GE protocol) repeat per slice
            return value if hit == value else hit
        cleaner = VENDOR_CLEANERS.get(key)
        new = cleaner(self, value, pattern) if cleaner is not None else self.scrub_embedded_uids(value, pattern)
        if len(value) >= 256:
            if len(self._clean_memo) > 64:
                self._clean_memo.clear()
            self._clean_memo[memo_key] = new
        return value if new == value else new

    def scrub_embedded_uids(self, value: bytes, pattern: BlobPattern | None = None) -> bytes:
        """Clean a kept private blob without changing its length, so its structure stays valid:
        UIDs inside it (e.g. ``tReferenceImage0`` in the Siemens CSA series header) become
        same-length keyed UIDs, and whole-word occurrences of the dataset's own identifying
        strings (``pattern``, see :func:`blob_pattern`) become ``X`` runs."""
        new = value
        if value.count(b".") >= 4:
            def repl(m: re.Match) -> bytes:
                uid = m.group(0).decode("ascii")
                if uid.startswith(STANDARD_UID_ROOT) or self._retain_uids:
                    return m.group(0)
                return pseudonym.uid_pseudonym_fixed_length(self.secret, uid, len(uid)).encode("ascii")
            new = EMBEDDED_UID.sub(repl, new)
        if pattern is not None:
            lowered = new.lower()
            if pattern.may_match(lowered):  # cheap test before the regex
                spans = [m.span() for m in pattern.regex.finditer(lowered)]
                if spans:
                    out = bytearray(new)
                    for a, b in spans:
                        out[a:b] = b"X" * (b - a)
                    new = bytes(out)
        return value if new == value else new

    def _set(self, ds: Dataset, tag: int, vr: str, value: Any) -> None:
        """Replace an element's value; an ASCII value of a raw element stays raw (no conversion)."""
        old = ds._dict.get(tag)
        if type(old) is RawDataElement and vr in ASCII_VRS and old.length != UNDEFINED_LENGTH:
            if value is None:
                data = b""
            else:
                text = value if isinstance(value, str) else "\\".join(value)
                data = text.encode("ascii", "strict") if text.isascii() else None
            if data is not None:
                if len(data) % 2:
                    data += b"\x00" if vr == "UI" else b" "
                ds._dict[tag] = RawDataElement(tag, old.VR, len(data), data, 0, old.is_implicit_VR,
                                               old.is_little_endian)
                return
        ds._dict[tag] = DataElement(tag, vr, value)

    def note_not_parsed(self, tag: int, vr: str, done: str) -> None:
        """Record an attribute whose value does not parse as its VR (never its value)."""
        from pydicom.datadict import keyword_for_tag

        label = f"({tag >> 16:04X},{tag & 0xFFFF:04X})"
        keyword = keyword_for_tag(tag) or "private"
        self.not_parsed[keyword] += 1
        self.counts["not_parsed"] += 1
        self.notes.append(f"{label} {keyword} is not a valid {vr} value; {done}")

    def _values(self, ds: Dataset, tag: int) -> list[str]:
        old = ds._dict[tag]
        if type(old) is RawDataElement and old.VR in ASCII_VRS | {None} and old.length != UNDEFINED_LENGTH:
            raw = old.value or b""
            if raw.isascii():
                text = raw.decode("ascii").rstrip("\x00 ")
                return [v.strip("\x00 ") for v in text.split("\\")] if text else []
        value = ds[tag].value
        if value is None:
            return []
        if isinstance(value, (str, bytes)):
            return [value.decode("latin-1") if isinstance(value, bytes) else value]
        return [str(v) for v in value]

    # -- the walk
    def allowlisted_private(self, creators: dict[tuple[int, int], str], tag: int) -> tuple[str, int, int] | None:
        """The allowlist key (private creator, group, element byte) of a private data
        element (PS3.5 7.8.1) when it is kept, else None."""
        group, element = tag >> 16, tag & 0xFFFF
        creator = creators.get((group, element >> 8))
        key = (creator, group, element & 0xFF)
        if creator is None or key not in self.allowlist:
            return None
        self.private_kept_by[allowlist_label(key)] += 1
        return key

    def unlisted_action(self, tag: int, vr: str | None) -> str | None:
        """Action for a public attribute the profile table does not list: sequences
        are walked (K), UIDs replaced (U) unless standard, dates/times shifted (C)
        or removed (X); anything else is kept as it is (None)."""
        if vr == "SQ":
            return "K"
        if vr == "UI":
            return "K" if tag in self._standard_uid_tags else "U"
        if vr in ("DA", "DT", "TM"):
            return "C" if self._longitudinal else "X"
        return None

    def deidentify(self, ds: Dataset, *, fallback_key: str = "") -> PatientContext:
        """De-identify ``ds`` in place (file meta included); return its patient context.

        Raises :class:`DeidentificationFailed` when an element cannot be handled
        (unknown VR in a kept position, corrupt sequence, unparsable date).
        """
        pixel_hash = self._pixel_hash(ds)
        enhanced = SHARED_FG in ds._dict or PER_FRAME_FG in ds._dict
        self.notes = []
        try:
            patient = patient_context(ds, self.secret, fallback_key, identifiers=self._cleans_text,
                                      cache=self._patients)
            self._blob_pattern = blob_pattern([_raw_bytes(ds, t) for t in BLOB_IDENTIFIER_TAGS],
                                              _raw_bytes(ds, SPECIFIC_CHARSET))
            self._clean(ds, 0, enhanced, patient)
        except DeidentificationFailed:
            raise
        except Exception as exc:
            raise DeidentificationFailed(f"{type(exc).__name__} while de-identifying") from exc
        self._clean_file_meta(ds)
        self._mark(ds)
        if self._pixel_hash(ds) != pixel_hash:
            raise DeidentificationFailed("pixel data changed during de-identification")
        self.counts["instances"] += 1
        return patient

    @staticmethod
    def _pixel_hash(ds: Dataset) -> str:
        h = hashlib.sha256()
        for tag in PIXEL_TAGS:
            elem = ds._dict.get(tag)
            if elem is not None:
                value = elem.value
                h.update(value if isinstance(value, (bytes, bytearray)) else repr(value).encode())
        return h.hexdigest()

    def _clean(self, ds: Dataset, depth: int, enhanced: bool, patient: PatientContext) -> None:
        actions = self.plan.actions(depth, enhanced)
        d = ds._dict
        counts = self.counts
        privates = []
        handled: set[int] = set()
        for tag in sorted(d):
            group = tag >> 16
            if group & 1:
                privates.append(tag)
                continue
            if tag in handled:
                continue
            if not tag & 0xFFFF and group > 2:  # group length: stale after edits
                del d[tag]
                continue
            if self._graphics and (0x5000 <= group <= 0x501E or 0x6000 <= group <= 0x601E):
                del d[tag]  # Clean Graphics: curves 50xx, overlays 60xx
                counts["X"] += 1
                continue
            elem = d[tag]
            vr = elem.VR
            if vr is not None and vr not in VALID_VRS and " or " not in vr:
                raise DeidentificationFailed(f"unknown VR in element ({tag >> 16:04X},{tag & 0xFFFF:04X})")
            if vr is None or vr == "UN" or " or " in vr:
                vr = self._vr(tag)
            action = actions.get(tag)
            if action is None and 0x5000 <= group <= 0x50FF:
                action = actions.get((group << 16) | 0xFFFF)  # every element of a curve group
            if action is None:
                if vr is None or self._vr(tag) is None:
                    # a public tag unknown to the dictionary: nothing says it is safe
                    del d[tag]
                    counts["X"] += 1
                    continue
                if not self._defaults:
                    if vr == "SQ":
                        self._recurse(ds, tag, depth, enhanced, patient)
                    continue
                action = self.unlisted_action(tag, vr)
                if action is None:
                    continue  # kept unparsed: the fast path
            elif vr == "UI" and action == "K" and self._defaults and tag not in self._standard_uid_tags:
                action = "U" if not self._retain_uids else "K"
            self._apply(ds, tag, action, vr, depth, enhanced, patient, handled)
        if privates:
            self._clean_private(ds, privates, depth, enhanced, patient)

    def _recurse(self, ds: Dataset, tag: int, depth: int, enhanced: bool, patient: PatientContext) -> None:
        seq = ds[tag].value
        if seq is None:
            return
        for item in seq:
            self._clean(item, depth + 1, enhanced, patient)

    def _apply(self, ds, tag, action, vr, depth, enhanced, patient, handled) -> None:
        d = ds._dict
        counts = self.counts
        if action == "X":
            del d[tag]
            counts["X"] += 1
        elif vr == "SQ":
            if action == "Z":
                self._set(ds, tag, "SQ", Sequence())
                counts["Z"] += 1
            elif action == "X":  # pragma: no cover - handled above
                del d[tag]
            else:
                self._recurse(ds, tag, depth, enhanced, patient)
        elif action == "K":
            return
        elif action == "Z":
            self._set(ds, tag, vr, None)
            counts["Z"] += 1
        elif action == "P":
            self._set(ds, tag, vr, patient.pseudonym)
            counts["P"] += 1
        elif action == "A":
            old = _text(ds, tag).strip()
            age = cap_age(old)
            if old and not age:
                self.note_not_parsed(tag, "AS", "value emptied")
            self._set(ds, tag, vr, age)
            counts["K"] += 1
        elif vr == "UI" and action in ("U", "D", "C"):
            values = self._values(ds, tag)
            if not all(_UID_SYNTAX.match(v) for v in values if v):
                self.note_not_parsed(tag, "UI", "replaced by a keyed UID")
            new = [self.new_uid(v) for v in values]
            self._set(ds, tag, "UI", new[0] if len(new) == 1 else new)
            counts["U"] += 1
        elif action == "D":
            if tag == PATIENT_SEX:
                self._set(ds, tag, vr, "O")
            else:
                self._set(ds, tag, vr, DUMMY.get(vr, "ANONYMIZED"))
            counts["D"] += 1
        elif action == "U":  # U on a non-UI VR (never in the table): remove
            del d[tag]
            counts["X"] += 1
        elif action == "C":
            self._clean_value(ds, tag, vr, patient, handled)
            counts["C"] += 1
        else:  # pragma: no cover
            raise DeidentificationFailed(f"unknown action {action!r}")

    def _clean_value(self, ds: Dataset, tag: int, vr: str, patient: PatientContext, handled: set) -> None:
        """C: shift dates/times by the patient's offset; scrub identifiers from text."""
        d = ds._dict
        if vr == "DA":
            values = self._values(ds, tag)
            time_tag = DATE_TIME_PAIRS.get(tag)
            if (time_tag is not None and time_tag in d and len(values) == 1 and values[0].strip()
                    and self.plan.actions(1, False).get(time_tag, "C") == "C"):
                times = self._values(ds, time_tag)
                if len(times) == 1 and times[0].strip():
                    new_date, new_time = shift_pair(values[0], times[0], patient)
                    if new_date is None:
                        self.note_not_parsed(tag, "DA", "value emptied")
                    self._set(ds, tag, "DA", new_date)
                    if new_time is None:
                        self.note_not_parsed(time_tag, "TM", "value emptied")
                    self._set(ds, time_tag, "TM", new_time)
                    handled.add(time_tag)
                    self.counts["C"] += 1
                    return
        if vr in ("DA", "TM", "DT"):
            new = shift_values(vr, self._values(ds, tag), patient)
            if new is None:
                self.note_not_parsed(tag, vr, "value emptied")
            self._set(ds, tag, vr, None if not new else new[0] if len(new) == 1 else new)
        elif vr in TEXT_VRS:
            pattern = patient.identifiers
            values = self._values(ds, tag)
            if pattern is not None:
                values = [re.sub(r"\s{2,}", " ", pattern.sub("", v)).strip() for v in values]
            self._set(ds, tag, vr, values[0] if len(values) == 1 else values)
        else:  # numbers and binary values carry no free text: keep
            return

    def _clean_private(self, ds: Dataset, tags: list[int], depth: int, enhanced: bool,
                       patient: PatientContext) -> None:
        """Remove private attributes except allowlisted (creator, group, element byte) ones."""
        d = ds._dict
        counts = self.counts
        if self.plan.remove_all_private or not self.allowlist:
            for tag in tags:
                del d[tag]
            counts["private_removed"] += len(tags)
            return
        for tag in tags:
            vr = d[tag].VR
            if vr is not None and vr not in VALID_VRS and " or " not in vr:
                raise DeidentificationFailed(f"unknown VR in element ({tag >> 16:04X},{tag & 0xFFFF:04X})")
        creators: dict[tuple[int, int], str] = {}
        for tag in tags:
            el = tag & 0xFFFF
            if 0x10 <= el <= 0xFF:
                value = d[tag].value
                if isinstance(value, bytes):
                    value = value.decode("latin-1")
                creators[(tag >> 16, el)] = str(value or "").strip(" \x00")
        kept_blocks = set()
        for tag in tags:
            if tag & 0xFFFF < 0x1000:
                continue
            key = self.allowlisted_private(creators, tag)
            if key is not None:
                kept_blocks.add((tag >> 16, (tag & 0xFFFF) >> 8))
                counts["private_kept"] += 1
                elem = d[tag]
                if elem.VR == "SQ" or (isinstance(elem, RawDataElement) and elem.length == UNDEFINED_LENGTH):
                    self._recurse(ds, tag, depth, enhanced, patient)
                elif isinstance(elem, RawDataElement) and elem.value:
                    new = self.kept_private_value(key, tag, elem.VR, elem.value, patient)
                    if new is not elem.value:
                        d[tag] = elem._replace(value=new, length=len(new))
            else:
                del d[tag]
                counts["private_removed"] += 1
        for tag in tags:
            el = tag & 0xFFFF
            if el < 0x1000 and not (0x10 <= el <= 0xFF and (tag >> 16, el) in kept_blocks):
                del d[tag]

    def _clean_file_meta(self, ds: Dataset) -> None:
        """File meta (PS3.10 7.1): MediaStorageSOPInstanceUID follows SOPInstanceUID; AE titles removed."""
        meta = getattr(ds, "file_meta", None)
        if meta is None:
            return
        for tag in list(meta._dict):
            if tag not in FILE_META_KEEP:
                del meta._dict[tag]
        if 0x00020003 in meta._dict:
            sop = _text(ds, 0x00080018)
            uid = sop if sop else self.new_uid(_text(meta, 0x00020003))
            meta._dict[0x00020003] = DataElement(0x00020003, "UI", uid)
        # the writing software is ours: the input's implementation UID/version name may
        # identify a site's PACS or workstation
        meta._dict[0x00020012] = DataElement(0x00020012, "UI", IMPLEMENTATION_CLASS_UID)
        meta._dict[0x00020013] = DataElement(0x00020013, "SH", IMPLEMENTATION_VERSION_NAME)

    def _mark(self, ds: Dataset) -> None:
        """PatientIdentityRemoved, DeidentificationMethod(+CodeSequence) (0012,0062-0064),
        LongitudinalTemporalInformationModified (0028,0303)."""
        options = self.plan.options
        ds.PatientIdentityRemoved = "YES"
        method = ["PS3.15 E Basic Profile", f"preset {self.plan.preset}" + (" only" if self.plan.preset_only else "")]
        method += [meaning.replace(" Option", "")[:64] for _, meaning in options.method_codes()[1:]]
        ds.DeidentificationMethod = [m[:64] for m in method]
        items = []
        for value, meaning in options.method_codes():
            item = Dataset()
            item.CodeValue = value
            item.CodingSchemeDesignator = "DCM"
            item.CodeMeaning = meaning
            items.append(item)
        ds.DeidentificationMethodCodeSequence = Sequence(items)
        ds.LongitudinalTemporalInformationModified = "MODIFIED" if options.retain_longitudinal_modified_dates else "REMOVED"


def make_deidentifier(config: dict, secret: bytes) -> Deidentifier:
    """A :class:`Deidentifier` for ``config['deid']`` (plan + private allowlist)."""
    deid = (config or {}).get("deid", {}) or {}
    plan = plan_from_config(config)
    allowlist = frozenset() if plan.remove_all_private else load_private_allowlist(deid.get("private_allowlist"))
    mode = str(deid.get("structured_reports") or "drop")
    if mode == "clean":  # PS3.15 Clean Structured Content: free text of the SR header too
        for table in (plan.top, plan.top_enhanced, plan.nested):
            for keyword in SR_FREE_TEXT:
                table[int(tag_for_keyword(keyword))] = "X"
    engine = Deidentifier(plan=plan, secret=secret, allowlist=allowlist, structured_reports=mode,
                          burned_in=pixels.settings_from_config(config))  # burned-in text (pixels.py)
    edits.attach(engine, config)             # config deid.edits (deid/edits.py)
    return engine


#: SR attributes of free text that PS3.15 Table E.1-1 does not list; removed under
#: ``deid.structured_reports: clean`` (the content tree's TEXT items get a dummy value
#: and PNAME items, observers and organisations are replaced by the basic profile).
SR_FREE_TEXT = ("CompletionFlagDescription",)


#: Transfer syntaxes whose data set encoding :func:`encode_file` writes itself (all but deflate).
_IMPLICIT_LE, _EXPLICIT_BE, _DEFLATED = "1.2.840.10008.1.2", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"
_LONG_VRS = frozenset({"OB", "OD", "OF", "OL", "OW", "OV", "SQ", "UC", "UR", "UT", "UN", "SV", "UV"})


def _encode_elements(ds: Dataset, little: bool, implicit: bool, encodings) -> list[bytes]:
    """The encoded elements of ``ds`` (as :func:`pydicom.filewriter.write_dataset` writes them).

    Raw elements in the output encoding (the elements that were only kept) are
    emitted as header + original value bytes; everything else goes through
    pydicom's :func:`~pydicom.filewriter.write_data_element`.
    """
    import struct

    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_data_element

    end = "<" if little else ">"
    short_hdr, long_hdr, impl_hdr = struct.Struct(end + "HH2sH"), struct.Struct(end + "HH2s2xI"), struct.Struct(end + "HHI")
    parts = []
    d = ds._dict
    for tag in sorted(d):
        if not tag & 0xFFFF and tag >> 16 > 6:
            continue  # group lengths are not written (as pydicom)
        elem = d[tag]
        if (type(elem) is RawDataElement and elem.is_little_endian == little and elem.is_implicit_VR == implicit
                and elem.length != UNDEFINED_LENGTH and (implicit or (elem.VR and len(elem.VR) == 2))):
            value = elem.value or b""
            if implicit:
                parts.append(impl_hdr.pack(tag >> 16, tag & 0xFFFF, len(value)))
            elif elem.VR in _LONG_VRS:
                parts.append(long_hdr.pack(tag >> 16, tag & 0xFFFF, elem.VR.encode(), len(value)))
            else:
                parts.append(short_hdr.pack(tag >> 16, tag & 0xFFFF, elem.VR.encode(), len(value)))
            parts.append(value)
            continue
        fp = DicomBytesIO()
        fp.is_little_endian, fp.is_implicit_VR = little, implicit
        write_data_element(fp, elem, encodings)
        parts.append(fp.getvalue())
    return parts


def encode_file(ds: Dataset) -> bytes:
    """``ds`` as PS3.10 file bytes: identical to ``ds.save_as(..., enforce_file_format=True)``
    after the preamble (always 128 zero bytes here: an input's preamble may carry
    anything), but several times faster for de-identified data sets (kept elements
    are copied as bytes)."""
    import io

    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_file_meta_info

    meta = getattr(ds, "file_meta", None)
    ts = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
    if (not ts or ts == _DEFLATED or ds.original_character_set != ds._character_set
            or ds.original_encoding != (ts == _IMPLICIT_LE, ts != _EXPLICIT_BE)):
        buf = io.BytesIO()
        ds.preamble = b"\x00" * 128  # the input's preamble may hold anything
        ds.save_as(buf, enforce_file_format=True)
        return buf.getvalue()
    fp = DicomBytesIO()
    fp.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(fp, meta, enforce_standard=True)
    encodings = ds.get("SpecificCharacterSet", "iso8859")
    from pydicom.charset import convert_encodings

    encodings = convert_encodings(encodings or "iso8859")
    parts = _encode_elements(ds, ts != _EXPLICIT_BE, ts == _IMPLICIT_LE, encodings)
    return fp.getvalue() + b"".join(parts)


def write_dataset(ds: Dataset, path: str | Path) -> None:
    """Write ``ds`` as a PS3.10 file atomically: a temporary name in the target
    folder, then a rename (as :func:`dicomio.write_dataset`, without the per-file
    fsync, which costs ~10 ms a file; a unit whose job dies is redone as a whole
    because its manifest is written last)."""
    write_bytes(encode_file(ds), path)


def deidentify_bytes(deid: Deidentifier, data: bytes, *, fallback_key: str = "") -> tuple[bytes, dict]:
    """De-identified PS3.10 bytes of one file's bytes (the byte-level fast path when it
    applies, else pydicom), plus ``patient`` and the original Study/Series UIDs."""
    if deid.fast_path:
        try:
            out, patient, orig = deid.rewriter.rewrite(data, fallback_key)
            return out, {"patient": patient, **orig}
        except FastPathUnsupported:
            pass
    import io

    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
    except Exception as exc:
        raise UnreadableDicom(f"cannot parse DICOM header: {type(exc).__name__}") from None
    if "SOPClassUID" not in ds and "MediaStorageSOPClassUID" not in getattr(ds, "file_meta", Dataset()):
        raise UnreadableDicom("not a DICOM file (no SOP Class UID)")
    orig = {"StudyInstanceUID": _text(ds, 0x0020000D), "SeriesInstanceUID": _text(ds, 0x0020000E)}
    patient = deid.deidentify(ds, fallback_key=fallback_key)
    return encode_file(ds), {"patient": patient, **orig}


def deidentify_file(deid: Deidentifier, src: str | Path, dst: str | Path, *, fallback_key: str = "") -> dict:
    """Read ``src`` (gzip-wrapped or not), de-identify, write ``dst`` atomically;
    return the patient context and the original Study/Series UIDs."""
    try:
        data = dicomio.read_bytes(src)
    except (OSError, EOFError) as exc:
        raise UnreadableDicom(f"cannot read the file ({type(exc).__name__})") from None
    out, info = deidentify_bytes(deid, data, fallback_key=fallback_key)
    out = edits.apply_edits(deid, data, out, info)      # config deid.edits; a no-op without edits
    if deid.burned_in is not None:  # burned-in text in the pixels: found, redacted (deid/pixels.py)
        out, info["burned_in_text"] = pixels.screen_instance(out, deid.burned_in)
    write_bytes(out, dst)
    return info


_MADE_DIRS: set = set()


def write_bytes(data: bytes, path: str | Path) -> None:
    """Atomic write without fsync (the unit manifest, written last, marks completion):
    a temporary name beside ``path`` (``.NAME.<pid>.part``: one writer per process, so
    no random name is needed), then a rename. A failure removes the temporary file."""
    path = os.fspath(path)
    parent = os.path.dirname(path) or "."
    if parent not in _MADE_DIRS:
        os.makedirs(parent, exist_ok=True)
        _MADE_DIRS.add(parent)
    tmp = os.path.join(parent, f".{os.path.basename(path)}.{os.getpid()}.part")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0), 0o666)
    except FileNotFoundError:  # the folder went away since it was made: make it again
        _MADE_DIRS.discard(parent)
        os.makedirs(parent, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


# --- series filtering -------------------------------------------------------------------

#: Modalities whose images commonly carry burned-in text (PS3.3 C.7.6.1.1.5).
BURN_IN_MODALITIES = {"SC", "US", "OT", "XC", "ES", "GM", "SM", "DOC"}


def _first(values: pd.Series) -> Any:
    values = values.dropna()
    return values.iloc[0] if len(values) else None


def segmentation_source_series(instances: pd.DataFrame) -> set[str]:
    """SeriesInstanceUIDs the unit's SEG objects reference.

    From the Referenced Series Sequence (0008,1115) of each SEG, else the
    series holding the SOP instances in the frames' Source Image Sequence
    (0008,2112). A SEG's source must stay shareable, however few its slices.
    """
    segs = instances[instances.get("kind", pd.Series(dtype=object)) == "seg"] if "kind" in instances else instances.iloc[0:0]
    referenced: set[str] = set()
    sop_to_series = dict(zip(instances.get("SOPInstanceUID", []), instances.get("SeriesInstanceUID", [])))
    for path in segs.get("path", []):
        try:
            ds = dicomio.read_dataset(path, stop_before_pixels=True)
        except Exception:  # an unreadable SEG is handled (and reported) by the SEG stage
            continue
        for item in getattr(ds, "ReferencedSeriesSequence", None) or []:
            if getattr(item, "SeriesInstanceUID", None):
                referenced.add(str(item.SeriesInstanceUID))
        for frame in getattr(ds, "PerFrameFunctionalGroupsSequence", None) or []:
            for deriv in getattr(frame, "DerivationImageSequence", None) or []:
                for src in getattr(deriv, "SourceImageSequence", None) or []:
                    series = sop_to_series.get(str(getattr(src, "ReferencedSOPInstanceUID", "")))
                    if series:
                        referenced.add(str(series))
    return referenced


#: SOP Class UID roots of documents and reports (PS3.4 B.5): Encapsulated PDF/CDA/STL/OBJ/MTL,
#: every Structured Report class and Key Object Selection, presentation states.
ENCAPSULATED_DOC_ROOT = "1.2.840.10008.5.1.4.1.1.104."
SR_ROOT = "1.2.840.10008.5.1.4.1.1.88."
PR_ROOT = "1.2.840.10008.5.1.4.1.1.11."
#: Presentation-state attributes that carry free text (PS3.3 C.10.5 Graphic Annotation,
#: C.10.7 Graphic Layer, C.11.10 Presentation State Identification).
PR_TEXT_TAGS = (0x00700008, 0x00700006, 0x00700068, 0x00700081, 0x00700084)
STRUCTURED_REPORT_MODES = ("drop", "clean")


def document_kind(sop_class: str, modality: str = "", kind: str = "") -> str | None:
    """``document``, ``structured_report``, ``presentation_state`` or None (an image)."""
    sop, modality = str(sop_class or ""), str(modality or "").upper()
    if sop.startswith(ENCAPSULATED_DOC_ROOT) or modality == "DOC":
        return "document"
    if sop.startswith(SR_ROOT) or modality in ("SR", "KO") or kind in ("structured_report", "dose_report"):
        return "structured_report"
    if sop.startswith(PR_ROOT) or modality == "PR" or kind == "presentation_state":
        return "presentation_state"
    return None


def presentation_state_has_text(paths) -> bool:
    """Whether any of the presentation states holds text (text objects, annotation or
    layer descriptions, content description or creator) at any depth; an unreadable
    one counts as text."""
    import io

    def walk(d: Dataset) -> bool:
        for elem in d:
            tag = int(elem.tag)
            if elem.VR == "SQ":
                if (tag == 0x00700008 and elem.value) or any(walk(item) for item in elem.value or []):
                    return True
            elif tag in PR_TEXT_TAGS and str(elem.value or "").strip():
                return True
        return False

    for path in paths:
        try:
            ds = pydicom.dcmread(io.BytesIO(dicomio.read_bytes(path)), force=True, stop_before_pixels=True)
            if walk(ds):
                return True
        except Exception:
            return True
    return False


def series_filter_reasons(instances: pd.DataFrame, drop_cfg: dict | None,
                          keep_series_uids: set[str] | None = None, *,
                          structured_reports: str = "drop") -> dict[str, tuple[str, str]]:
    """``series_key -> (status, reason)`` for the series not to be shared.

    ``status`` is ``quarantined`` (BurnedInAnnotation YES, or absent on a modality
    that burns in text) or ``dropped`` (localizer, dose report, secondary capture,
    too few single-frame instances, a document or report). Series listed in
    ``deid.drop_series.allow`` (by SeriesInstanceUID or series_id) are kept. SEG
    objects, and the series in ``keep_series_uids`` (the sources SEGs reference),
    are never dropped for their instance count.

    Documents and reports, whatever their size (``structured_reports``, config
    ``deid.structured_reports``): Encapsulated PDF/CDA (and STL/OBJ/MTL) are never
    shared; SR of every SOP class, Key Object Selection and presentation states
    carrying text are not shared with ``drop`` (the default) and shared with their
    content cleaned with ``clean``.
    """
    if structured_reports not in STRUCTURED_REPORT_MODES:
        raise DicomprepError(f"config: deid.structured_reports is {structured_reports!r}; allowed values: "
                             f"{', '.join(STRUCTURED_REPORT_MODES)}.")
    cfg = {"max_instances": 10, "localizers": True, "dose_reports": True, "secondary_captures": True,
           "burned_in_annotation": True, "allow": []}
    cfg.update(drop_cfg or {})
    allow = {str(a) for a in cfg.get("allow") or []}
    out: dict[str, tuple[str, str]] = {}
    if instances.empty:
        return out
    for key, grp in instances.groupby("series_key", sort=True):
        if allow & {str(_first(grp.get("SeriesInstanceUID", pd.Series(dtype=object)))),
                    str(_first(grp.get("series_id", pd.Series(dtype=object))))}:
            continue
        kind = str(_first(grp["kind"]) if "kind" in grp else "") or ""
        modality = str(_first(grp["Modality"]) if "Modality" in grp else "" or "").upper()
        image_type = " ".join(str(v) for v in grp["ImageType"].dropna().unique()).upper() if "ImageType" in grp else ""
        burned = {str(v).strip().upper() for v in grp["BurnedInAnnotation"]} if "BurnedInAnnotation" in grp else {""}
        frames = pd.to_numeric(grp["NumberOfFrames"], errors="coerce").fillna(1) if "NumberOfFrames" in grp else pd.Series([1] * len(grp))
        sop = str(_first(grp["SOPClassUID"]) if "SOPClassUID" in grp else "" or "")
        doc = document_kind(sop, modality, kind)
        if kind == "dose_report" and cfg["dose_reports"]:
            doc = None  # the dose report filter below says why
        if doc == "document":
            out[key] = ("dropped", "document: an encapsulated document (PDF, CDA, 3-D model) is never shared: "
                                   "its content cannot be de-identified")
            continue
        if doc == "structured_report" and structured_reports != "clean":
            out[key] = ("dropped", "structured_report: structured report / key object selection not shared "
                                   "(deid.structured_reports: drop); set deid.structured_reports: clean to share "
                                   "it with its content tree cleaned")
            continue
        if doc == "presentation_state" and structured_reports != "clean" and "path" in grp \
                and presentation_state_has_text(list(grp["path"])):
            out[key] = ("dropped", "presentation_state_text: presentation state with text annotations not "
                                   "shared (deid.structured_reports: drop); set deid.structured_reports: clean "
                                   "to share it with its text replaced")
            continue
        burn_in_kind = modality in BURN_IN_MODALITIES or kind in ("secondary_capture", "dose_report")
        if cfg["burned_in_annotation"] and ("YES" in burned or (burn_in_kind and burned & {"", "NONE", "NAN"})):
            why = "BurnedInAnnotation YES" if "YES" in burned else f"BurnedInAnnotation absent on modality {modality or kind}"
            out[key] = ("quarantined", f"burned_in_annotation: {why}")
        elif cfg["localizers"] and (kind == "localizer" or "LOCALIZER" in image_type or "SCOUT" in image_type):
            out[key] = ("dropped", "localizer: localizer/scout series")
        elif cfg["dose_reports"] and kind == "dose_report":
            out[key] = ("dropped", "dose_report: dose report series")
        elif cfg["secondary_captures"] and kind == "secondary_capture":
            out[key] = ("dropped", "secondary_capture: secondary capture series")
        elif (kind != "seg" and doc is None and cfg["max_instances"] and len(grp) <= int(cfg["max_instances"])
              and str(_first(grp.get("SeriesInstanceUID", pd.Series(dtype=object)))) not in (keep_series_uids or set())
              and float(frames.max()) <= 1 and "MOSAIC" not in image_type):  # a mosaic holds many slices
            out[key] = ("dropped", f"too_few_instances: {len(grp)} single-frame instances <= {cfg['max_instances']}")
    return out


def reason_code(reason: str) -> str:
    """The identifier-free code before the colon of a reason (for counts and the audit)."""
    return reason.split(":", 1)[0].strip() if reason else ""


# --- a unit ----------------------------------------------------------------------------------

MANIFEST_COLUMNS = ["path", "series_key", "series_id", "output_path", "status", "reason", "burned_in_text"]
CROSSWALK_COLUMNS = ["kind", "original", "issuer", "pseudonym", "date_offset_days", "time_offset_seconds"]


def _order_key(row: pd.Series) -> tuple:
    """Stable order within a series: InstanceNumber, position along the slice normal, path."""
    from ..geometry import as_floats, slice_normal

    inst = pd.to_numeric(row.get("InstanceNumber"), errors="coerce")
    inst = float(inst) if inst is not None and not (isinstance(inst, float) and math.isnan(inst)) else math.inf
    pos = 0.0
    ipp, iop = as_floats(row.get("ImagePositionPatient"), 3), as_floats(row.get("ImageOrientationPatient"), 6)
    if ipp is not None and iop is not None:
        try:
            pos = float(ipp @ slice_normal(iop))
        except Exception:
            pos = 0.0
    return (inst, round(pos, 3), str(row.get("path")))


def _series_folders(instances: pd.DataFrame, secret: bytes) -> dict[str, str]:
    """``series_key -> folder``: the share-safe ``series_id``; should two series of the
    unit share one (the index makes them unique), both get ``-`` + a keyed short id of
    their key (:func:`.pseudonym.disambiguate`: never an unkeyed hash of input values)."""
    first = instances.groupby("series_key", sort=True)["series_id"].first().astype(str)
    dup = first.duplicated(keep=False)
    return {key: (pseudonym.disambiguate(secret, sid, "series-folder", str(key)) if dup[key] else sid)
            for key, sid in first.items()}


def deidentify_unit(
    instances: pd.DataFrame,
    *,
    share_dir: str | Path,
    deid: Deidentifier,
    drop_cfg: dict | None = None,
    log=None,
    fallback_key: str = "",
) -> tuple[pd.DataFrame, dict, pd.DataFrame]:
    """De-identify one unit's instances into ``share_dir/<series_id>/NNNN.dcm``.

    Returns (manifest, counts, crosswalk rows). ``instances`` has at least
    ``path, series_key, series_id`` (and ``kind`` plus index columns for the
    series filters and the order).
    """
    logger = log or get_logger("deid")
    share_dir = Path(share_dir)
    if instances.empty:
        instances = pd.DataFrame(columns=["path", "series_key", "series_id", "kind"])
    filters = series_filter_reasons(instances, drop_cfg, segmentation_source_series(instances),
                                    structured_reports=deid.structured_reports)
    rows, cross = [], {}
    series_counts: Counter = Counter()
    files_quarantined: Counter = Counter()
    folder_of = _series_folders(instances, deid.secret)
    for key, grp in instances.groupby("series_key", sort=True):
        folder = folder_of[key]
        if key in filters:
            status, reason = filters[key]
            logger.info("series %s not shared: %s", folder, reason)
            series_counts[f"{status}:{reason_code(reason)}"] += 1
            rows += [{"path": p, "series_key": key, "series_id": folder, "output_path": "",
                      "status": status, "reason": reason} for p in grp["path"]]
            continue
        ordered = sorted((r for _, r in grp.iterrows()), key=_order_key)
        first_row = len(rows)
        for n, row in enumerate(ordered, start=1):
            dst = share_dir / folder / f"{n:04d}.dcm"
            try:
                info = deidentify_file(deid, row["path"], dst, fallback_key=fallback_key)
            except (DeidentificationFailed, UnreadableDicom) as exc:
                reason = f"deid_failed: {exc}"
                files_quarantined["deid_failed"] += 1
                logger.warning("quarantined %s: %s", row["path"], exc)
                rows.append({"path": row["path"], "series_key": key, "series_id": folder,
                             "output_path": "", "status": "quarantined", "reason": reason})
                continue
            patient = info["patient"]
            pkey = ("patient", patient.patient_id, patient.issuer)
            cross[pkey] = {"kind": "patient", "original": patient.patient_id, "issuer": patient.issuer,
                           "pseudonym": patient.pseudonym, "date_offset_days": patient.days,
                           "time_offset_seconds": patient.seconds}
            for kind in ("StudyInstanceUID", "SeriesInstanceUID"):
                if info[kind]:
                    cross[(kind, info[kind], "")] = {"kind": kind, "original": info[kind], "issuer": "",
                                                     "pseudonym": deid.new_uid(info[kind]),
                                                     "date_offset_days": "", "time_offset_seconds": ""}
            note = ""
            if deid.notes:  # attributes that did not parse: handled one by one, the file is written
                note = "value_not_parsed: " + "; ".join(deid.notes)
                logger.warning("%s written; %s", row["path"], "; ".join(deid.notes))
            rows.append({"path": row["path"], "series_key": key, "series_id": folder,
                         "output_path": str(dst), "status": "written", "reason": note,
                         "burned_in_text": pixels.manifest_value(info.get("burned_in_text"))})
        if deid.burned_in is not None:  # burned-in text, quarantine mode: withhold the series
            pixels.finish_series(rows[first_row:], deid.burned_in, logger, series_counts)
    manifest = pd.DataFrame(rows, columns=MANIFEST_COLUMNS)
    manifest["burned_in_text"] = manifest["burned_in_text"].fillna("")
    counts = {
        "instances": int(len(instances)),
        "written": int((manifest["status"] == "written").sum()),
        "dropped": int((manifest["status"] == "dropped").sum()),
        "quarantined": int((manifest["status"] == "quarantined").sum()),
        "actions": {k: int(v) for k, v in sorted(deid.counts.items()) if k != "instances"},
        "series_not_shared": dict(sorted(series_counts.items())),
        "files_quarantined": dict(sorted(files_quarantined.items())),
        **({"burned_in_text": pixels.unit_counts(deid.burned_in)} if deid.burned_in is not None else {}),
        "values_not_parsed": dict(sorted(deid.not_parsed.items())),
        "private_kept_by_entry": dict(sorted(deid.private_kept_by.items())),
    }
    crosswalk = pd.DataFrame(sorted(cross.values(), key=lambda r: (r["kind"], r["original"], r["issuer"])),
                             columns=CROSSWALK_COLUMNS)
    return manifest, counts, crosswalk


# --- the byte-level fast path ---------------------------------------------------------------

class FastPathUnsupported(Exception):
    """The file needs the pydicom path (:class:`Deidentifier`); not an error."""


_ITEM, _ITEM_END, _SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_U16, _U32 = struct.Struct("<H"), struct.Struct("<I")
_TAG = struct.Struct("<HH")
_HDR_SHORT, _HDR_LONG, _HDR_IMPL = struct.Struct("<HH2sH"), struct.Struct("<HH2s2xI"), struct.Struct("<HHI")
_IDENTITY_TAGS = (0x00120062, 0x00120063, 0x00120064, 0x00280303)
#: Two VR bytes -> VR name, for the valid VRs only.
_VR_NAMES = {v.encode("ascii"): v for v in VALID_VRS if len(v) == 2}


class ByteRewriter:
    """The same de-identification as :class:`Deidentifier`, done on the encoded bytes.

    Elements that are kept are copied as bytes; only replaced values are encoded.
    Little-endian files (explicit or implicit VR) only; anything unusual (big
    endian, deflate, unsorted or duplicate tags, sequences encoded as UN, values
    that need text cleaning or non-ASCII dummies, unknown VRs) raises
    :class:`FastPathUnsupported` and the caller uses the pydicom path. The tests
    check that both paths give identical bytes and counts.
    """

    def __init__(self, deid: Deidentifier) -> None:
        self.deid = deid
        self.counts = deid.counts
        self._identity: dict[bool, dict[int, bytes]] = {}

    # -- parsing
    def _parse(self, data: bytes, pos: int, end: int, implicit: bool, in_item: bool):
        """Elements from ``pos``: list of (tag, vr, value_start, value_len, undefined, start)."""
        out = []
        append = out.append
        short = _HDR_SHORT.unpack_from
        u32 = _U32.unpack_from
        impl = _HDR_IMPL.unpack_from
        while pos < end:
            if implicit:
                group, elem, length = impl(data, pos)
                vr = None
                vstart = pos + 8
            else:
                group, elem, vrb, length = short(data, pos)
                vr = _VR_NAMES.get(vrb)
                if vr is None:
                    if group == 0xFFFE:
                        vr = ""
                    else:
                        raise FastPathUnsupported("unknown VR")
                if vr in _LONG_VRS:
                    length = u32(data, pos + 8)[0]
                    vstart = pos + 12
                else:
                    vstart = pos + 8
            tag = (group << 16) | elem
            if group == 0xFFFE:
                if tag == _ITEM_END and in_item:
                    return out, pos + 8
                raise FastPathUnsupported("unexpected item tag")
            if length == UNDEFINED_LENGTH:
                vend = self._skip_undefined(data, vstart, end, implicit, tag)
                append((tag, vr, vstart, vend - vstart, True, pos))
                pos = vend
            else:
                if vstart + length > end:
                    raise FastPathUnsupported("value past the end")
                append((tag, vr, vstart, length, False, pos))
                pos = vstart + length
        if in_item:
            raise FastPathUnsupported("item without delimiter")
        return out, pos

    def _skip_undefined(self, data: bytes, pos: int, end: int, implicit: bool, tag: int) -> int:
        """End of an undefined-length value (after its sequence delimiter)."""
        while pos < end:
            t = (_TAG.unpack_from(data, pos)[0] << 16) | _TAG.unpack_from(data, pos)[1]
            length = _U32.unpack_from(data, pos + 4)[0]
            if t == _SEQ_END:
                return pos + 8
            if t != _ITEM:
                raise FastPathUnsupported("no item in undefined-length value")
            if length == UNDEFINED_LENGTH:
                _, pos = self._parse(data, pos + 8, end, implicit, True)
            else:
                pos += 8 + length
        raise FastPathUnsupported("undefined length without delimiter")

    def _items(self, data: bytes, vstart: int, vlen: int, undefined: bool, implicit: bool):
        """(item entries, item undefined?) of a sequence value."""
        items = []
        pos, end = vstart, vstart + vlen
        while pos < end:
            t = (_TAG.unpack_from(data, pos)[0] << 16) | _TAG.unpack_from(data, pos)[1]
            length = _U32.unpack_from(data, pos + 4)[0]
            if t == _SEQ_END:
                break
            if t != _ITEM:
                raise FastPathUnsupported("sequence without items")
            if length == UNDEFINED_LENGTH:
                entries, pos = self._parse(data, pos + 8, end, implicit, True)
                items.append((entries, True))
            else:
                entries, _ = self._parse(data, pos + 8, pos + 8 + length, implicit, False)
                items.append((entries, False))
                pos += 8 + length
        return items

    # -- encoding
    @staticmethod
    def _header(tag: int, vr: str | None, length: int, implicit: bool) -> bytes:
        if implicit:
            return _HDR_IMPL.pack(tag >> 16, tag & 0xFFFF, length)
        if vr in _LONG_VRS:
            return _HDR_LONG.pack(tag >> 16, tag & 0xFFFF, vr.encode(), length)
        return _HDR_SHORT.pack(tag >> 16, tag & 0xFFFF, vr.encode(), length)

    def _text_element(self, tag: int, raw_vr: str | None, vr: str, values, implicit: bool) -> bytes:
        if values is None:
            data = b""
        else:
            text = values if isinstance(values, str) else "\\".join(values)
            if not text.isascii():
                raise FastPathUnsupported("non-ASCII replacement")
            data = text.encode("ascii")
            if len(data) % 2:
                data += b"\x00" if vr == "UI" else b" "
        out_vr = raw_vr if vr in ASCII_VRS else vr
        if not implicit and (out_vr is None or len(out_vr) != 2):
            raise FastPathUnsupported("no VR to write")
        if not implicit and out_vr not in _LONG_VRS and len(data) > 0xFFFF:
            raise FastPathUnsupported("value too long")
        return self._header(tag, out_vr, len(data), implicit) + data

    @staticmethod
    def _strings(data: bytes, vstart: int, vlen: int) -> list[str]:
        raw = data[vstart:vstart + vlen]
        if not raw.isascii():
            raise FastPathUnsupported("non-ASCII value")
        text = raw.decode("ascii").rstrip("\x00 ")
        return [v.strip("\x00 ") for v in text.split("\\")] if text else []

    def _identity_elements(self, implicit: bool) -> dict[int, bytes]:
        """The encoded (0012,0062-0064) and (0028,0303) elements (constant per plan)."""
        if implicit not in self._identity:
            ds = Dataset()
            self.deid._mark(ds)
            encoded = {}
            for tag in _IDENTITY_TAGS:
                sub = Dataset()
                sub._dict[tag] = ds._dict[tag]
                encoded[tag] = b"".join(_encode_elements(sub, True, implicit, ["iso8859"]))
            self._identity[implicit] = encoded
        return self._identity[implicit]

    # -- the walk (mirrors Deidentifier._clean / _apply / _clean_value / _clean_private)
    def _level(self, data: bytes, entries, depth: int, enhanced: bool, patient: PatientContext,
               implicit: bool, top_state: dict | None) -> list[tuple[int, bytes]]:
        deid, counts = self.deid, self.counts
        actions = deid.plan.actions(depth, enhanced)
        tags = [e[0] for e in entries]
        if tags != sorted(set(tags)):
            raise FastPathUnsupported("unsorted or duplicate tags")
        by_tag = {e[0]: e for e in entries}
        out: list[tuple[int, bytes]] = []
        privates = []
        handled: set[int] = set()
        for entry in entries:
            tag, raw_vr, vstart, vlen, undefined, estart = entry
            group = tag >> 16
            if group & 1:
                privates.append(entry)
                continue
            if tag in handled:
                continue
            if not tag & 0xFFFF and group > 2:
                continue
            if deid._graphics and (0x5000 <= group <= 0x501E or 0x6000 <= group <= 0x601E):
                counts["X"] += 1
                continue
            vr = raw_vr
            if vr is None or vr == "UN":
                vr = deid._vr(tag)
                if raw_vr == "UN" and vr == "SQ":
                    raise FastPathUnsupported("sequence encoded as UN")
            action = actions.get(tag)
            if action is None and 0x5000 <= group <= 0x50FF:
                action = actions.get((group << 16) | 0xFFFF)
            whole = data[estart:vstart + vlen]
            if action is None:
                if vr is None or deid._vr(tag) is None:
                    counts["X"] += 1
                    continue
                if not deid._defaults:
                    if vr == "SQ":
                        out.append((tag, self._sequence(data, entry, depth, enhanced, patient, implicit)))
                    else:
                        out.append((tag, whole))
                    continue
                action = deid.unlisted_action(tag, vr)
                if action is None:
                    out.append((tag, whole))
                    continue
            elif vr == "UI" and action == "K" and deid._defaults and tag not in deid._standard_uid_tags:
                action = "U" if not deid._retain_uids else "K"
            if undefined and vr != "SQ":
                if action in ("K",) or tag in PIXEL_TAGS:
                    out.append((tag, whole))
                    continue
                raise FastPathUnsupported("undefined-length value to rewrite")
            # _apply
            if action == "X":
                counts["X"] += 1
            elif vr == "SQ":
                if action == "Z":
                    out.append((tag, self._header(tag, "SQ", 0, implicit)))
                    counts["Z"] += 1
                else:
                    out.append((tag, self._sequence(data, entry, depth, enhanced, patient, implicit)))
            elif action == "K":
                out.append((tag, whole))
            elif action == "Z":
                out.append((tag, self._text_element(tag, raw_vr, vr, None, implicit)))
                counts["Z"] += 1
            elif action == "P":
                out.append((tag, self._text_element(tag, raw_vr, vr, patient.pseudonym, implicit)))
                counts["P"] += 1
            elif action == "A":
                old = "\\".join(self._strings(data, vstart, vlen)).strip()
                age = cap_age(old)
                if old and not age:
                    deid.note_not_parsed(tag, "AS", "value emptied")
                out.append((tag, self._text_element(tag, raw_vr, vr, age, implicit)))
                counts["K"] += 1
            elif vr == "UI" and action in ("U", "D", "C"):
                values = self._strings(data, vstart, vlen)
                if not all(_UID_SYNTAX.match(v) for v in values if v):
                    deid.note_not_parsed(tag, "UI", "replaced by a keyed UID")
                new = [deid.new_uid(v) for v in values]
                out.append((tag, self._text_element(tag, raw_vr, vr, new, implicit)))
                if top_state is not None and tag == 0x00080018:
                    top_state["sop"] = new[0] if new else ""
                counts["U"] += 1
            elif action == "D":
                if vr not in ASCII_VRS and vr not in TEXT_VRS:
                    raise FastPathUnsupported("dummy of a binary VR")
                value = "O" if tag == PATIENT_SEX else DUMMY.get(vr, "ANONYMIZED")
                out.append((tag, self._text_element(tag, raw_vr, vr, value, implicit)))
                counts["D"] += 1
            elif action == "U":
                counts["X"] += 1
            elif action == "C":
                counts["C"] += 1
                if vr == "DA":
                    values = self._strings(data, vstart, vlen)
                    time_tag = DATE_TIME_PAIRS.get(tag)
                    if (time_tag is not None and time_tag in by_tag and len(values) == 1 and values[0]
                            and deid.plan.actions(1, False).get(time_tag, "C") == "C"):
                        t_entry = by_tag[time_tag]
                        times = self._strings(data, t_entry[2], t_entry[3])
                        if len(times) == 1 and times[0]:
                            new_date, new_time = shift_pair(values[0], times[0], patient)
                            if new_date is None:
                                deid.note_not_parsed(tag, "DA", "value emptied")
                            if new_time is None:
                                deid.note_not_parsed(time_tag, "TM", "value emptied")
                            out.append((tag, self._text_element(tag, raw_vr, "DA", new_date, implicit)))
                            out.append((time_tag, self._text_element(time_tag, t_entry[1], "TM", new_time, implicit)))
                            handled.add(time_tag)
                            counts["C"] += 1
                            continue
                    new = shift_values("DA", values, patient)
                elif vr in ("TM", "DT"):
                    new = shift_values(vr, self._strings(data, vstart, vlen), patient)
                elif vr in TEXT_VRS:
                    raise FastPathUnsupported("text cleaning")
                else:
                    out.append((tag, whole))
                    continue
                if new is None:
                    deid.note_not_parsed(tag, vr, "value emptied")
                out.append((tag, self._text_element(tag, raw_vr, vr, None if not new else new[0] if len(new) == 1 else new,
                                                    implicit)))
            else:  # pragma: no cover
                raise FastPathUnsupported(f"action {action}")
        if privates:
            out += self._private(data, privates, depth, enhanced, patient, implicit)
        return out

    def _private(self, data, entries, depth, enhanced, patient, implicit) -> list[tuple[int, bytes]]:
        deid, counts = self.deid, self.counts
        if deid.plan.remove_all_private or not deid.allowlist:
            counts["private_removed"] += len(entries)
            return []
        # one pass: entries are sorted, so a group's private creators (gggg,0010-00FF) come
        # before its data elements (gggg,xx00-xxFF); a block whose creator has no
        # allowlisted element byte is removed element by element without building keys
        creators: dict = {}
        creator_entries = []
        live: dict = {}
        allowed = deid.allowlist_blocks
        empty: frozenset = frozenset()
        kept, kept_blocks = [], set()
        removed = 0
        for entry in entries:
            tag = entry[0]
            el = tag & 0xFFFF
            if el < 0x1000:
                if 0x10 <= el <= 0xFF:
                    creator = data[entry[2]:entry[2] + entry[3]].decode("latin-1").strip(" \x00")
                    creators[(tag >> 16, el)] = creator
                    elements = allowed.get((creator, tag >> 16))
                    if elements:
                        live[(tag >> 16, el)] = elements
                    creator_entries.append(entry)
                continue
            if (el & 0xFF) not in live.get((tag >> 16, el >> 8), empty):
                removed += 1
                continue
            tag, vr, vstart, vlen, undefined, estart = entry
            key = deid.allowlisted_private(creators, tag)
            if key is not None:
                kept_blocks.add((tag >> 16, (tag & 0xFFFF) >> 8))
                counts["private_kept"] += 1
                if vr == "SQ" or undefined:
                    kept.append((tag, self._sequence(data, entry, depth, enhanced, patient, implicit)))
                elif vlen:
                    value = data[vstart:vstart + vlen]
                    new = deid.kept_private_value(key, tag, vr, value, patient)
                    if len(new) == vlen:
                        kept.append((tag, data[estart:vstart] + new))
                    else:
                        kept.append((tag, self._header(tag, vr, len(new), implicit) + new))
                else:
                    kept.append((tag, data[estart:vstart + vlen]))
            else:
                removed += 1
        counts["private_removed"] += removed
        for tag, vr, vstart, vlen, undefined, estart in creator_entries:
            if (tag >> 16, tag & 0xFFFF) in kept_blocks:
                kept.append((tag, data[estart:vstart + vlen]))
        return kept

    def _sequence(self, data, entry, depth, enhanced, patient, implicit) -> bytes:
        tag, raw_vr, vstart, vlen, undefined, estart = entry
        if raw_vr not in (None, "SQ"):
            raise FastPathUnsupported("sequence with another VR")
        body = []
        for entries, item_undefined in self._items(data, vstart, vlen, undefined, implicit):
            elements = self._level(data, entries, depth + 1, enhanced, patient, implicit, None)
            elements.sort(key=lambda x: x[0])
            content = b"".join(b for _, b in elements)
            if item_undefined:
                body.append(b"\xfe\xff\x00\xe0\xff\xff\xff\xff" + content + b"\xfe\xff\x0d\xe0\x00\x00\x00\x00")
            else:
                body.append(b"\xfe\xff\x00\xe0" + _U32.pack(len(content)) + content)
        value = b"".join(body)
        if undefined:
            return (self._header(tag, "SQ", UNDEFINED_LENGTH, implicit) + value
                    + b"\xfe\xff\xdd\xe0\x00\x00\x00\x00")
        return self._header(tag, "SQ", len(value), implicit) + value

    # -- a whole file
    def rewrite(self, data: bytes, fallback_key: str = "") -> tuple[bytes, PatientContext, dict]:
        """De-identified file bytes, the patient context and the original Study/Series UIDs."""
        deid = self.deid
        if deid._cleans_text or data[128:132] != b"DICM":
            raise FastPathUnsupported("text cleaning or no PS3.10 header")
        meta, pos = self._parse_meta(data)
        meta_by = {e[0]: e for e in meta}
        if 0x00020010 not in meta_by or 0x00020001 not in meta_by:
            raise FastPathUnsupported("incomplete file meta")
        ts = self._strings(data, meta_by[0x00020010][2], meta_by[0x00020010][3])[0]
        if ts == _IMPLICIT_LE:
            implicit = True
        elif ts in (_EXPLICIT_BE, _DEFLATED):
            raise FastPathUnsupported("big endian or deflated")
        else:
            implicit = False
        entries, _ = self._parse(data, pos, len(data), implicit, False)
        by_tag = {e[0]: e for e in entries}

        def text(tag):
            e = by_tag.get(tag)
            return "\\".join(self._strings(data, e[2], e[3])) if e is not None else ""

        pid, issuer = text(PATIENT_ID).strip(), text(ISSUER).strip()
        key = (pid, issuer, "" if pid else fallback_key)
        if key in deid._patients:
            pseudo, days, seconds = deid._patients[key]
            patient = PatientContext(pid, issuer, pseudo, days, seconds, None)
        else:
            shim = Dataset()
            for t in (PATIENT_ID, ISSUER):
                if t in by_tag:
                    shim._dict[t] = DataElement(t, "LO", text(t))
            patient = patient_context(shim, deid.secret, fallback_key, identifiers=False, cache=deid._patients)
        orig = {"StudyInstanceUID": text(0x0020000D), "SeriesInstanceUID": text(0x0020000E)}
        enhanced = SHARED_FG in by_tag or PER_FRAME_FG in by_tag
        self._blob_pattern = deid._blob_pattern = blob_pattern([data[by_tag[t][2]:by_tag[t][2] + by_tag[t][3]] if t in by_tag else b""
                                           for t in BLOB_IDENTIFIER_TAGS],
                                          data[by_tag[SPECIFIC_CHARSET][2]:by_tag[SPECIFIC_CHARSET][2]
                                               + by_tag[SPECIFIC_CHARSET][3]] if SPECIFIC_CHARSET in by_tag else b"")
        state: dict = {}
        counts_before, not_parsed_before = Counter(self.counts), Counter(deid.not_parsed)
        kept_before = Counter(deid.private_kept_by)
        deid.notes = []
        try:
            elements = self._level(data, entries, 0, enhanced, patient, implicit, state)
        except FastPathUnsupported:
            self.counts.clear()
            self.counts.update(counts_before)
            deid.not_parsed.clear()
            deid.not_parsed.update(not_parsed_before)
            deid.private_kept_by.clear()
            deid.private_kept_by.update(kept_before)
            deid.notes = []
            raise
        elements = [e for e in elements if e[0] not in _IDENTITY_TAGS]
        elements += list(self._identity_elements(implicit).items())
        elements.sort(key=lambda x: x[0])
        # file meta (PS3.10 7.1): kept elements copied, MediaStorageSOPInstanceUID follows the SOP
        meta_parts = {
            0x00020012: self._text_element(0x00020012, "UI", "UI", IMPLEMENTATION_CLASS_UID, False),
            0x00020013: self._text_element(0x00020013, "SH", "SH", IMPLEMENTATION_VERSION_NAME, False),
        }
        for tag, vr, vstart, vlen, undefined, estart in meta:
            if tag == 0x00020000 or tag not in FILE_META_KEEP or tag in meta_parts:
                continue
            if tag == 0x00020003:
                sop = state.get("sop") or deid.new_uid(text_meta(data, vstart, vlen, self))
                meta_parts[tag] = self._text_element(tag, "UI", "UI", sop, False)
            else:
                meta_parts[tag] = data[estart:vstart + vlen]
        meta_bytes = b"".join(meta_parts[t] for t in sorted(meta_parts))
        out = (b"\x00" * 128 + b"DICM" + _HDR_SHORT.pack(2, 0, b"UL", 4) + _U32.pack(len(meta_bytes))
               + meta_bytes + b"".join(b for _, b in elements))
        self.counts["instances"] += 1
        return out, patient, orig

    def _parse_meta(self, data: bytes):
        """File meta elements (group 0002, explicit VR LE) and where the data set starts."""
        out = []
        pos = 132
        while pos + 8 <= len(data):
            group, elem = _TAG.unpack_from(data, pos)
            if group != 2:
                break
            vr = data[pos + 4:pos + 6].decode("latin-1")
            if vr in _LONG_VRS:
                length, vstart = _U32.unpack_from(data, pos + 8)[0], pos + 12
            elif vr in VALID_VRS:
                length, vstart = _U16.unpack_from(data, pos + 6)[0], pos + 8
            else:
                raise FastPathUnsupported("file meta VR")
            if length == UNDEFINED_LENGTH:
                raise FastPathUnsupported("file meta length")
            out.append(((group << 16) | elem, vr, vstart, length, False, pos))
            pos = vstart + length
        return out, pos


def text_meta(data: bytes, vstart: int, vlen: int, rw: ByteRewriter) -> str:
    values = rw._strings(data, vstart, vlen)
    return values[0] if values else ""
