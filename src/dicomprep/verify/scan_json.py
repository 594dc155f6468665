"""JSON files (dcm2niix sidecars, tables): keys and values, located by their JSON path."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from .identifiers import NUMERIC_COINCIDENCE_KINDS, numeric_keyword
from .matcher import Found, Matcher
from .scan_text import scan_text

def _walk_json(obj: Any, where: str, matcher: Matcher, found: Found, key: str = "") -> None:
    if isinstance(obj, dict):
        for k, value in obj.items():
            key_kinds = matcher.kinds(str(k))
            sub = f"{where}.{matcher.redact(str(k))}"
            if key_kinds:
                found(f"JSON key {sub}", key_kinds)
            _walk_json(value, sub, matcher, found, str(k))
    elif isinstance(obj, list):
        for i, value in enumerate(obj):
            _walk_json(value, f"{where}[{i}]", matcher, found, key)
    elif obj is not None:
        kinds = matcher.kinds(str(obj))
        if kinds and isinstance(obj, (int, float)) and not isinstance(obj, bool) and numeric_keyword(key):
            kinds = kinds - NUMERIC_COINCIDENCE_KINDS   # SeriesNumber 123456 is no PatientID
        if kinds:
            found(f"JSON value {where or '.'}", kinds)


def scan_json(path: Path, matcher: Matcher, found: Found) -> None:
    raw = path.read_bytes()
    if not matcher.kinds(raw):
        # JSON escapes (\u00e9) hide non-ASCII values from a byte search: parse too
        if not re.search(rb"\\u[0-9a-fA-F]{4}", raw):
            return
    try:
        obj = json.loads(raw.decode("utf-8", "replace"))
    except ValueError:
        scan_text(raw, matcher, found, "JSON")
        return
    _walk_json(obj, "", matcher, found)
