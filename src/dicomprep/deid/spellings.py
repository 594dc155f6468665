"""Every spelling of an identifier, shared by de-identification and the leak verifier.

A value found in a header is written elsewhere in other forms: a person name
``SMITH^JOHN`` (PS3.5 6.2.1) as "Smith, John", "John Smith", "J. Smith", in
lower case or without accents; a date ``20190314`` as 03/14/2019, 14.03.2019,
14 Mar 2019 or 2019-03-14; an ID ``12345678`` as 123-45-678. And every value
is stored in the character set the file declares (Specific Character Set
(0008,0005), PS3.5 6.1): UTF-8 (ISO_IR 192), Latin-1 (ISO_IR 100), Greek
(ISO_IR 126), or ISO 2022 with code extensions (IR 87 Japanese kanji, with
escape sequences). Both de-identification (scrubbing kept vendor blobs and
cleaning free text) and the verifier (searching bytes) use these functions, so what one
removes the other looks for.
"""
from __future__ import annotations

import datetime as dt
import re
import unicodedata
from typing import Iterable

from pydicom.charset import convert_encodings, encode_string

MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
MONTHS_LONG = ("January", "February", "March", "April", "May", "June", "July", "August", "September",
               "October", "November", "December")
#: Separators written inside IDs (123-45-678, 123.45.678, 123 45 678, 123/45/678, 123_45_678).
ID_SEPARATORS = "-./ _"
#: Python codecs of the DICOM character sets (PS3.3 C.12.1.1.2), single-byte and UTF-8.
CHARSET_CODECS = {
    "": "latin-1", "ISO_IR 6": "ascii", "ISO 2022 IR 6": "ascii",
    "ISO_IR 100": "latin-1", "ISO 2022 IR 100": "latin-1", "ISO_IR 101": "iso8859-2",
    "ISO 2022 IR 101": "iso8859-2", "ISO_IR 109": "iso8859-3", "ISO 2022 IR 109": "iso8859-3",
    "ISO_IR 110": "iso8859-4", "ISO 2022 IR 110": "iso8859-4", "ISO_IR 144": "iso8859-5",
    "ISO 2022 IR 144": "iso8859-5", "ISO_IR 127": "iso8859-6", "ISO 2022 IR 127": "iso8859-6",
    "ISO_IR 126": "iso8859-7", "ISO 2022 IR 126": "iso8859-7", "ISO_IR 138": "iso8859-8",
    "ISO 2022 IR 138": "iso8859-8", "ISO_IR 148": "iso8859-9", "ISO 2022 IR 148": "iso8859-9",
    "ISO_IR 203": "iso8859-15", "ISO 2022 IR 203": "iso8859-15", "ISO_IR 13": "shift_jis",
    "ISO 2022 IR 13": "shift_jis", "ISO_IR 166": "tis-620", "ISO 2022 IR 166": "tis-620",
    "ISO_IR 192": "utf-8", "GB18030": "gb18030", "GBK": "gbk", "ISO 2022 IR 149": "euc_kr",
    "ISO 2022 IR 58": "gb2312",
}


def fold_accents(text: str) -> str:
    """``Müller Jürgen`` -> ``Muller Jurgen`` (NFKD, combining marks dropped); ß -> ss."""
    text = text.replace("ß", "ss").replace("ẞ", "SS")
    return "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))


def name_spellings(value: str) -> set[str]:
    """The spellings of a person name (PS3.5 6.2.1 PN: ``family^given^middle^prefix^suffix``,
    ``=``-separated alphabetic / ideographic / phonetic groups): each group as written,
    "Family, Given", "Given Family", "Family Given", "G. Family", "G Family",
    "Family G.", "Given M. Family", with and without accents. Case is left to the
    caller (both users compare case-insensitively)."""
    out: set[str] = set()
    for group in str(value or "").split("="):
        group = group.strip()
        if not group:
            continue
        parts = [p.strip() for p in group.split("^")]
        family, given = (parts + ["", ""])[:2]
        middle = parts[2] if len(parts) > 2 else ""
        family, given, middle = family.strip(), given.strip(), middle.strip()
        forms = {group, group.replace("^", " ").strip(), " ".join(p for p in parts if p)}
        if family and given:
            initial = given[0]
            forms |= {f"{family}, {given}", f"{given} {family}", f"{family} {given}", f"{family},{given}",
                      f"{initial}. {family}", f"{initial} {family}", f"{initial}.{family}", f"{family} {initial}.",
                      f"{family}, {initial}.", f"{family}^{given}"}
            if middle:
                forms |= {f"{given} {middle} {family}", f"{given} {middle[0]}. {family}",
                          f"{family}, {given} {middle}", f"{family}, {given} {middle[0]}."}
        for form in list(forms):
            forms.add(fold_accents(form))
        out |= {re.sub(r"\s+", " ", f).strip() for f in forms if f.strip()}
    return out


def name_components(value: str, min_len: int = 3) -> set[str]:
    """Single words of a PN value (and their accent-free forms), ``min_len`` or longer."""
    words = set()
    for word in re.split(r"[\s\^=,]+", str(value or "")):
        word = word.strip(".-'")
        if len(word) >= min_len:
            words |= {word, fold_accents(word)}
    return words


