"""Tables (CSV, TSV, Parquet): column names, cells and Parquet metadata."""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any, Iterable

import pyarrow.parquet as pq

from .matcher import Found, Matcher
from .scan_raw import scan_raw

def _cell_scan(header: list[str], rows: Iterable[Iterable[Any]], label: str,
               matcher: Matcher, found: Found) -> None:
    safe = [matcher.redact(str(h)) for h in header]
    for c, name in enumerate(header):
        kinds = matcher.kinds(str(name))
        if kinds:
            found(f"{label} column name {c + 1}", kinds)
    for r, row in enumerate(rows, 1):
        for c, cell in enumerate(row):
            if cell is None:
                continue
            kinds = matcher.kinds(str(cell))
            if kinds:
                col = safe[c] if c < len(safe) else str(c + 1)
                found(f"{label} row {r} column {col}", kinds)


def scan_table_text(path: Path, matcher: Matcher, found: Found) -> None:
    """CSV/TSV: column names and cells."""
    raw = path.read_bytes()
    if not matcher.kinds(raw):
        return
    text = raw.decode("utf-8", "replace")
    delim = "\t" if path.suffix.lower() in (".tsv", ".tab") else ","
    rows = list(csv.reader(io.StringIO(text), delimiter=delim))
    if not rows:
        return
    _cell_scan(rows[0], rows[1:], path.suffix.lstrip(".").upper(), matcher, found)


def scan_parquet(path: Path, matcher: Matcher, found: Found) -> None:
    """Parquet: column names, every cell (as text) and the key-value metadata."""
    try:
        table = pq.read_table(path)
    except Exception:
        scan_raw(path, matcher, found)
        return
    meta = table.schema.metadata or {}
    for key, value in meta.items():
        kinds = matcher.kinds(key + b"=" + value)
        if kinds:
            found("Parquet schema metadata", kinds)
    columns = [table.column(i).to_pylist() for i in range(table.num_columns)]
    # one big search first: most tables are clean
    blob = "\x1f".join(table.column_names) + "\x1f" + "\x1f".join(
        str(v) for col in columns for v in col if v is not None)
    if not matcher.kinds(blob):
        return
    _cell_scan(table.column_names, zip(*columns) if columns else [], "Parquet", matcher, found)
