"""Identifiers inside kept private blobs (vendor headers: Siemens CSA, GE protocol).

A kept (allowlisted, PS3.15 E.3.10 Retain Safe Private Option) private value
of 16 bytes or more (a text-like one of 3 or more) is cleaned without changing
its length: the dataset's own identifying strings, in every spelling
(:mod:`.spellings`) and every character set the file declares
(SpecificCharacterSet (0008,0005), PS3.5 6.1), are found by whole-word patterns
(:func:`blob_pattern`: the series' identifiers, and the instance's times);
vendor layouts that need more have a cleaner of their own (:data:`VENDOR_CLEANERS`).
"""
from __future__ import annotations

import functools
import gzip
import re
import zlib
from dataclasses import dataclass
from typing import Any

from pydicom.charset import convert_encodings, decode_bytes
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset

from .dates import parse_da
from .spellings import compact_id, date_spellings, encoded_forms, fold_accents, id_regex_source, name_spellings, trie_regex

#: A UID inside a binary or text blob: at least 5 numeric components, 10+ characters.
EMBEDDED_UID = re.compile(rb"(?<![\d.])[0-2](?:\.\d+){4,}(?![\d.])")
#: The parts of an e-mail address (RFC 5322 dot-atom) around its ``@``: the local
#: part (read backwards from the ``@``) and a domain of two or more dotted labels.
_EMAIL_LOCAL = re.compile(rb"[\w.+-]{1,64}$")
_EMAIL_DOMAIN = re.compile(rb"[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")


def mask_email_addresses(value: bytes) -> bytes:
    """``value`` with every e-mail address overwritten by ``X`` (same length). Looked
    for at each ``@`` only: a Siemens protocol of 150 kB has a few (``Class@Library``,
    without a dotted domain, which are not addresses)."""
    out = None
    at = value.find(b"@")
    while at != -1:
        local = _EMAIL_LOCAL.search(value, max(0, at - 64), at)
        domain = _EMAIL_DOMAIN.match(value, at + 1)
        if local is not None and domain is not None:
            out = out if out is not None else bytearray(value)
            out[local.start():domain.end()] = b"X" * (domain.end() - local.start())
        at = value.find(b"@", at + 1)
    return value if out is None else bytes(out)

#: Top-level attributes whose values are scrubbed out of kept private blobs (whole words).
#: Patient (0010,xxxx): name, ID, other IDs and names, birth name, mother's birth name,
#: address, telephone numbers, telecom information, responsible person, birth date;
#: institution name and address, station, serial, physicians, operators, department,
#: accession; study/series/acquisition/content dates and times.
BLOB_IDENTIFIER_TAGS = (
    0x00100010, 0x00100020, 0x00101000, 0x00101001, 0x00080080, 0x00080081, 0x00081010, 0x00181000,
    0x00080090, 0x00081050, 0x00081070, 0x00081040, 0x00080050, 0x00100030,
    0x00080020, 0x00080021, 0x00080022, 0x00080023, 0x00080030, 0x00080031, 0x00080032, 0x00080033,
    0x00101005, 0x00101060, 0x00101040, 0x00102154, 0x00102155, 0x00102297,
)
#: Words never scrubbed from blobs: field names of the vendor headers converters read
#: (Siemens CSA: B_value, B_matrix, ICE_Dims, SliceNormalVector ...).
PROTECTED_BLOB_WORDS = frozenset({
    b"value", b"matrix", b"dims", b"ice", b"slice", b"time", b"times", b"image", b"images", b"mosaic",
    b"normal", b"vector", b"phase", b"direction", b"series", b"protocol", b"true", b"false", b"none",
    b"yes", b"no", b"test", b"dicom", b"siemens", b"ge", b"philips", b"mr", b"ct",
})
_BLOB_SPLIT = re.compile(rb"[\^\\=,]")
_HAS_LETTER = re.compile(r"[^\W\d_]")


def raw_bytes(ds: Dataset, tag: int) -> bytes:
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

    def spans(self, value: bytes) -> list[tuple[int, int]]:
        """(start, end) of every match in ``value`` (case-insensitive)."""
        lowered = value.lower()
        if not self.may_match(lowered):  # cheap test before the regex
            return []
        return [m.span() for m in self.regex.finditer(lowered)]


def x_out(value: bytes, spans: list[tuple[int, int]]) -> bytes:
    """``value`` with each span overwritten by ``X`` (the length stays)."""
    if not spans:
        return value
    out = bytearray(value)
    for a, b in spans:
        out[a:b] = b"X" * (b - a)
    return bytes(out)


@dataclass(frozen=True)
class BlobScrub:
    """What is scrubbed out of one instance's kept private values, in two patterns:
    ``words``, the identifiers the files of a series share (names, IDs, dates,
    institution ...), and ``times``, the instance's own Study/Series/Acquisition/
    Content Time (0008,0030-0033). Acquisition and Content Time change from slice
    to slice (a Siemens XA DWI series has one file per slice): kept apart, the
    ``words`` pattern and what it found in a blob repeated per slice (the CSA series
    header, a 150 kB protocol) are reused, and only the few time spellings are
    looked for again."""

    words: BlobPattern | None
    times: BlobPattern | None


#: Separators taken out of text before looking for an ID (see :func:`.spellings.compact_id`).
ID_SEPARATOR_BYTES = b"-./ _"


#: Tags whose values are names (PN), dates (DA) and times (TM) among BLOB_IDENTIFIER_TAGS.
_BLOB_NAME_TAGS = frozenset({0x00100010, 0x00101001, 0x00080090, 0x00081050, 0x00081070,
                             0x00101005, 0x00101060, 0x00102297})
