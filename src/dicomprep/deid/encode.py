"""Encode a de-identified data set as PS3.10 file bytes, and write files atomically.

:func:`encode_file` writes what ``Dataset.save_as(..., enforce_file_format=True)``
writes (PS3.10 7.1 file meta, then the data set in its transfer syntax, PS3.5
section 7), but copies raw elements that were only kept as bytes.
:func:`write_bytes` is the atomic write by rename without the per-file fsync
of :func:`dicomio.write_dataset` (the unit manifest, written last, marks completion).
"""
from __future__ import annotations

import io
import os
import struct
from pathlib import Path

from pydicom.charset import convert_encodings
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element, write_file_meta_info

from ..dicomio_walk import LONG_VR_NAMES, TS_DEFLATED, TS_EXPLICIT_BE, TS_IMPLICIT_LE, UNDEFINED_LENGTH

#: Deflated Explicit VR Little Endian (PS3.5 A.5): the one transfer syntax left to pydicom's writer.
TS_DEFLATED_LE = TS_DEFLATED[0]


def encode_elements(ds: Dataset, little: bool, implicit: bool, encodings) -> list[bytes]:
    """The encoded elements of ``ds`` (as :func:`pydicom.filewriter.write_dataset` writes them).

    Raw elements in the output encoding (the elements that were only kept) are
    emitted as header + original value bytes; everything else goes through
    pydicom's :func:`~pydicom.filewriter.write_data_element`.
    """
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
            elif elem.VR in LONG_VR_NAMES:
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
    meta = getattr(ds, "file_meta", None)
    ts = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
    if (not ts or ts == TS_DEFLATED_LE or ds.original_character_set != ds._character_set
            or ds.original_encoding != (ts == TS_IMPLICIT_LE, ts != TS_EXPLICIT_BE)):
        buf = io.BytesIO()
        ds.preamble = b"\x00" * 128  # the input's preamble may hold anything
        ds.save_as(buf, enforce_file_format=True)
        return buf.getvalue()
    fp = DicomBytesIO()
    fp.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(fp, meta, enforce_standard=True)
    encodings = ds.get("SpecificCharacterSet", "iso8859")
    encodings = convert_encodings(encodings or "iso8859")
    parts = encode_elements(ds, ts != TS_EXPLICIT_BE, ts == TS_IMPLICIT_LE, encodings)
    return fp.getvalue() + b"".join(parts)


def write_dataset(ds: Dataset, path: str | Path) -> None:
    """Write ``ds`` as a PS3.10 file atomically: a temporary name in the target
    folder, then a rename (as :func:`dicomio.write_dataset`, without the per-file
    fsync, which costs ~10 ms a file; a unit whose job dies is redone as a whole
    because its manifest is written last)."""
    write_bytes(encode_file(ds), path)


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

