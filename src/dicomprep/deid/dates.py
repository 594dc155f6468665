"""Dates, times, date-times and ages under the profile (DICOM PS3.15 Annex E).

Option "Retain Longitudinal Temporal Information with Modified Dates" (PS3.15
E.3.6, CID 7050 code 113107): every DA, TM and DT value of a patient moves by
the same keyed offset (:mod:`.pseudonym`), a date and its time of the same name
(StudyDate / StudyTime) move together so a day may carry over, and each value
keeps its precision (PS3.5 6.2 DA / TM / DT). PatientAge (0010,1010) over 89
years becomes ``090Y`` (PS3.15 E.1.1). Private text values that are a date as a
whole are shifted too (:func:`whole_date`).
"""
from __future__ import annotations

import datetime as dt
import functools
import re
from typing import Callable

from pydicom.datadict import DicomDictionary, tag_for_keyword

from .patient import PatientContext

MAX_AGE_YEARS = 89


def _date_time_pairs() -> dict[int, int]:
    """DA tag -> TM tag of the same name (StudyDate -> StudyTime, ...), from the dictionary."""
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


def _each_end(value: str, shift: Callable[[str], str]) -> str:
    """``shift`` of a stripped value; of each end of a range ``a-b`` (PS3.4 C.2.2.2.5.1);
    an empty value or end stays empty."""
    value = value.strip()
    if not value:
        return value
    if "-" in value:
        return "-".join(_each_end(v, shift) if v else "" for v in value.split("-"))
    return shift(value)


@functools.lru_cache(maxsize=4096)  # pure: a series repeats its dates and times
def shift_date(value: str, days: int) -> str:
    """Shift a DA value (YYYYMMDD; a range ``a-b`` shifts both ends) by ``days``."""
    return _each_end(value, lambda v: _shift_day(v, days))


def _shift_day(value: str, days: int) -> str:
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
    return _each_end(value, lambda v: _shift_clock(v, seconds))


def _shift_clock(value: str, seconds: int) -> str:
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


def parse_da(value: str) -> "dt.date | None":
    digits = value.strip().replace(".", "").replace("-", "")
    if len(digits) != 8 or not digits.isdigit():
        return None
    try:
        return dt.date(int(digits[:4]), int(digits[4:6]), int(digits[6:]))
    except ValueError:
        return None

#: VRs of private text values checked for a whole-value date or date-time.
PRIVATE_TEXT_VRS = frozenset({"LO", "SH", "ST", "LT", "UT", "UC", "CS", "OB"})
_WHOLE_DIGIT_DATE = re.compile(rb"^((?:19|20)\d{6})(\d{2,6}(?:\.\d{1,6})?)?([+-]\d{4})?$")
_WHOLE_SEP_DATE = re.compile(rb"^(?:\d{4}[-/.]\d{1,2}[-/.]\d{1,2}|\d{1,2}[-/.]\d{1,2}[-/.]\d{4})(?:[ T]\d{1,2}:\d{2}(?::\d{2}(?:\.\d+)?)?)?$")


def whole_date(value: bytes, patient: "PatientContext") -> bytes | None:
    """A private text value that is a date or date-time as a whole, cleaned: the
    DA/DT digit form shifted (same length), a form with separators removed (b"").
    None when the value is something else."""
    text = value.rstrip(b"\x00 ").strip()
    if not 8 <= len(text) <= 32:
        return None
    m = _WHOLE_DIGIT_DATE.match(text)
    if m:
        if parse_da(m.group(1).decode()) is None:
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