def date_spellings(day: dt.date) -> list[str]:
    """The spellings of a date: 20190314, 2019-03-14, 14.03.2019, 14/03/2019, 03/14/2019,
    2019/03/14, 2019.03.14, 14-03-2019, 03-14-2019, 14 Mar 2019, Mar 14 2019,
    Mar 14, 2019, 14-Mar-2019, 14Mar2019, 14 March 2019, March 14, 2019."""
    y, m, d = f"{day.year:04d}", f"{day.month:02d}", f"{day.day:02d}"
    mon, month = MONTHS[day.month - 1], MONTHS_LONG[day.month - 1]
    out = [y + m + d, f"{y}-{m}-{d}", f"{d}.{m}.{y}", f"{d}/{m}/{y}", f"{m}/{d}/{y}",
           f"{y}/{m}/{d}", f"{y}.{m}.{d}", f"{d}-{m}-{y}", f"{m}-{d}-{y}",
           f"{d} {mon} {y}", f"{mon} {d} {y}", f"{mon} {d}, {y}", f"{d}-{mon}-{y}", f"{d}{mon}{y}",
           f"{d} {month} {y}", f"{month} {d}, {y}", f"{month} {d} {y}"]
    if day.day < 10:  # 14 Mar 2019 but also 3 Mar 2019 / Mar 3, 2019
        dd = str(day.day)
        out += [f"{dd} {mon} {y}", f"{mon} {dd} {y}", f"{mon} {dd}, {y}", f"{dd} {month} {y}",
                f"{month} {dd}, {y}"]
    seen: dict[str, None] = {}
    for s in out:
        seen.setdefault(s, None)
    return list(seen)


def compact_id(value: str) -> str:
    """An ID without its separators: ``123-45-678`` -> ``12345678``."""
    return re.sub("[" + re.escape(ID_SEPARATORS) + "]", "", str(value or ""))


def id_regex_source(value: str) -> str | None:
    """Regex source matching an ID with or without separators between its characters
    (``1[-./ _]?2[-./ _]?3...``), or None when the ID is too short to search this way
    (fewer than 6 letters/digits)."""
    core = compact_id(value)
    if len(core) < 6 or not re.fullmatch(r"[0-9A-Za-z]+", core):
        return None
    sep = "[" + re.escape(ID_SEPARATORS) + "]?"
    return sep.join(re.escape(c) for c in core)


def codecs_of(charsets: Iterable[str]) -> list[str]:
    """Python codecs for the declared DICOM character sets (plus UTF-8 and Latin-1)."""
    out = ["utf-8", "latin-1"]
    for cs in charsets or ():
        for term in str(cs).split("\\"):
            codec = CHARSET_CODECS.get(term.strip())
            if codec and codec not in out:
                out.append(codec)
    return out


def encoded_forms(text: str, charsets: Iterable[str] = ()) -> set[bytes]:
    """``text`` as bytes in every declared character set: single-byte and UTF-8 codecs,
    and ISO 2022 code extensions (IR 87/159 Japanese, IR 149 Korean, IR 58 Chinese) as
    pydicom writes them: with the escape sequence before the non-ASCII run."""
    out: set[bytes] = set()
    for codec in codecs_of(charsets):
        try:
            out.add(text.encode(codec))
        except (UnicodeEncodeError, LookupError):
            pass
    terms = [t.strip() for cs in charsets or () for t in str(cs).split("\\")]
    if any(t.startswith("ISO 2022") for t in terms) and not text.isascii():
        try:
            encodings = convert_encodings(["ISO 2022 IR 6"] + [t for t in terms if t.startswith("ISO 2022")])
            encoded = encode_string(text, encodings)
            out.add(encoded)
            # a value's end may be followed by the return to ASCII or not: search without it
            if encoded.endswith(b"\x1b(B"):
                out.add(encoded[:-3])
        except Exception:
            pass
    return {b for b in out if b}


def trie_regex(words: Iterable[bytes]) -> bytes:
    """One regex alternation shaped as a trie (shared prefixes factored out), so
    matching cost grows with the text, not with the number of words. At each
    position the longest word that lets the rest of the pattern match wins, as
    with an alternation sorted longest first."""
    trie: dict = {}
    for w in words:
        node = trie
        for b in w:
            node = node.setdefault(b, {})
        node[-1] = {}

    def emit(node: dict) -> bytes:
        end = -1 in node
        branches = []
        for b in sorted(k for k in node if k != -1):
            chain = [b]
            child = node[b]
            while len(child) == 1 and -1 not in child:  # collapse single-child chains
                (nb, child), = child.items()
                chain.append(nb)
            branches.append(re.escape(bytes(chain)) + emit(child))
        if not branches:
            return b""
        if len(branches) == 1:
            body = branches[0]
            return b"(?:" + body + b")?" if end else body
        body = b"(?:" + b"|".join(branches) + b")"
        return body + b"?" if end else body

    return emit(trie)
