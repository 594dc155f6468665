"""One search for every identifier: :class:`Matcher`.

All identifiers of a kind, in every encoding, are compiled into trie-shaped
regular expressions (:func:`dicomprep.deid.spellings.trie_regex`), one per
boundary rule, so thousands of identifiers cost about as much as a few.
:meth:`Matcher.kinds` says which kinds a text holds; :meth:`Matcher.redact`
replaces matches by ``***`` in text that is reported.
"""
from __future__ import annotations

import re
from typing import Callable, Iterable, Iterator

from ..deid.spellings import compact_id, encoded_forms, trie_regex
from .identifiers import IdentifierSet, date_spellings, parse_date

#: Boundary rule per mode (on lower-case bytes): the bytes that may not touch a
#: match on the left (checked in Python, so the regex starts with literal bytes
#: and the regex engine can skip ahead fast) and the regex lookahead on the right.
_ALPHA = frozenset(b"abcdefghijklmnopqrstuvwxyz")
_DIGIT = frozenset(b"0123456789")
_BOUNDARIES = {
    "substring": (frozenset(), b""),
    "word": (_ALPHA, rb"(?![a-z])"),
    "alnum": (_ALPHA | _DIGIT, rb"(?![a-z0-9])"),
    "number": (_DIGIT, rb"(?![0-9])"),
    # an all-digit ID/serial: not the decimals of a number (0.45160 is no serial number)
    "numid": (_ALPHA | _DIGIT | frozenset(b"."), rb"(?![a-z0-9])"),
    # not the decimals of a number either (0.121229 in a bvec is no time of day)
    # and not a finer time: 000627 (to the second) is not 000627.827
    "time": (_DIGIT | frozenset(b"."), rb"(?![0-9])(?![.,]0*[1-9])"),
    # HHMMSS.ff: more fraction digits may follow (122458.102500, or dcm2niix's rounded .103)
    "timefrac": (_DIGIT | frozenset(b"."), b""),
    # a date may be followed by a DT time part (PS3.5 6.2 DT) but not by other digits
    "date": (_DIGIT, rb"(?:(?![0-9])|(?=[0-2][0-9][0-5][0-9]))"),
}


def _encodings(text: str, charsets: Iterable[str] = ()) -> set[bytes]:
    """``text`` (and its lower/upper case) as bytes in UTF-8, Latin-1 and every character
    set the input declares (ISO 2022 with its escape sequences), lower-cased."""
    out = set()
    for variant in {text, text.lower(), text.upper()}:
        if variant.isascii():
            out.add(variant.encode("ascii").lower())
            continue
        out |= {b.lower() for b in encoded_forms(variant, charsets)}
    return out


#: Separators the verifier looks through inside IDs (123-45-678 for 12345678). Spaces and
#: dots are left out: numbers in text (bvec, CSV) are separated by them.
#: Only between two digits, so a separator next to a letter still bounds a word (sub-123-45-678).
_ID_SEP = re.compile(rb"(?<=[0-9])[-/_](?=[0-9])")
#: Values of this many bytes, up to MEMO_MAX_BYTES, are screened once per Matcher
#: (:meth:`Matcher.screen`); the last MEMO_ENTRIES of them are kept.
MEMO_MIN_BYTES = 4096
MEMO_MAX_BYTES = 1 << 20
MEMO_ENTRIES = 64