#: Telephone numbers (0010,2154): found as their digits, with or without separators.
_BLOB_PHONE_TAGS = frozenset({0x00102154})
_BLOB_DATE_TAGS = frozenset({0x00100030, 0x00080020, 0x00080021, 0x00080022, 0x00080023})
_BLOB_TIME_TAGS = frozenset({0x00080030, 0x00080031, 0x00080032, 0x00080033})
_BLOB_ID_TAGS = frozenset({0x00100020, 0x00101000, 0x00080050, 0x00181000})


@functools.lru_cache(maxsize=256)
def _compile_blob_pattern(tokens: tuple[bytes, ...], extra: tuple[tuple[bytes, bytes, bool], ...] = ()
                          ) -> BlobPattern:
    """``extra``: (regex source, literal every match holds, literal is an ID to look for
    without separators)."""
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
    try:
        return decode_bytes(value, convert_encodings(charsets or ["ISO_IR 6"]), {0x5C, 0x3D, 0x5E})
    except Exception:
        return value.decode("latin-1")


def blob_pattern(values: list[bytes], charset: bytes = b"", tags: tuple = ()) -> BlobScrub | None:
    """The identifiers of a dataset to scrub out of its kept private values, as a
    :class:`BlobScrub`: ``values`` of ``tags`` (default :data:`BLOB_IDENTIFIER_TAGS`),
    raw, with the file's Specific Character Set (0008,0005) ``charset``. The times
    and the rest are compiled apart by :func:`_blob_pattern` (memoised: the files of
    a series share their identifiers, and their times repeat)."""
    tags = tuple(tags) or BLOB_IDENTIFIER_TAGS
    pairs = [(t, bytes(v)) for t, v in zip(tags, values)]
    parts = []
    for want_times in (False, True):
        chosen = [(t, v) for t, v in pairs if (t in _BLOB_TIME_TAGS) == want_times]
        parts.append(_blob_pattern(tuple(v for _, v in chosen), bytes(charset), tuple(t for t, _ in chosen))
                     if chosen else None)
    if parts[0] is None and parts[1] is None:
        return None
    return _blob_scrub(parts[0], parts[1])


@functools.lru_cache(maxsize=256)
def _blob_scrub(words: BlobPattern | None, times: BlobPattern | None) -> BlobScrub:
    """One object per pair: equal scrubs are the same object (the series template
    compares them)."""
    return BlobScrub(words, times)


@functools.lru_cache(maxsize=128)
def _blob_pattern(values: tuple, charset: bytes = b"", tags: tuple = ()) -> BlobPattern | None:
    """Whole-word, case-insensitive pattern of a dataset's identifying strings, in every
    spelling (:mod:`.spellings`) and every character set the file declares: names
    ("Smith, John", "J. Smith", no accents, ISO 2022 escapes), IDs with or without
    separators, dates (14.03.2019, 14 Mar 2019, ... and a DT ``20190314123000``),
    times (HHMMSS, HH:MM:SS), institution, station, serial (parts of 3+ characters).
    ``tags`` names the tag of each value."""
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
                day = parse_da(part)
                if day is not None:
                    texts.update(date_spellings(day))
                    # the date as the head of a DT (20190314123000.5): digits may follow
                    digits = day.strftime("%Y%m%d").encode()
                    extra.add((digits + rb"\d{0,6}(?:\.\d{1,6})?", digits, False))
                continue
            if tag in _BLOB_TIME_TAGS:
                digits = part.split(".")[0]
                if len(digits) == 6 and digits.isdigit() and digits != "000000":
                    texts.add(f"{digits[:2]}:{digits[2:4]}:{digits[4:]}")
                    if not digits.endswith("00"):  # on a whole minute (100000) the bare digits are a
                        texts.update({part, digits})  # round number a protocol holds, not a time
                continue
            if tag in _BLOB_NAME_TAGS:
                texts.update(t for t in name_spellings(part) if len(t) >= 3)
            if tag in _BLOB_ID_TAGS or tag in _BLOB_PHONE_TAGS:
                ident = re.sub(r"[+()]", "", part) if tag in _BLOB_PHONE_TAGS else part
                source = id_regex_source(ident)
                if source:
                    extra.add((source.encode("ascii"), compact_id(ident).encode("ascii"), True))
            for piece in re.split(r"[\^,]", part):
                piece = piece.strip()
                if len(piece) >= 3:
                    texts.update({piece, fold_accents(piece)})
                    # its words, those with a letter: a number alone (a house number, part of
                    # a telephone number, "Room 1000") would wipe values such as a b-value
                    words = [w for w in piece.split() if len(w) >= 3 and _HAS_LETTER.search(w)]
                    texts.update(words)
                    texts.update(fold_accents(w) for w in words)
    tokens: set[bytes] = set()
    for text in texts:
        if text.lower().encode("utf-8", "replace") in PROTECTED_BLOB_WORDS:
            continue
        tokens |= {t for t in encoded_forms(text, charsets) if len(t) >= 3}
    tokens = {t for t in tokens if t.lower() not in PROTECTED_BLOB_WORDS}
    if not tokens and not extra:
        return None
    return _compile_blob_pattern(tuple(sorted(tokens, key=lambda t: (-len(t), t))), tuple(sorted(extra)))


def clean_ge_protocol_block(deid: Any, value: bytes, pattern: BlobScrub | None) -> bytes:
    """GE Protocol Data Block (0025,xx1B of GEMS_SERS_01): a 4-byte length + gzip text of
    ``KEY "value"`` lines. Rewritten without the free-text lines (SEDESC: the series
    description, removed by the profile elsewhere) and with UIDs and the dataset's
    identifying strings scrubbed (``deid``: the :class:`~.dataset.Deidentifier`);
    re-compressed deterministically (mtime 0)."""

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


