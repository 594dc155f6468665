"""The DICOM byte walker: the one place that knows how data elements are encoded.

PS3.5 section 7: an element is a tag (group, element), in explicit VR a
two-character VR (7.1.2), then a value length of 2 bytes, or of 4 bytes after
2 reserved bytes for the VRs in :data:`LONG_VR_NAMES`; in implicit VR (7.1.3)
always a 4-byte length. Sequences and items (7.5) may have an undefined length
(``FFFFFFFF``) and end at their delimitation items; encapsulated Pixel Data
(A.4) is such a value. File Meta Information (PS3.10 7.1) is explicit VR
little endian.

:func:`element_header` reads one element header; :func:`walk_elements`,
:func:`sequence_items`, :func:`file_meta_elements` and :func:`pixel_data_span`
walk a file's bytes in memory (de-identification fast path, leak verifier);
the index's streaming header reader (:func:`dicomio.read_header_fields`)
reads its element headers with :func:`element_header` and
:func:`item_header` over its buffer.
"""
from __future__ import annotations

import struct as _struct

#: Transfer syntaxes (PS3.5 section 10 / annex A) the walker reads itself.
TS_IMPLICIT_LE = "1.2.840.10008.1.2"
TS_EXPLICIT_BE = "1.2.840.10008.1.2.2"
TS_DEFLATED = ("1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.8.1")
#: Explicit-VR encodings with a 2-byte reserved field and 4-byte length (PS3.5 7.1.2).
LONG_VRS = frozenset((b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN",
                      b"UR", b"UT", b"UV"))
#: Explicit-VR encodings with a 2-byte length (PS3.5 Table 6.2-1, 7.1.2).
SHORT_VRS = frozenset(v.encode() for v in (
    "AE", "AS", "AT", "CS", "DA", "DS", "DT", "FL", "FD", "IS", "LO", "LT", "PN", "SH", "SL", "SS",
    "ST", "TM", "UI", "UL", "US"))
UNDEFINED_LENGTH = 0xFFFFFFFF
#: Item, Item Delimitation and Sequence Delimitation tags (PS3.5 7.5).
ITEM, ITEM_END, SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
PIXEL_DATA = 0x7FE00010

#: Valid VRs (PS3.5 Table 6.2-1) by their two bytes.
VR_NAMES = {v: v.decode() for v in LONG_VRS | SHORT_VRS}
#: Explicit-VR names with a 4-byte length (PS3.5 7.1.2).
LONG_VR_NAMES = frozenset(v.decode() for v in LONG_VRS)
#: (tag + VR + 2-byte length, 4-byte length, tag + 4-byte length) by byte order.
_HDR = {True: (_struct.Struct("<HH2sH"), _struct.Struct("<I"), _struct.Struct("<HHI")),
        False: (_struct.Struct(">HH2sH"), _struct.Struct(">I"), _struct.Struct(">HHI"))}


def _header_reader(implicit: bool, little: bool):
    """The element header reader for one encoding (see :func:`element_header`)."""
    short, u32, impl = (s.unpack_from for s in _HDR[little])

    if implicit:
        def read(data, pos: int) -> tuple[int, bytes | None, int, int]:
            group, elem, length = impl(data, pos)
            return (group << 16) | elem, None, pos + 8, length
        return read

    def read(data, pos: int, long_vrs=LONG_VRS) -> tuple[int, bytes | None, int, int]:
        group, elem, vr, length = short(data, pos)
        if group == 0xFFFE:
            return (group << 16) | elem, None, pos + 8, impl(data, pos)[2]
        if vr in long_vrs:
            return (group << 16) | elem, vr, pos + 12, u32(data, pos + 8)[0]
        return (group << 16) | elem, vr, pos + 8, length
    return read


#: Header readers by (implicit VR, little endian).
_READERS = {(i, le): _header_reader(i, le) for i in (True, False) for le in (True, False)}


class WalkError(Exception):
    """The bytes hold something the in-memory walker does not read (an unknown VR,
    a stray item, a value past the end, a missing delimiter)."""


class WalkTruncated(WalkError):
    """The bytes end before the data set does: a value runs past the end, or an
    undefined length (PS3.5 7.5) has no delimiter before the end (a truncated file)."""


def element_header(data, pos: int, implicit: bool, little: bool = True
                   ) -> tuple[int, bytes | None, int, int]:
    """``(tag, VR bytes or None, value start, value length)`` of the element header
    at ``pos`` (PS3.5 7.1.2 explicit VR, 7.1.3 implicit VR). Item and delimitation
    tags (group FFFE, PS3.5 7.5) have no VR and a 4-byte length in either
    encoding. The VR is not checked: callers decide what an unknown one means.
    Raises ``struct.error`` when the header runs past the end of ``data``."""
    return _READERS[implicit, little](data, pos)


