"""DICOM files in share/: raw bytes outside the pixel data, then element by element.

Every element at every depth (PS3.5 7.5), the file meta included, when the
raw bytes hold a hit (or the data set is deflated, PS3.5 A.5); the Pixel Data
span comes from the shared byte walker (:func:`dicomio_walk.pixel_data_span`).
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pydicom

from ..dicomio import read_bytes
from ..dicomio_walk import PIXEL_DATA, pixel_data_span, top_level_elements
from .identifiers import NUMERIC_COINCIDENCE_KINDS, NUMERIC_VRS, decoded_pn, iter_elements
from .matcher import MEMO_MIN_BYTES, Found, Matcher

#: Deflated explicit VR little endian (PS3.5 A.5): raw bytes are compressed.
DEFLATED_TS = "1.2.840.10008.1.2.1.99"

def _as_bytes(value: Any) -> bytes:
    if value is None:
        return b""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if type(value).__name__ == "MultiValue" or isinstance(value, (list, tuple)):
        return "\\".join(str(v) for v in value).encode("utf-8", "replace")
    return str(value).encode("utf-8", "replace")


def _walk_dicom(dataset: Any, prefix: str, matcher: Matcher, found: Found,
                located: set[str] | None = None) -> None:
    """Report every element (any depth) whose value holds an identifier; add
    the kinds seen (also the exempted ones) to ``located``."""
    for label, tag, vr, keyword, value, parent in iter_elements(dataset):
        if _is_pixel_tag(int(tag)):
            continue
        kinds = matcher.kinds(_as_bytes(value))
        if not kinds and vr == "PN" and isinstance(value, (bytes, bytearray)):
            kinds = matcher.kinds(_as_bytes(decoded_pn(parent, tag, value)))  # ISO 2022 names
        if located is not None:
            located |= kinds
        if kinds and vr in NUMERIC_VRS:
            kinds = kinds - NUMERIC_COINCIDENCE_KINDS
        if kinds:
            keyword = keyword or ("private" if tag.is_private else "")
            found(f"DICOM {prefix}{label} {keyword}".rstrip(), kinds)


#: Pixel Data (7FE0,0010), Float (7FE0,0008) and Double Float Pixel Data (7FE0,0009):
#: numbers (or compressed bytes), where a short name would match by chance.
PIXEL_TAGS = {PIXEL_DATA, 0x7FE00008, 0x7FE00009}


def _is_pixel_tag(tag: int) -> bool:
    """Pixel data, or Overlay Data (60xx,3000), a 1-bit bitmap."""
    return tag in PIXEL_TAGS or (tag & 0xFF00FFFF) == 0x60003000


def _screen_raw(raw: bytes, matcher: Matcher) -> tuple[set[str], bool]:
    """(kinds, loose) of a file's bytes outside its Pixel Data, as :meth:`Matcher.screen`
    gives them. A large top-level value that is no sequence (a vendor protocol, a
    CSA header: the same in every file of a series) is screened on its own, so the
    matcher screens it once; the rest of the bytes as one text, each value cut out
    replaced by a NUL. ``loose`` (a spelling seen with no boundary decided, which the
    element walk then decides) comes from the rest, and from a value only when the
    walk may read it as a sequence (VR UN, PS3.5 6.2.2): any other value screened on
    its own has the bounds the walk would give it."""
    elements = top_level_elements(raw)
    span = pixel_data_span(raw, elements)
    cuts = [(span[0], span[1], None)] if span is not None else []  # (start, end, VR of a value screened alone)
    for tag, vr, vstart, vlen, undefined, _ in elements or ():
        if vlen >= MEMO_MIN_BYTES and vr not in (None, "SQ") and not undefined and int(tag) != PIXEL_DATA:
            cuts.append((vstart, vstart + vlen, vr))
    kinds: set[str] = set()
    loose = False
    rest, pos = [], 0
    for start, end, vr in sorted(cuts):
        rest.append(raw[pos:start])
        if vr is not None:
            found, hit = matcher.screen(raw[start:end])
            kinds, loose = kinds | found, loose or (hit and vr == "UN")
        pos = end
    rest.append(raw[pos:])
    found, hit = matcher.screen(b"\x00".join(rest))
    return kinds | found, loose or hit


def scan_dicom(path: Path, matcher: Matcher, found: Found) -> None:
    """All elements at every depth incl. file meta and private ones, plus raw bytes.

    The raw bytes (un-gzipped) are searched first; only a file with a hit, or
    a deflated one (PS3.5 A.5) whose bytes hide the values, is walked element by
    element to say where.
    """
    raw = read_bytes(path)
    raw_kinds, loose = _screen_raw(raw, matcher)
    if not raw_kinds and not loose and DEFLATED_TS.encode() not in raw[:4096]:
        return
    try:
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
