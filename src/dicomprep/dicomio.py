"""The one home of DICOM file reading and writing.

Reading is tolerant of what real exports contain (PS3.10 files with or without
the 128-byte preamble and ``DICM`` prefix, gzip-wrapped files such as
``IM_0001.gz`` or ``*.dcm.gz``, no extension).  Every write goes through
:func:`atomic_write`: data goes to a temporary name in the target folder and is
renamed into place, so an interrupted run never leaves a half-written file that
looks finished.
"""
from __future__ import annotations

import contextlib
import gzip
import io
import os
import tempfile
from pathlib import Path
from typing import IO, Iterator

import pydicom
from pydicom.dataset import Dataset, FileDataset
from pydicom.errors import InvalidDicomError

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
            source, force=True, stop_before_pixels=stop_before_pixels, specific_tags=specific_tags
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


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file beside ``path``; rename it onto ``path`` on success.

    On any exception the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
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
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def write_dataset(ds: Dataset, path: str | os.PathLike) -> None:
    """Write ``ds`` as a PS3.10 file (preamble + file meta) atomically."""
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    with atomic_write(path) as fh:
        fh.write(buf.getvalue())


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write a text file atomically (UTF-8)."""
    with atomic_write(path, "w") as fh:
        fh.write(text)