class Matcher:
    """Multi-pattern search of identifiers in bytes, case-insensitive for ASCII."""

    def __init__(self, ids: IdentifierSet):
        by_mode: dict[str, dict[bytes, set[str]]] = {m: {} for m in _BOUNDARIES}
        #: encoded spelling -> {(kind, identifier)}: what a match stands for (messages only)
        self.values_of: dict[bytes, set[tuple[str, str]]] = {}
        #: (kind, identifier) matched since the last :meth:`forget` (the file being scanned)
        self.recent: set[tuple[str, str]] = set()
        current: list = [None]

        charsets = sorted(ids.charsets)
        sep_table: dict[str, dict[bytes, set[str]]] = {"numid": {}, "alnum": {}}

        def put(mode: str, text: str, kind: str) -> None:
            for enc in _encodings(text, charsets):
                by_mode[mode].setdefault(enc, set()).add(kind)
                self.values_of.setdefault(enc, set()).add((kind, current[0]))

        for kind, values in ids.effective().items():
            for value in values:
                current[0] = value
                if kind == "name":
                    put("substring" if len(value) >= 8 else "word", value, kind)
                elif kind == "date":
                    day = parse_date(value)
                    if day:
                        for spelling in date_spellings(day):
                            put("date", spelling, kind)
                elif kind == "time":
                    hhmmss = value[:6]
                    put("time", f"{hhmmss[:2]}:{hhmmss[2:4]}:{hhmmss[4:6]}", kind)  # text, reports
                    if "." in value:  # with the original's fraction: 122458.10..., 12:24:58.10...
                        put("timefrac", value, kind)
                        put("timefrac", f"{hhmmss[:2]}:{hhmmss[2:4]}:{value[4:]}", kind)
                    elif not hhmmss.endswith("00"):  # bare digits only for a time known to the second
                        put("time", hhmmss, kind)  # and not on a whole minute: 122500 or 100000 in a
                        # protocol (a threshold, a duration in us) is a number, not a time of day
                elif kind == "uid":
                    put("number", value, kind)
                else:
                    put("numid" if value.isdigit() else "alnum", value, kind)
                    core = compact_id(value).lower()
                    if kind in ("id", "serial") and len(core) >= 6 and core.isascii() and core.isalnum():
                        mode = "numid" if core.isdigit() else "alnum"
                        sep_table[mode].setdefault(core.encode(), set()).add(kind)
                        self.values_of.setdefault(core.encode(), set()).add((kind, value))
        self.kinds_of: dict[bytes, set[str]] = {}
        self.regexes: list[tuple[re.Pattern, frozenset, str]] = []
        for mode, table in by_mode.items():
            if not table:
                continue
            left, right = _BOUNDARIES[mode]
            self.regexes.append((re.compile(b"(?:" + trie_regex(table) + b")" + right), left, mode))
            for enc, kinds in table.items():
                self.kinds_of.setdefault(enc, set()).update(kinds)
        #: IDs searched through separators: (regex, left boundary, kinds by compact bytes)
        self.sep_regexes = []
        for mode, table in sep_table.items():
            if table:
                left, right = _BOUNDARIES[mode]
                self.sep_regexes.append((re.compile(b"(?:" + trie_regex(table) + b")" + right), left))
                for enc, kinds in table.items():
                    self.kinds_of.setdefault(enc, set()).update(kinds)
        # Without the right boundary: in raw DICOM bytes a value's end touches the
        # next element's tag, whose bytes may be letters or digits ((0038,0010) is "8\0").
        every = {enc for table in by_mode.values() for enc in table}
        self.loose = re.compile(b"(?:" + trie_regex(every) + b")") if every else None
        self._longest = max(map(len, every), default=0) + 1
        #: large value -> (kinds, loose hit, its (kind, identifier) pairs): see :meth:`screen`
        self._memo: dict[bytes, tuple[set[str], bool, set]] = {}

    def _regions(self, low: bytes) -> list[tuple[int, int]]:
        """Where a match of the bounded patterns can start: the spans of the loose
        pattern's matches, merged. Every spelling occurrence starts inside one (the
        loose search, left to right, finds a match at or before it, and the next
        search begins at that match's end), so the bounded patterns need look nowhere
        else: most text holds no identifier, and one loose pass replaces eight."""
        regions: list[tuple[int, int]] = []
        if self.loose is None:
            return regions
        for m in self.loose.finditer(low):
            if regions and m.start() <= regions[-1][1]:
                regions[-1] = (regions[-1][0], max(regions[-1][1], m.end()))
            else:
                regions.append(m.span())
        return regions

    def spans(self, data: bytes) -> Iterator[tuple[int, int, set[str]]]:
        """(start, end, kinds) of each identifier in ``data``, with the boundary rules
        of its mode; the bounded patterns run only where the loose one matched."""
        low = data.lower()
        yield from self._bounded(low, self._regions(low))

    def _bounded(self, low: bytes, regions: list[tuple[int, int]]) -> Iterator[tuple[int, int, set[str]]]:
        """:meth:`spans` in lower-cased ``low``, starting inside ``regions`` only."""
        if not regions:
            return
        for rx, left, mode in self.regexes:
            pos = 0
            for first, stop in regions:
                pos = max(pos, first)
                while pos < stop:
                    # a match starting before `stop` ends before stop + longest spelling; the
                    # cut text can only make the lookahead more permissive, so the candidate
                    # is matched again on the whole text
                    m = rx.search(low, pos, min(len(low), stop + self._longest))
                    if m is None or m.start() >= stop:
                        break
                    start = m.start()
                    m = rx.match(low, start)
                    if m is None or (start and low[start - 1] in left):  # glued to a letter/digit
                        pos = start + 1
                        continue
                    if (mode == "date" and start and low[start - 1] == 0x2E and m.end() < len(low)
                            and low[m.end()] in _DIGIT):  # head of a long UID component, not a DT
                        pos = start + 1
                        continue
                    self.recent |= self.values_of.get(m.group(), set())
                    yield start, m.end(), self.kinds_of.get(m.group(), set())
                    pos = max(m.end(), start + 1)

    def forget(self) -> None:
        """Start a new file: :attr:`recent` empties."""
        self.recent = set()

    def kinds(self, data: bytes | str) -> set[str]:
        """Kinds of the identifiers found in ``data`` (str is searched as UTF-8)."""
        return self.screen(data)[0]

    def screen(self, data: bytes | str) -> tuple[set[str], bool]:
        """(:meth:`kinds` of ``data``, whether any spelling occurs in it at all, bounds
        aside). A value of 4 kB to 1 MB is remembered (a vendor protocol repeats in
        every file of a series), with what it adds to :attr:`recent`."""
        if isinstance(data, str):
            data = data.encode("utf-8", "replace")
        if not MEMO_MIN_BYTES <= len(data) <= MEMO_MAX_BYTES:
            return self._screen(data)
        hit = self._memo.get(data)
        if hit is None:
            before, self.recent = self.recent, set()
            found, loose = self._screen(data)
            hit = (found, loose, self.recent)
            self.recent = before | self.recent
            if len(self._memo) >= MEMO_ENTRIES:  # the oldest goes (a series' own values come back)
                del self._memo[next(iter(self._memo))]
            self._memo[data] = hit
        else:
            self.recent |= hit[2]
        return set(hit[0]), hit[1]

    def _screen(self, data: bytes) -> tuple[set[str], bool]:
        """:meth:`screen` without the memo."""
        low = data.lower()
        regions = self._regions(low)
        found: set[str] = set()
        for _, _, kinds in self._bounded(low, regions):
            found |= kinds
        if self.sep_regexes and (b"-" in low or b"/" in low or b"_" in low):
            found |= self._separated_kinds(low)
        return found, bool(regions)

    def _separated_kinds(self, low: bytes) -> set[str]:
        """Kinds of IDs written with separators (123-45-678): searched in the text with the
        separators between letters/digits taken out."""
        compact = _ID_SEP.sub(b"", low)
        if compact == low:
            return set()
        found: set[str] = set()
        for rx, left in self.sep_regexes:
            for m in rx.finditer(compact):
                start = m.start()
                if start and compact[start - 1] in left:
                    continue
                self.recent |= self.values_of.get(m.group(), set())
                found |= self.kinds_of.get(m.group(), set())
        return found

    def redact(self, text: str) -> str:
        """``text`` with every identifier replaced by ``***`` (safe for share/)."""
        data = text.encode("utf-8", "replace")
        spans = sorted((s, e) for s, e, _ in self.spans(data))
        if self.sep_regexes and self._separated_kinds(data.lower()):
            return "***"  # an ID written with separators: the whole text goes
        if not spans:
            return text
        out, pos = bytearray(), 0
        for s, e in spans:
            if s < pos:
                s = pos
            if e <= s:
                continue
            out += data[pos:s] + b"***"
            pos = e
        out += data[pos:]
        return out.decode("utf-8", "replace")


Found = Callable[[str, set[str]], None]  # (where, kinds)
