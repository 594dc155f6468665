"""NIfTI files: header text fields, extensions, and the header bytes."""
from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib

from .matcher import Found, Matcher
from .scan_raw import scan_raw

def scan_nifti(path: Path, matcher: Matcher, found: Found) -> None:
    """NIfTI-1/2 header fields (descrip, aux_file, intent_name, db_name), extensions,
    and the raw bytes before the voxel data."""
    located: set[str] = set()
    outer = found

    def found(where: str, kinds: set[str]) -> None:  # noqa: F811 - records what was located
        located.update(kinds)
        outer(where, kinds)

    try:
        img = nib.load(str(path))
        hdr = img.header
    except Exception:
        scan_raw(path, matcher, found)
        return
    for fld in ("descrip", "aux_file", "intent_name", "db_name"):
        try:
            value = hdr[fld]
        except Exception:
            continue
        data = value.tobytes() if hasattr(value, "tobytes") else bytes(str(value), "utf-8")
        kinds = matcher.kinds(data)
        if kinds:
            found(f"NIfTI {fld}", kinds)
    for i, ext in enumerate(getattr(hdr, "extensions", []) or []):
        try:
            content = ext.get_content()
            data = content if isinstance(content, bytes) else ext._mangle(content)
        except Exception:
            data = b""
        if not isinstance(data, (bytes, bytearray)):
            data = str(data).encode("utf-8", "replace")
        kinds = matcher.kinds(data)
        if kinds:
            found(f"NIfTI extension {i} (code {ext.get_code()})", kinds)
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as fh:
            head = fh.read(max(int(hdr.get("vox_offset", 352) or 352), 352))
    except Exception:
        head = b""
    kinds = matcher.kinds(head) - located
    if kinds:
        outer("NIfTI header bytes", kinds)