def header_reader(implicit: bool, little: bool = True):
    """:func:`element_header` for one encoding, as a function of ``(data, pos)``
    (for loops over many elements)."""
    return _READERS[implicit, little]


def item_header(data, pos: int, little: bool = True) -> tuple[int, int]:
    """``(tag, length)`` of an item or delimitation item at ``pos`` (PS3.5 7.5)."""
    group, elem, length = _HDR[little][2].unpack_from(data, pos)
    return (group << 16) | elem, length


def walk_elements(data: bytes, pos: int, end: int, implicit: bool, in_item: bool = False,
                  little: bool = True) -> tuple[list[tuple], int]:
    """The data elements from ``pos`` to ``end`` (or to the Item Delimitation Item
    when ``in_item``): a list of ``(tag, vr, value_start, value_length, undefined,
    element_start)`` and the position after them. ``vr`` is None in implicit VR;
    an undefined-length value (PS3.5 7.5) runs to after its Sequence Delimitation
    Item (:func:`skip_undefined`)."""
    if little and not implicit:
        return _walk_explicit_le(data, pos, end, in_item)
    out = []
    append = out.append
    names = VR_NAMES
    read = _READERS[implicit, little]
    while pos < end:
        tag, vrb, vstart, length = read(data, pos)
        if tag >> 16 == 0xFFFE:
            if tag == ITEM_END and in_item:
                return out, pos + 8
            raise WalkError("unexpected item tag")
        vr = None if implicit else names.get(vrb)
        if vr is None and not implicit:
            raise WalkError("unknown VR")
        if length == UNDEFINED_LENGTH:
            vend = skip_undefined(data, vstart, end, implicit, little)
            append((tag, vr, vstart, vend - vstart, True, pos))
            pos = vend
        else:
            if vstart + length > end:
                raise WalkTruncated(f"the value of ({tag >> 16:04X},{tag & 0xFFFF:04X}) runs past the end "
                                f"({vstart + length - end} bytes missing)")
            append((tag, vr, vstart, length, False, pos))
            pos = vstart + length
    if in_item:
        raise WalkTruncated("an item has no delimiter before the end")
    return out, pos


#: Explicit VR little endian header (tag, VR, 2-byte length) and 4-byte length readers.
_SHORT_LE, _U32_LE = _HDR[True][0].unpack_from, _HDR[True][1].unpack_from
#: VR bytes -> (name, has a 4-byte length) (PS3.5 7.1.2).
_VR_INFO = {v: (v.decode(), v in LONG_VRS) for v in LONG_VRS | SHORT_VRS}


def _walk_explicit_le(data: bytes, pos: int, end: int, in_item: bool) -> tuple[list[tuple], int]:
    """:func:`walk_elements` for explicit VR little endian, the common encoding,
    with the header read inline (the same result, about a third less time)."""
    out = []
    append = out.append
    short, u32, info = _SHORT_LE, _U32_LE, _VR_INFO
    while pos < end:
        group, elem, vrb, length = short(data, pos)
        if group == 0xFFFE:
            if (group << 16) | elem == ITEM_END and in_item:
                return out, pos + 8
            raise WalkError("unexpected item tag")
        vi = info.get(vrb)
        if vi is None:
            raise WalkError("unknown VR")
        if vi[1]:
            length = u32(data, pos + 8)[0]
            vstart = pos + 12
        else:
            vstart = pos + 8
        if length == UNDEFINED_LENGTH:
            vend = skip_undefined(data, vstart, end, False, True)
            append(((group << 16) | elem, vi[0], vstart, vend - vstart, True, pos))
            pos = vend
        else:
            if vstart + length > end:
                raise WalkTruncated(f"the value of ({group:04X},{elem:04X}) runs past the end "
                                f"({vstart + length - end} bytes missing)")
            append(((group << 16) | elem, vi[0], vstart, length, False, pos))
            pos = vstart + length
    if in_item:
        raise WalkTruncated("an item has no delimiter before the end")
    return out, pos


