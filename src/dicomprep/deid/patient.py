"""The patient of one dataset: pseudonym, date offsets and identifying strings.

PatientID (0010,0020) with IssuerOfPatientID (0010,0021) keys the pseudonym
and the date/time offsets (:mod:`.pseudonym`, keyed HMAC); a dataset without
a PatientID falls back to the unit's subject key. For cleaning free text (the
C action on text VRs, PS3.15 E.1.1) the dataset's identifying strings are
compiled into one pattern (:func:`identifier_pattern`).
"""
from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

from pydicom.dataset import Dataset

from ..dicomio import value_text
from . import pseudonym
from .spellings import date_spellings, fold_accents, id_regex_source, name_spellings

PATIENT_ID, ISSUER = 0x00100020, 0x00100021

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


def element_text(ds: Dataset, tag: int) -> str:
    """The value of element ``tag`` as text (:func:`dicomio.value_text`); ``''``
    when it is absent or its value cannot be decoded."""
    if tag not in ds._dict:
        return ""
    try:
        value = ds[tag].value
    except Exception:
        return ""
    return value_text(value)


def identifier_pattern(ds: Dataset) -> re.Pattern | None:
    """Regex of the identifying strings of a dataset, for cleaning free text (C on text).

    Patient name components and the name in its spellings ("Smith, John", "J. Smith",
    without accents), IDs (also written with separators: 123-45-678), accession number,
    institution, station, and the patient's dates in every spelling (:mod:`.spellings`).
    Values are compared as decoded text, so the file's character set does not matter.
    """
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
    pid, issuer = element_text(ds, PATIENT_ID).strip(), element_text(ds, ISSUER).strip()
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
    pattern = identifier_pattern(ds) if identifiers else None
    return PatientContext(pid, issuer, pseudo, days, seconds, pattern)

