"""Text files (YAML, text, bval/bvec, NRRD headers, ...): line-located search."""
from __future__ import annotations

from pathlib import Path

from .matcher import Found, Matcher

def scan_text(data: bytes, matcher: Matcher, found: Found, label: str) -> None:
    """Line-located search of a text file."""
    if not matcher.kinds(data):
        return
    for n, line in enumerate(data.splitlines(), 1):
        kinds = matcher.kinds(line)
        if kinds:
            found(f"{label} line {n}", kinds)


def scan_nrrd(path: Path, matcher: Matcher, found: Found) -> None:
    """NRRD header lines (up to the blank line); detached or raw data is not text."""
    data = path.read_bytes()
    end = data.find(b"\n\n")
    header = data if end < 0 else data[:end]
    scan_text(header, matcher, found, "NRRD header")


#: Raw scans read this much at a time (overlapping by RAW_OVERLAP bytes, longer
#: than any identifier), so a multi-GB HDF5 or .gz never sits in memory whole.
TEXT_SUFFIXES = {".yaml", ".yml", ".txt", ".md", ".log", ".bval", ".bvec",
                 ".xml", ".tsv_", ".js", ".css", ".svg", ".ini", ".cfg", ".toml"}
