"""Collect the identifiers the private index knows (:func:`collect_identifiers`).

From ``private/index/instances.parquet`` (docs/contracts.md: names, IDs, dates,
times, UIDs, institution, station, serial numbers and the layout's folder
names) and from the headers of the indexed input files themselves, cached per
file (path, size, mtime) in ``private/index/identifiers.json``.
"""
from __future__ import annotations

import json
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import pandas as pd

from ..dicomio import read_dataset, write_text
from ..errors import DicomprepError
from .identifiers import FOLDER_SOURCES, INDEX_COLUMNS, IdentifierSet, folder_identifiers, header_identifiers

CACHE_VERSION = 4

def _file_header_identifiers(path: str) -> list[tuple[str, str]]:
    ds = read_dataset(path, stop_before_pixels=True)
    return header_identifiers(ds)


def _header_identifiers_or_error(path: str) -> tuple[list[tuple[str, str]], str | None]:
    try:
        return _file_header_identifiers(path), None
    except Exception as exc:  # unreadable now: the index row still gave its columns
        return [], f"{type(exc).__name__}: {exc}"


def collect_identifiers(out_dir: str | os.PathLike, *, read_headers: bool = True,
                        log: Any = None, workers: int = 1) -> IdentifierSet:
    """Every identifier the private index knows (see module docstring).

    Reads ``OUT/private/index/instances.parquet`` and, with ``read_headers``,
    the header of every indexed input file (cached in
    ``OUT/private/index/identifiers.json`` keyed by path, size and mtime_ns).
    """
    out_dir = Path(out_dir)
    index_path = out_dir / "private" / "index" / "instances.parquet"
    if not index_path.is_file():
        raise DicomprepError(
            f"the leak verifier needs the private index {index_path}; run the index stage first "
            "(or `dicomprep run`) so the verifier knows what to look for")
    table = pd.read_parquet(index_path)
    ids = IdentifierSet()
    for col, kind in INDEX_COLUMNS.items():
        if col in table.columns:
            source = FOLDER_SOURCES.get(col, f"attribute {col}")
            for value in table[col].dropna().unique():
                ids.add(kind, value, source)
    folder_cols = [c for c in ("orig_group", "orig_sequence", "orig_subject", "orig_scan", "orig_unit")
                   if c in table.columns]
    if folder_cols:
        for row in table[folder_cols].drop_duplicates().to_dict("records"):
            ids.update(folder_identifiers(row))
    if read_headers and "path" in table.columns:
        ids.update(_cached_header_identifiers(out_dir, table, log, workers))
    return ids


def _cached_header_identifiers(out_dir: Path, table: Any, log: Any, workers: int = 1) -> list[tuple[str, str, str]]:
    cache_path = out_dir / "private" / "index" / "identifiers.json"
    cache: dict = {}
    if cache_path.is_file():
        try:
            loaded = json.loads(cache_path.read_text(encoding="utf-8"))
            if loaded.get("version") == CACHE_VERSION:
                cache = loaded.get("files", {})
        except (OSError, ValueError):
            cache = {}
    files: dict = {}
    stale: list[tuple[str, os.stat_result]] = []
    for path in table["path"].dropna().unique():
        path = str(path)
        try:
            st = os.stat(path)
        except OSError:  # input moved away: keep what was read before
            if path in cache:
                files[path] = cache[path]
            continue
        entry = cache.get(path)
        if entry and entry.get("size") == st.st_size and entry.get("mtime_ns") == st.st_mtime_ns:
            files[path] = entry
        else:
            stale.append((path, st))
    paths = [p for p, _ in stale]
    if workers > 1 and len(paths) > 64:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(_header_identifiers_or_error, paths, chunksize=32))
    else:
        results = [_header_identifiers_or_error(p) for p in paths]
    for (path, st), (found, error) in zip(stale, results):
        if error and log:
            log.warning("identifiers: cannot read header of %s (%s)", path, error)
        files[path] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ids": [list(p) for p in found]}
    changed = bool(stale)
    pairs = {tuple(p) for entry in files.values() for p in entry["ids"]}
    if changed or set(files) != set(cache):
        write_text(cache_path, json.dumps({"version": CACHE_VERSION, "files": files}))
    return sorted(pairs)
