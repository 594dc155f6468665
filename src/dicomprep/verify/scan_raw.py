"""Any other file: its bytes (un-gzipped when gzip-wrapped), in overlapping chunks."""
from __future__ import annotations

import gzip
import zlib
from pathlib import Path
from typing import Iterator

from ..dicomio import GZIP_MAGIC
from .matcher import Found, Matcher

RAW_CHUNK = 64 * 1024 * 1024
RAW_OVERLAP = 4096


def _raw_chunks(path: Path) -> Iterator[bytes]:
    """The file's bytes (un-gzipped when gzip-wrapped) in overlapping chunks."""
    with open(path, "rb") as probe:
        gz = probe.read(2) == GZIP_MAGIC
    opener = gzip.open if gz else open
    tail = b""
    try:
        with opener(path, "rb") as fh:
            while True:
                block = fh.read(RAW_CHUNK)
                if not block:
                    break
                yield tail + block
                tail = block[-RAW_OVERLAP:]
    except (OSError, EOFError, zlib.error):
        if gz:  # a corrupt .gz: its stored bytes are all there is
            yield from _raw_chunks_plain(path)
        else:
            raise


def _raw_chunks_plain(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as fh:
        tail = b""
        while block := fh.read(RAW_CHUNK):
            yield tail + block
            tail = block[-RAW_OVERLAP:]


def scan_raw(path: Path, matcher: Matcher, found: Found, label: str = "raw bytes") -> None:
    """Any file: its bytes (un-gzipped when gzip-wrapped), chunk by chunk."""
    kinds: set[str] = set()
    for chunk in _raw_chunks(path):
        kinds |= matcher.kinds(chunk)
    if kinds:
        found(label, kinds)


#: An embedded file in HTML/CSS/SVG (RFC 2397 data URL, base64-encoded).
