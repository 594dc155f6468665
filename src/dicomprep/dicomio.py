"""The one home of DICOM file reading and writing.

Reading is tolerant of what real exports contain (PS3.10 files with or without
the 128-byte preamble and ``DICM`` prefix, gzip-wrapped files such as
``IM_0001.gz`` or ``*.dcm.gz``, no extension).  Every write goes through
:func:`atomic_write`: data goes to a temporary name in the target folder and is
renamed into place, so an interrupted run never leaves a half-written file that
looks finished. The index's lean header reader (:func:`read_header_fields`)
streams a file through the shared byte walker's element header reader
(:mod:`dicomprep.dicomio_walk`, PS3.5 section 7).
"""
from __future__ import annotations

import contextlib
import gzip
import io
import os
import struct as _struct
import tempfile
import zlib
from pathlib import Path
from typing import IO, Any, Iterator

import pydicom
from pydicom.dataset import Dataset, FileDataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue

from .dicomio_walk import (ITEM, ITEM_END, LONG_VRS, PIXEL_DATA, SEQ_END, SHORT_VRS, TS_DEFLATED, TS_EXPLICIT_BE,
                           TS_IMPLICIT_LE, UNDEFINED_LENGTH, element_header, header_reader, item_header)
from .errors import UnreadableDicom

GZIP_MAGIC = b"\x1f\x8b"
#: Files that are never DICOM however they are named (clutter in exports).
CLUTTER_SUFFIXES = {
    ".txt", ".md", ".xml", ".json", ".csv", ".html", ".htm", ".pdf", ".jpg", ".jpeg",
    ".png", ".gif", ".bmp", ".ini", ".log", ".nii", ".bval", ".bvec", ".nrrd", ".zip",
    ".py", ".sh", ".yaml", ".yml", ".db", ".ds_store", ".exe", ".dll", ".inf",
}


def is_gzip(path: str | os.PathLike) -> bool:
    """True when the file starts with the gzip magic number (RFC 1952)."""
    with open(path, "rb") as fh:
        return fh.read(2) == GZIP_MAGIC


def read_bytes(path: str | os.PathLike, limit: int | None = None) -> bytes:
    """Return the file's bytes, transparently un-gzipped; at most ``limit`` bytes."""
    with open(path, "rb") as fh:
        head = fh.read(2)
        fh.seek(0)
        if head == GZIP_MAGIC:
            with gzip.GzipFile(fileobj=fh) as gz:
                return gz.read() if limit is None else gz.read(limit)
        return fh.read() if limit is None else fh.read(limit)


def looks_like_dicom(head: bytes) -> bool:
    """Cheap test on the leading bytes: PS3.10 ``DICM`` at 128, or a plausible
    first data element of a preamble-less file (group 0002 or 0008, LE)."""
    if len(head) >= 132 and head[128:132] == b"DICM":
        return True
    if head[:4] == b"DICM":
        return True
    if len(head) >= 8:
        group = int.from_bytes(head[0:2], "little")
        element = int.from_bytes(head[2:4], "little")
        if group in (0x0002, 0x0008) and element < 0x0100:
            return True
    return False


def read_dataset(
    path: str | os.PathLike,
    *,
    stop_before_pixels: bool = False,
    specific_tags: list | None = None,
    defer_size: int | None = None,
) -> FileDataset:
    """Read one DICOM file (gzip-wrapped or not, preamble or not).

    Raises :class:`UnreadableDicom` with a one-sentence reason instead of the
    library's exception, so callers can record it in ``unreadable.csv``.
    """
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise UnreadableDicom("empty file (0 bytes)")
        with open(path, "rb") as fh:
            head = fh.read(2)
        if head == GZIP_MAGIC:
            try:
                data = read_bytes(path)
            except (OSError, EOFError) as exc:
                raise UnreadableDicom(f"gzip-wrapped file is corrupt or truncated ({exc})") from None
            source: str | IO[bytes] = io.BytesIO(data)
        else:
            source = str(path)
        ds = pydicom.dcmread(
            source, force=True, stop_before_pixels=stop_before_pixels, specific_tags=specific_tags,
            defer_size=defer_size,
        )
    except UnreadableDicom:
        raise
    except PermissionError:
        raise UnreadableDicom("no permission to read the file") from None
    except IsADirectoryError:
        raise UnreadableDicom("is a directory") from None
    except (InvalidDicomError, EOFError) as exc:
        raise UnreadableDicom(f"not a DICOM file or truncated header ({exc})") from None
    except Exception as exc:  # pydicom raises many types on corrupt input
        raise UnreadableDicom(f"cannot parse DICOM header: {type(exc).__name__}: {exc}") from None
    if len(ds) == 0 and not getattr(ds, "file_meta", None):
        raise UnreadableDicom("not a DICOM file (no data elements)")
    if "SOPClassUID" not in ds and "MediaStorageSOPClassUID" not in getattr(ds, "file_meta", Dataset()):
        if specific_tags is None:
            raise UnreadableDicom("not a DICOM file (no SOP Class UID)")
    return ds