def skip_undefined(data: bytes, pos: int, end: int, implicit: bool, little: bool = True) -> int:
    """End of an undefined-length value starting at ``pos`` (after its Sequence
    Delimitation Item): items of defined length are skipped, undefined ones walked."""
    while pos < end:
        tag, length = item_header(data, pos, little)
        if tag == SEQ_END:
            return pos + 8
        if tag != ITEM:
            raise WalkError("no item in undefined-length value")
        if length == UNDEFINED_LENGTH:
            _, pos = walk_elements(data, pos + 8, end, implicit, True, little)
        else:
            pos += 8 + length
    raise WalkTruncated("an undefined-length value has no delimiter before the end")


def sequence_items(data: bytes, vstart: int, vlen: int, implicit: bool,
                   little: bool = True) -> list[tuple[list[tuple], bool]]:
    """The items of a sequence value (PS3.5 7.5): ``(elements, item has undefined length)``."""
    items = []
    pos, end = vstart, vstart + vlen
    while pos < end:
        tag, length = item_header(data, pos, little)
        if tag == SEQ_END:
            break
        if tag != ITEM:
            raise WalkError("sequence without items")
        if length == UNDEFINED_LENGTH:
            elements, pos = walk_elements(data, pos + 8, end, implicit, True, little)
            items.append((elements, True))
        else:
            elements, _ = walk_elements(data, pos + 8, pos + 8 + length, implicit, False, little)
            items.append((elements, False))
            pos += 8 + length
    return items


def file_meta_elements(data: bytes, pos: int = 132) -> tuple[list[tuple], int]:
    """The File Meta Information elements (group 0002, always explicit VR little
    endian, PS3.10 7.1) from ``pos`` and where the data set starts."""
    out = []
    while pos + 8 <= len(data):
        if data[pos:pos + 2] != b"\x02\x00":
            break
        tag, vrb, vstart, length = element_header(data, pos, False, True)
        vr = VR_NAMES.get(vrb)
        if vr is None:
            raise WalkError("file meta VR")
        if length == UNDEFINED_LENGTH:
            raise WalkError("file meta length")
        out.append((tag, vr, vstart, length, False, pos))
        pos = vstart + length
    return out, pos


def data_set_encoding(data) -> tuple[int, str]:
    """Where a file's data set starts (after the preamble, ``DICM`` and the file
    meta, PS3.10 7.1) and its transfer syntax: (0002,0010), else explicit or
    implicit VR little endian as pydicom guesses from the first element. Raises
    :class:`WalkError` (or ``struct.error``) when the file meta does not walk."""
    pos = 132 if data[128:132] == b"DICM" else 4 if data[:4] == b"DICM" else 0
    meta, pos = file_meta_elements(data, pos)
    ts = next((bytes(data[e[2]:e[2] + e[3]]).decode("latin-1").strip("\0 ") for e in meta
               if e[0] == 0x00020010), None)
    if ts is None:  # no file meta: explicit or implicit VR little endian, as pydicom guesses
        vr = bytes(data[pos + 4:pos + 6])
        ts = "1.2.840.10008.1.2.1" if len(vr) == 2 and vr.isupper() and vr.isalpha() else TS_IMPLICIT_LE
    return pos, ts


def is_deflated(transfer_syntax: str) -> bool:
    """A deflated data set (PS3.5 A.5): its elements cannot be walked as bytes."""
    return transfer_syntax.startswith(TS_DEFLATED[0])


def top_level_elements(data: bytes) -> list[tuple] | None:
    """The top-level data elements of a file's bytes as :func:`walk_elements` gives
    them, or None: a deflated data set, bytes the walker does not read. Explicit or
    implicit VR, little or big endian, with or without the preamble and file meta."""
    try:
        pos, ts = data_set_encoding(data)
        if ts in TS_DEFLATED or is_deflated(ts):
            return None
        implicit, little = ts == TS_IMPLICIT_LE, ts != TS_EXPLICIT_BE
        return walk_elements(data, pos, len(data), implicit, False, little)[0]
    except (WalkError, _struct.error, UnicodeDecodeError):
        return None


def pixel_data_span(data: bytes, elements: list[tuple] | None = None) -> tuple[int, int] | None:
    """Byte range of the top-level Pixel Data (7FE0,0010) value of a file's bytes
    (PS3.5 7.1; encapsulated, PS3.5 A.4: up to its Sequence Delimitation Item), or
    None: no Pixel Data, an empty one, a deflated data set, bytes the walker does
    not read (see :func:`top_level_elements`; ``elements``: its result, when known)."""
    elements = top_level_elements(data) if elements is None else elements
    for tag, _vr, vstart, vlen, undefined, _ in elements or ():
        if tag == PIXEL_DATA and vlen > 0:
            return (vstart, vstart + vlen - 8) if undefined else (vstart, vstart + vlen)
    return None
