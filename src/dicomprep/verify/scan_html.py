"""HTML (the QC report): text, with embedded data URIs decoded and scanned as what they hold."""
from __future__ import annotations

import base64
import re
from pathlib import Path

from .matcher import Found, Matcher
from .scan_png import scan_png_bytes
from .scan_text import scan_text

DATA_URI = re.compile(rb"data:([a-z0-9.+/-]*)(?:;[a-z0-9=.-]+)*;base64,([a-z0-9+/=\s]+)", re.IGNORECASE)


def scan_html(path: Path, matcher: Matcher, found: Found) -> None:
    """HTML text, with each base64 data URI decoded and scanned as what it holds.

    Base64 text is random letters: scanning it as text would match short names
    by chance; its decoded bytes (an image's text chunks, or raw bytes) are what
    could carry an identifier.
    """
    data = path.read_bytes()
    payloads: list[tuple[bytes, bytes]] = []

    def cut(m: re.Match) -> bytes:
        payloads.append((m.group(1).lower(), m.group(2)))
        return b"data:embedded"

    text = DATA_URI.sub(cut, data)
    scan_text(text, matcher, found, "HTML")
    for n, (mime, b64) in enumerate(payloads, 1):
        try:
            raw = base64.b64decode(b64, validate=False)
        except (ValueError, TypeError):
            raw = b64
        if raw[:8] == b"\x89PNG\r\n\x1a\n":
            scan_png_bytes(raw, matcher, found, label=f"HTML embedded image {n}")
        else:
            kinds = matcher.kinds(raw)
            if kinds:
                found(f"HTML embedded {mime.decode('latin-1') or 'data'} {n}", kinds)