def _umask_mode() -> int:
    """File mode a plain ``open()`` would give (0666 less the umask); mkstemp uses 0600."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb", *, fsync: bool = True) -> Iterator[IO]:
    """Open a temporary file beside ``path``; rename it onto ``path`` on success.

    On any exception the temporary file is removed and ``path`` is untouched.
    ``fsync=False`` skips flushing to disk (many small files whose completion a
    manifest written last records; a killed process still leaves no partial file).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            if fsync:
                os.fsync(fh.fileno())
        os.chmod(tmp, _umask_mode())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` for libraries that write by name
    (nibabel, h5py, pandas); rename it onto ``path`` when the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".part" + suffix, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.exists():
            os.chmod(tmp_path, _umask_mode())
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def write_dataset(ds: Dataset, path: str | os.PathLike, *, enforce_file_format: bool = True) -> None:
    """Write ``ds`` atomically: as a PS3.10 file (preamble + file meta), or with
    ``enforce_file_format=False`` as it was read (a faithful copy)."""
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=enforce_file_format)
    with atomic_write(path) as fh:
        fh.write(buf.getvalue())


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write a text file atomically (UTF-8)."""
    with atomic_write(path, "w") as fh:
        fh.write(text)


# ---------------------------------------------------------------------------
# The lean streaming header reader of the index (read_header_fields): element
# headers are read by the shared byte walker's reader (dicomio_walk.element_header,
# PS3.5 section 7) over a forward buffer of the file.
# ---------------------------------------------------------------------------

_TEXT_VRS = frozenset(("SH", "LO", "ST", "LT", "UC", "UT", "PN"))
_BINARY_FMT = {"US": "H", "SS": "h", "UL": "I", "SL": "i", "FL": "f", "FD": "d",
               "UV": "Q", "SV": "q", "AT": "I"}
#: SpecificCharacterSet (0008,0005) values decoded without pydicom (PS3.3 C.12.1.1.2).
_CHARSETS = {"": "iso8859", "ISO_IR 6": "iso8859", "ISO_IR 100": "latin_1",
             "ISO_IR 192": "utf_8", "GB18030": "GB18030", "GBK": "GBK"}
_PER_FRAME_FG = 0x52009230
_CHUNK = 16384


class NeedsFullParse(Exception):
    """The walker met something it leaves to pydicom (deflated transfer syntax,
    ISO 2022 character sets, an undefined-length UN element, odd encodings)."""


class HeaderFields(dict):
    """Keyword -> value of the wanted attributes, plus what the walk saw:

    ``transfer_syntax``, ``has_per_frame_groups`` (5200,9230 present),
    ``pixel_data_end`` (byte offset where (7FE0,0010) ends in the un-gzipped
    stream; None when undefined length or absent), ``has_pixel_data``,
    ``stream_end`` (bytes read when the walk hit the end of the stream, else None),
    ``stopped_early`` (the walk stopped at a tag beyond ``stop_tag``),
    ``stop_pos`` (byte offset of that tag), ``gzip`` (file is gzip-wrapped),
    ``stream_size`` (size of the DICOM stream: the file size, or the gzip ISIZE
    trailer, which is meaningless when the .gz file is truncated),
    ``compressed_size`` (gzip only: the file size).
    """

    transfer_syntax: str = ""
    has_per_frame_groups: bool = False
    has_pixel_data: bool = False
    pixel_data_end: int | None = None
    stream_end: int | None = None
    stopped_early: bool = False
    stop_pos: int | None = None
    gzip: bool = False
    stream_size: int = 0
    compressed_size: int = 0


class _GzReader:
    """Minimal reader of a gzip member (RFC 1952) with zlib: no CRC check and
    no Python-level buffering, for reading a header's worth of bytes fast.
    A truncated member just ends early; corrupt data raises ``zlib.error``."""

    __slots__ = ("raw", "dec", "done", "produced")

    def __init__(self, raw):
        self.raw = raw
        self.dec = zlib.decompressobj(31)
        self.done = False
        self.produced = 0

    def read(self, n: int) -> bytes:
        out = []
        got = 0
        dec = self.dec
        while got < n and not self.done:
            src = dec.unconsumed_tail
            if not src:
                src = self.raw.read(65536)
                if not src:
                    self.done = True
                    break
            chunk = dec.decompress(src, n - got)
            if dec.eof:
                self.done = True
            if chunk:
                out.append(chunk)
                got += len(chunk)
        self.produced += got
        return b"".join(out)

    def drain(self) -> tuple[int, bool]:
        """Decompress the rest (discarding it): total stream size and whether
        the member ended properly (False: truncated gzip file)."""
        dec = self.dec
        while not dec.eof:
            src = dec.unconsumed_tail or self.raw.read(1 << 20)
            if not src:
                break
            self.produced += len(dec.decompress(src, 1 << 22))
        return self.produced, dec.eof

    def close(self):
        pass


class _Stream:
    """Forward reader over a plain or gzip-wrapped file, buffering what the
    walker looks at and seeking (plain files) over large skipped values."""

    __slots__ = ("fh", "raw", "buf", "base", "eof", "gz", "end")

    def __init__(self, path):
        self.raw = open(path, "rb")
        head = self.raw.read(_CHUNK)
        self.gz = head[:2] == GZIP_MAGIC
        if self.gz:
            self.raw.seek(0)
            self.fh = _GzReader(self.raw)
            head = self.fh.read(_CHUNK)
        else:
            self.fh = self.raw
        self.buf = head
        self.base = 0
        self.eof = len(head) < _CHUNK
        # stream length: the file size, or for gzip once the end is reached
        self.end = os.fstat(self.raw.fileno()).st_size if not self.gz else (len(head) if self.eof else None)

    def close(self):
        if self.gz:
            self.fh.close()
        self.raw.close()

    def ensure(self, pos: int, n: int) -> bool:
        """Make bytes [pos, pos+n) available in ``buf``; False at end of stream."""
        end = pos + n
        have = self.base + len(self.buf)
        if end <= have:
            return pos >= self.base
        if self.eof:
            return False
        if not self.gz and pos - have > _CHUNK:
            self.fh.seek(pos)
            data = self.fh.read(max(n, _CHUNK))
            self.buf, self.base = data, pos
            self.eof = len(data) < max(n, _CHUNK)
            return len(data) >= n
        if pos < self.base:
            raise NeedsFullParse("walker went backwards")
        if pos > have:
            # jump over bytes never looked at
            gap = pos - have
            if self.gz:
                while gap > 0:
                    skipped = len(self.fh.read(min(gap, 1 << 20)))
                    if not skipped:
                        self.eof = True
                        self.end = pos - gap
                        return False
                    have += skipped
                    gap -= skipped
            else:
                self.fh.seek(pos)
            self.buf, self.base, have = b"", pos, pos
        # keep the tail from pos on, append what is missing
        keep = self.buf[pos - self.base:]
        want = max(end - have, _CHUNK)
        data = self.fh.read(want)
        if len(data) < want:
            self.eof = True
            if self.gz:
                self.end = have + len(data)
        self.buf = keep + data
        self.base = pos
        return self.base + len(self.buf) >= end


def _skip_undefined(st: _Stream, pos: int, implicit: bool, little: bool) -> int:
    """Skip an undefined-length sequence value starting at ``pos`` (its first
    item); return the position after the Sequence Delimitation Item (PS3.5 7.5)."""
    while True:
        if not st.ensure(pos, 8):
            raise EOFError("stream ends inside a sequence")
        tag, length = item_header(st.buf, pos - st.base, little)
        pos += 8
        if tag == SEQ_END:
            return pos
        if tag != ITEM:
            raise NeedsFullParse(f"unexpected tag {tag:08X} in a sequence")
        if length != UNDEFINED_LENGTH:
            pos += length
            continue
        # undefined-length item: walk its elements to the Item Delimitation
        while True:
            if not st.ensure(pos, 8):
                raise EOFError("stream ends inside a sequence item")
            if item_header(st.buf, pos - st.base, little)[0] == ITEM_END:
                pos += 8
                break
            pos, length, _vr = _element_header(st, pos, implicit, little)
            if length == UNDEFINED_LENGTH:
                pos = _skip_undefined(st, pos, implicit, little)
            else:
                pos += length


def _element_header(st: _Stream, pos: int, implicit: bool, little: bool) -> tuple:
    """The element header at ``pos`` (:func:`dicomio_walk.element_header`) made
    available in the stream: ``(value_pos, length, VR bytes or None)``."""
    if not st.ensure(pos, 12):
        if not st.ensure(pos, 8):
            raise EOFError("stream ends inside an element header")
    try:
        _tag, vr, vpos, length = element_header(st.buf, pos - st.base, implicit, little)
    except _struct.error:
        raise EOFError("stream ends inside an element header") from None
    vpos += st.base
    if implicit:
        return vpos, length, None
    if vr is None or not (65 <= vr[0] <= 90 and 65 <= vr[1] <= 90):
        raise NeedsFullParse("not explicit VR where expected")
    if vr == b"UN" and length == UNDEFINED_LENGTH:
        raise NeedsFullParse("undefined-length UN element")
    return vpos, length, vr


def _decode_value(raw: bytes, vr: str, little: bool, encoding: str):
    """Value of a wanted element, pydicom-compatible before normalisation:
    text as ``str`` (backslashes kept), binary numbers as a tuple."""
    fmt = _BINARY_FMT.get(vr)
    if fmt is not None:
        size = _struct.calcsize(fmt)
        n = len(raw) // size
        return _struct.unpack(("<" if little else ">") + fmt * n, raw[:n * size])
    if vr in ("OB", "OW", "UN", "SQ", "OF", "OD", "OL", "OV"):
        return raw
    enc = encoding if vr in _TEXT_VRS else "iso8859"
    return raw.decode(enc, errors="replace")


def read_header_fields(
    path: str | os.PathLike,
    wanted: dict[int, tuple[str, str]],
    *,
    stop_tag: int = PIXEL_DATA,
    private: dict[int, dict[str, dict[int, tuple[str, str]]]] | None = None,
) -> HeaderFields:
    """Read the wanted top-level attributes of one file without pydicom.

    ``private`` asks for private attributes (PS3.5 7.8.1) by group, private
    creator and element low byte: ``{0x0019: {"SIEMENS MR HEADER": {0x0C:
    ("keyword", "IS")}}}`` reads (0019,xx0C) of the block that creator reserved.

    ``wanted`` maps a tag (``0x00100020``) to ``(keyword, VR)``; the VR is used
    for implicit-VR files. The walk (PS3.5 section 7) handles files with or
    without preamble, gzip-wrapped files, explicit and implicit VR little
    endian and explicit VR big endian; it skips unwanted values by their length
    (sequences of undefined length by their delimiters) without decoding, and
    stops at (7FE0,0010) Pixel Data or at the first tag beyond ``stop_tag``.
    File meta (group 0002) values are read when wanted.

    Raises :class:`NeedsFullParse` for what it does not handle (the caller then
    uses pydicom), :class:`EOFError` when the stream ends inside an element
    (truncated file), :class:`UnreadableDicom` when the bytes are not DICOM.
    """
    try:
        st = _Stream(path)
    except PermissionError:
        raise UnreadableDicom("no permission to read the file") from None
    except IsADirectoryError:
        raise UnreadableDicom("is a directory") from None
    try:
        out = _walk(st, wanted, stop_tag, private or {})
        out.gzip = st.gz
        if st.gz:
            # ISIZE trailer (RFC 1952 2.3.1): the stream size mod 2**32 of an intact
            # member; garbage for a truncated one (callers check its plausibility)
            if st.fh.done and not st.fh.dec.eof:
                raise EOFError("the gzip stream ends early (truncated .gz file)")
            st.raw.seek(0, os.SEEK_END)
            out.compressed_size = st.raw.tell()
            st.raw.seek(-4, os.SEEK_END)
            out.stream_size = int.from_bytes(st.raw.read(4), "little")
        else:
            out.stream_size = st.end
        return out
    except (OSError, gzip.BadGzipFile, zlib.error) as exc:
        if isinstance(exc, PermissionError):
            raise UnreadableDicom("no permission to read the file") from None
        raise UnreadableDicom(f"gzip-wrapped file is corrupt or truncated ({exc})") from None
    finally:
        st.close()


def _walk(st: _Stream, wanted: dict, stop_tag: int, private: dict) -> HeaderFields:
    out = HeaderFields()
    buf = st.buf
    if len(buf) == 0:
        raise UnreadableDicom("empty file (0 bytes)")
    if buf[128:132] == b"DICM":
        pos = 132
    elif buf[:4] == b"DICM":
        pos = 4
    else:
        pos = 0
        if not looks_like_dicom(buf):
            raise UnreadableDicom("not a DICOM file (no DICM prefix and no plausible first element)")
    # File meta information: always explicit VR little endian (PS3.10 7.1).
    ts = None
    while st.ensure(pos, 8):
        tag = item_header(st.buf, pos - st.base)[0]
        if tag >> 16 != 2:
            break
        vpos, length, _vr = _element_header(st, pos, False, True)
        if length == UNDEFINED_LENGTH:
            raise NeedsFullParse("undefined length in file meta")
        if not st.ensure(vpos, length):
            raise EOFError("stream ends inside the file meta")
        if tag == 0x00020010 or tag in wanted:
            raw = st.buf[vpos - st.base:vpos - st.base + length]
            val = raw.decode("iso8859").rstrip("\0 ")
            if tag == 0x00020010:
                ts = val
            if tag in wanted:
                out[wanted[tag][0]] = val
        pos = vpos + length
    if ts is None:
        # No file meta: guess explicit vs implicit VR little endian like pydicom.
        if not st.ensure(pos, 8):
            raise UnreadableDicom("not a DICOM file (too short)")
        vr = st.buf[pos - st.base + 4:pos - st.base + 6]
        explicit = len(vr) == 2 and 65 <= vr[0] <= 90 and 65 <= vr[1] <= 90
        ts = "1.2.840.10008.1.2.1" if explicit else TS_IMPLICIT_LE
    out.transfer_syntax = ts
    if ts in TS_DEFLATED or ts.startswith("1.2.840.10008.1.2.1.99"):
        raise NeedsFullParse("deflated transfer syntax")
    implicit = ts == TS_IMPLICIT_LE
    little = ts != TS_EXPLICIT_BE
    read = header_reader(implicit, little)
    encoding = "iso8859"
    creators: dict[tuple[int, int], str] = {}
    while True:
        buf = st.buf
        off = pos - st.base
        if off + 12 > len(buf):
            if not st.ensure(pos, 12) and not st.ensure(pos, 8):
                if st.ensure(pos, 1):
                    raise EOFError("stream ends inside an element header")
                if st.end is not None and pos > st.end:
                    raise EOFError("stream ends inside a data element's value")
                out.stream_end = pos
                break
            buf = st.buf
            off = pos - st.base
        tag = item_header(buf, off, little)[0]
        g, el = tag >> 16, tag & 0xFFFF
        if tag >= stop_tag or tag == PIXEL_DATA:
            if tag == PIXEL_DATA:
                vpos, length, _vr = _element_header(st, pos, implicit, little)
                out.has_pixel_data = True
                out.pixel_data_end = None if length == UNDEFINED_LENGTH else vpos + length
            else:
                out.stopped_early = True
            out.stop_pos = pos
            break
        try:
            _tag, vr, vpos, length = read(buf, off)
        except _struct.error:         # a 4-byte length past the end of the stream
            raise EOFError("stream ends inside an element header") from None
        vpos += st.base
        if vr is not None:
            if vr in LONG_VRS:
                if length == UNDEFINED_LENGTH and vr == b"UN":
                    raise NeedsFullParse("undefined-length UN element")
            elif vr not in SHORT_VRS:
                raise NeedsFullParse(f"unknown VR {vr!r} at ({g:04X},{el:04X})")
        elif not implicit:            # an item tag outside a sequence (PS3.5 7.5)
            raise NeedsFullParse(f"unknown VR {buf[off + 4:off + 6]!r} at ({g:04X},{el:04X})")
        if length == UNDEFINED_LENGTH:
            if tag == _PER_FRAME_FG:
                out.has_per_frame_groups = True
            pos = _skip_undefined(st, vpos, implicit, little)
            continue
        if tag == _PER_FRAME_FG:
            out.has_per_frame_groups = True
        spec = wanted.get(tag)
        if spec is None and g & 1 and g in private:
            if 0x0010 <= el <= 0x00FF:
                if not st.ensure(vpos, length):
                    raise EOFError(f"stream ends inside element ({g:04X},{el:04X})")
                creators[(g, el)] = st.buf[vpos - st.base:vpos - st.base + length].decode(
                    "iso8859").strip("\0 ")
            elif el >= 0x1000:
                spec = private[g].get(creators.get((g, el >> 8)), {}).get(el & 0xFF)
        if spec is not None or tag == 0x00080005:
            if not st.ensure(vpos, length):
                raise EOFError(f"stream ends inside element ({g:04X},{el:04X})")
            raw = st.buf[vpos - st.base:vpos - st.base + length]
            if tag == 0x00080005:
                cs = raw.decode("iso8859").strip("\0 ")
                if cs not in _CHARSETS:
                    raise NeedsFullParse(f"character set {cs!r}")
                encoding = _CHARSETS[cs]
            if spec is not None:
                vr_name = vr.decode("ascii") if vr is not None else spec[1]
                out[spec[0]] = _decode_value(raw, vr_name, little, encoding)
        pos = vpos + length
    return out


def uncompressed_size(path: str | os.PathLike) -> int:
    """Size of the DICOM stream: the file size, or for a gzip member the ISIZE
    trailer (RFC 1952 section 2.3.1, size modulo 2**32)."""
    with open(path, "rb") as fh:
        head = fh.read(2)
        if head != GZIP_MAGIC:
            fh.seek(0, os.SEEK_END)
            return fh.tell()
        fh.seek(-4, os.SEEK_END)
        return int.from_bytes(fh.read(4), "little")


# --------------------------------------------------------------------------- values as text

def _missing(value: Any) -> bool:
    """None, a float NaN, pandas ``NA`` / ``NaT`` (an empty table cell)."""
    if value is None:
        return True
    try:
        return bool(value != value)
    except (TypeError, ValueError):   # pandas NA: its comparisons are NA, whose truth is undefined
        return type(value).__name__ == "NAType"


def value_text(value: Any) -> str:
    """A DICOM value (or a table cell holding one) as text.

    Multi-valued elements (pydicom ``MultiValue``, a list, tuple or array) are
    joined with the backslash, as in the encoded value field (PS3.5 6.2, Value
    Multiplicity; PS3.5 6.4). A PersonName (VR PN, PS3.5 6.2.1) gives its
    encoded form, its component groups joined by ``=`` and components by ``^``
    (``Doe^John``). Missing values (None, NaN, pandas NA, an empty cell) give
    ``''``; anything else (numbers, UIDs, bytes) is ``str(value)``, unstripped.
    """
    if _missing(value):
        return ""
    if isinstance(value, (list, tuple, MultiValue)) or getattr(value, "ndim", 0) >= 1:
        return "\\".join(str(v) for v in value)
    return str(value)
