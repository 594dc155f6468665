"""PNG pictures (QC montages): the text-bearing chunks (PNG spec 11.3.4); the pixels
are read by OCR (:mod:`.pixels`)."""
from __future__ import annotations

import struct
import zlib
from pathlib import Path

from .matcher import Found, Matcher
from .scan_raw import scan_raw

def scan_png(path: Path, matcher: Matcher, found: Found) -> None:
    """PNG text chunks tEXt, zTXt, iTXt (PNG spec 11.3.4) and eXIf."""
    data = path.read_bytes()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        scan_raw(path, matcher, found)
        return
    scan_png_bytes(data, matcher, found)


def scan_png_bytes(data: bytes, matcher: Matcher, found: Found, label: str = "PNG") -> None:
    """The text-bearing chunks of PNG bytes (pixel data is not text)."""
    pos = 8
    while pos + 8 <= len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        ctype = data[pos + 4:pos + 8]
        body = data[pos + 8:pos + 8 + length]
        pos += 12 + length
        text = b""
        if ctype == b"tEXt" or ctype == b"eXIf":
            text = body
        elif ctype == b"zTXt":
            key, _, rest = body.partition(b"\x00")
            try:
                text = key + b"\x00" + zlib.decompress(rest[1:])
            except zlib.error:
                text = body
        elif ctype == b"iTXt":
            key, _, rest = body.partition(b"\x00")
            flag = rest[:1]
            rest = rest[2:]
            lang, _, rest = rest.partition(b"\x00")
            tkey, _, txt = rest.partition(b"\x00")
            if flag == b"\x01":
                try:
                    txt = zlib.decompress(txt)
                except zlib.error:
                    pass
            text = b"\x00".join([key, lang, tkey, txt])
        if text:
            kinds = matcher.kinds(text)
            if kinds:
                found(f"{label} {ctype.decode('latin-1')} chunk", kinds)
        if ctype == b"IEND":
            break
