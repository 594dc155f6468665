"""HDF5 files: names, attributes and string datasets, then the bytes outside numeric storage."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import hdf5plugin  # noqa: F401  (registers Blosc: share/'s HDF5 files are Blosc-compressed by default)
import h5py
import numpy as np

from .matcher import Found, Matcher
from .scan_raw import RAW_CHUNK, scan_raw

def scan_hdf5(path: Path, matcher: Matcher, found: Found) -> None:
    """HDF5: names of groups/datasets, attributes at every level, string datasets."""

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
