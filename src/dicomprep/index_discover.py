"""Discovery: every file of the input tree, and the entries that cannot be walked.

Walks ``input_dir`` with :func:`os.scandir` (no symlinked folders followed).
Files with a clutter suffix (``dicomio.CLUTTER_SUFFIXES``: README .txt, .xml,
thumbnails, NIfTI ...) get a reason row in ``unreadable.csv`` and are not
parsed as images; everything else is read (:mod:`dicomprep.index_read`).
"""
from __future__ import annotations

import errno
import os
from dataclasses import dataclass

from .dicomio import CLUTTER_SUFFIXES


@dataclass
class FoundFile:
    """A regular file of the input tree (size and mtime: the cache key)."""

    path: str
    relpath: str
    size: int
    mtime_ns: int


@dataclass
class WalkError:
    """An entry of the input tree that could not be listed or followed."""

    path: str
    relpath: str
    reason: str


def _walk_reason(exc: OSError, is_link: bool) -> str:
    if exc.errno == errno.ELOOP:
        return "symbolic link loop (the link points back to itself or a link cycle); not followed"
    if is_link and exc.errno == errno.ENOENT:
        return "broken symbolic link (its target does not exist)"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "no permission to list or read this entry"
    return f"cannot list or read this entry: {exc.strerror or exc}"


def discover(input_dir: str | os.PathLike) -> tuple[list[FoundFile], list[WalkError]]:
    """Every regular file under ``input_dir`` (os.scandir, recursive, sorted
    by relpath) and the entries that could not be listed or followed (symlink
    loops, unreadable folders), each with a reason."""
    root = os.path.abspath(str(input_dir))
    found: list[FoundFile] = []
    errors: list[WalkError] = []
    stack = [(root, "")]
    while stack:
        folder, rel = stack.pop()
        try:
            it = os.scandir(folder)
        except OSError as exc:
            errors.append(WalkError(folder, rel.rstrip("/") or ".", _walk_reason(exc, False)))
            continue
        with it:
            for entry in it:
                try:
                    if entry.is_dir(follow_symlinks=False):
                        stack.append((entry.path, rel + entry.name + "/"))
                    elif entry.is_file():
                        st = entry.stat()
                        found.append(FoundFile(entry.path, rel + entry.name, st.st_size, st.st_mtime_ns))
                    elif entry.is_symlink() and not os.path.exists(entry.path):
                        try:
                            os.stat(entry.path)
                        except OSError as exc:
                            errors.append(WalkError(entry.path, rel + entry.name, _walk_reason(exc, True)))
                except OSError as exc:
                    errors.append(WalkError(entry.path, rel + entry.name, _walk_reason(exc, entry.is_symlink())))
    found.sort(key=lambda f: f.relpath)
    errors.sort(key=lambda e: e.relpath)
    return found, errors


def clutter_reason(relpath: str) -> str | None:
    """Reason row for files never parsed: clutter suffixes (README, XML ...)."""
    name = relpath.rsplit("/", 1)[-1]
    low = name.lower()
    if low.endswith(".gz"):
        low = low[:-3]
    ext = os.path.splitext(low)[1]
    if ext in CLUTTER_SUFFIXES or low in ("license", "readme", "dirfile", "thumbs.db", ".ds_store"):
        return f"not DICOM: clutter ({ext or name} file), skipped without parsing"
    return None
