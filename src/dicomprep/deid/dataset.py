"""Apply the PS3.15 Annex E profile to a pydicom data set: :class:`Deidentifier`.

:class:`Deidentifier` walks every element at every depth (all sequences,
listed or not, and allowlisted private sequences) with pydicom's raw elements:
an element that is only kept is never decoded, one that is removed is deleted
unparsed, and only replaced values are built. One action lookup per element
(:class:`~.profile.ProfilePlan`). Pseudonyms, UIDs and date shifts come from
:mod:`.pseudonym` (keyed HMAC), so output is byte-identical for the same input
and secret in any order or process: nothing depends on the clock or a random
source. The byte-level fast path (:mod:`.fast_path`) makes the same decisions
through the same helpers (:meth:`Deidentifier.kept_private_value`, ...).
"""
from __future__ import annotations

import hashlib
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

import pydicom.uid
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.datadict import keyword_for_tag, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag
from pydicom.valuerep import VR as VR_ENUM

from ..errors import DicomprepError
from . import edits, pixels, pseudonym
from .blobs import (BLOB_IDENTIFIER_TAGS, EMBEDDED_UID, VENDOR_CLEANERS, BlobPattern, BlobScrub, blob_pattern,
                    mask_email_addresses, raw_bytes, x_out)
from .dates import DATE_TIME_PAIRS, PRIVATE_TEXT_VRS, cap_age, shift_pair, shift_values, whole_date
from .patient import PatientContext, element_text, patient_context
from .profile import STANDARD_UID_ROOT, ProfilePlan, allowlist_label, load_private_allowlist, plan_from_config, vr_of

PIXEL_TAGS = (0x7FE00008, 0x7FE00009, 0x7FE00010)
SHARED_FG, PER_FRAME_FG = 0x52009229, 0x52009230
PATIENT_NAME, PATIENT_SEX = 0x00100010, 0x00100040
SPECIFIC_CHARSET = 0x00080005
UNDEFINED_LENGTH = 0xFFFFFFFF
#: File meta elements that are kept; all others of group 0002 are removed
#: (Source/Sending/Receiving AE titles, private information).
FILE_META_KEEP = {0x00020000, 0x00020001, 0x00020002, 0x00020003, 0x00020010, 0x00020012, 0x00020013}
TEXT_VRS = {"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UT", "UR", "AS"}
#: VRs whose values the engine rewrites as ASCII bytes directly (no pydicom conversion).
ASCII_VRS = frozenset({"UI", "DA", "TM", "DT", "AS", "CS", "SH", "LO", "PN", "IS", "DS", "AE"})
#: Dummy values for the D action (PS3.15 E.1.1: a non-zero-length value consistent with the VR).
DUMMY = {
    "PN": "ANONYMIZED", "LO": "ANONYMIZED", "SH": "ANONYMIZED", "CS": "ANONYMIZED", "LT": "ANONYMIZED",
    "ST": "ANONYMIZED", "UT": "ANONYMIZED", "UC": "ANONYMIZED", "AE": "ANONYMIZED", "UR": "ANONYMIZED",
    "DA": "19000101", "TM": "000000", "DT": "19000101000000", "AS": "000Y", "IS": "0", "DS": "0",
    "US": 0, "SS": 0, "UL": 0, "SL": 0, "UV": 0, "SV": 0, "FL": 0.0, "FD": 0.0, "AT": 0,
    "OB": b"\x00\x00", "OW": b"\x00\x00", "OD": b"\x00" * 8, "OF": b"\x00" * 4, "OL": b"\x00" * 4,
    "OV": b"\x00" * 8, "UN": b"\x00\x00",
}
#: (0002,0012) / (0002,0013) of every written file (PS3.10 7.1): pydicom's implementation UID.
IMPLEMENTATION_CLASS_UID = str(pydicom.uid.PYDICOM_IMPLEMENTATION_UID)
IMPLEMENTATION_VERSION_NAME = "DICOMPREP_DEID"
#: Value Representations of PS3.5 Table 6.2-1 (plus pydicom's ambiguous "US or SS" forms).
VALID_VRS = frozenset(v.value for v in VR_ENUM)
#: The syntax of a UID value (PS3.5 9.1): numeric components separated by dots.
UID_SYNTAX = re.compile(r"^[0-9]+(?:\.[0-9]+)*$")


class DeidentificationFailed(DicomprepError):
    """A file could not be de-identified; it is quarantined, never copied through."""


@dataclass
class Deidentifier:
    """Applies a :class:`ProfilePlan` under one secret; reusable across files."""

    plan: ProfilePlan
    secret: bytes
    allowlist: frozenset = frozenset()
    counts: Counter = field(default_factory=Counter)
    uid_map: dict = field(default_factory=dict)
    burned_in: Any = None  # burned-in text screen (deid/pixels.py PixelSettings); None = off
    #: Attributes (by keyword) whose value did not parse as its VR, summed over files.
    not_parsed: Counter = field(default_factory=Counter)
    #: Sentences about the last file (attributes that did not parse): the unit's reasons.
    notes: list = field(default_factory=list)
    #: ``deid.structured_reports``: ``drop`` (documents and reports not shared) or ``clean``.
    structured_reports: str = "drop"
    #: Kept private elements by allowlist entry (``creator (gggg,xxEE)``), summed over files.
    private_kept_by: Counter = field(default_factory=Counter)

    def __post_init__(self) -> None:
        #: (creator, group) -> allowlisted element bytes: a quick test before the element key
        blocks: dict = {}
        for c, g, e in self.allowlist:
            blocks.setdefault((c, g), set()).add(e)
        self.allowlist_blocks = {k: frozenset(v) for k, v in blocks.items()}
        self._vr_cache: dict[int, str | None] = {}
        self._standard_uid_tags = self.plan.standard_uid_tags
        self._defaults = not self.plan.preset_only
        self._longitudinal = self.plan.options.retain_longitudinal_modified_dates
        self._retain_uids = self.plan.options.retain_uids
        self._graphics = self.plan.options.clean_graphics
        self._patients: dict = {}
        self._blob_pattern: BlobScrub | None = None
        self._clean_memo: dict = {}
        self._clean_memo_small: dict = {}
        self.fast_path = True
        self._rewriter = None  # the byte-level fast path (fast_path.rewriter_of)
        self._cleans_text = any(a == "C" and vr_of(t) in TEXT_VRS for t, a in self.plan.top.items())

    # -- helpers
    def _vr(self, tag: int) -> str | None:
        try:
            return self._vr_cache[tag]
        except KeyError:
            vr = self._vr_cache[tag] = vr_of(tag)
            return vr

    def new_uid(self, uid: str) -> str:
        """Keyed replacement of a non-standard UID (standard ``1.2.840.10008.`` UIDs are kept)."""
        uid = uid.strip().rstrip("\x00")
        if not uid or uid.startswith(STANDARD_UID_ROOT) or self._retain_uids:
            return uid
        try:
            return self.uid_map[uid]
        except KeyError:
            new = self.uid_map[uid] = pseudonym.uid_pseudonym(self.secret, uid)
            return new

    def kept_private_value(self, key: tuple, tag: int, vr: str | None, value: bytes,
                           patient: "PatientContext") -> bytes:
        """The value of a kept (allowlisted) private element, cleaned; ``value`` itself
        when nothing changes. Both paths call this, so they decide alike.

        * VR DA/DT/TM: shifted by the patient's offset like public dates (emptied, and
          noted, when it does not parse);
        * a text value (or one of unknown VR) that is a date or date-time as a whole
          (``20230113``, ``20230113194316.95``): shifted; written with separators
          (``2023-01-13``, ``13.01.2023``): removed;
        * 16 bytes or more (vendor blobs: CSA headers, protocols), or a text value (or
          one of unknown VR) of any length: UIDs, the dataset's identifiers and its
          dates/times in every spelling, and e-mail addresses, overwritten in place
          (:meth:`clean_private_value`). Short binary values (VR FL, US, ...) are numbers.
        """
        if vr in ("DA", "DT", "TM"):
            text = value.decode("ascii", "replace").rstrip("\x00 ")
            values = [v.strip("\x00 ") for v in text.split("\\")] if text else []
            new = shift_values(vr, values, patient)
            if new is None:
                self.note_not_parsed(tag, vr, "value emptied")
            data = ("\\".join(new or [])).encode("ascii", "replace")
            if len(data) % 2:
                data += b" "
            if data != value:
                self.counts["private_dates_shifted"] += 1
                return data
            return value
        text_like = vr in PRIVATE_TEXT_VRS or vr is None or vr == "UN"
        if text_like:
            shifted = whole_date(value, patient)
            if shifted is not None:
                self.counts["private_dates_shifted"] += 1
                return shifted
        if len(value) >= 16 or (text_like and len(value) >= 3):
            new = self.clean_private_value(key, value, self._blob_pattern)
            if new is not value:
                self.counts["private_blobs_scrubbed"] += 1
            return new
        return value

    def clean_private_value(self, key: tuple, value: bytes, pattern: "BlobScrub | None") -> bytes:
        """A kept private value, cleaned: a vendor cleaner when there is one for ``key``
        (creator, group, element byte), else :meth:`scrub_embedded_uids`."""
        cleaner = VENDOR_CLEANERS.get(key)
        if cleaner is not None:
            new = self._memoised(("vendor", key, value, pattern), value, lambda: cleaner(self, value, pattern))
            return value if new == value else new
        return self.scrub_embedded_uids(value, pattern)

    def _memoised(self, memo_key: tuple, value: bytes, clean: Callable[[], Any]) -> Any:
        """``clean()``, remembered under ``memo_key``: series-level values (CSA series
        header, GE protocol, short vendor strings) repeat per slice; bounded: 64 blobs
        of 256 bytes or more, 4,096 shorter values."""
        memo, limit = (self._clean_memo, 64) if len(value) >= 256 else (self._clean_memo_small, 4096)
        hit = memo.get(memo_key)
        if hit is None:
            hit = clean()
            if len(memo) > limit:
                memo.clear()
            memo[memo_key] = hit
        return hit

    def scrub_embedded_uids(self, value: bytes, pattern: "BlobScrub | None" = None) -> bytes:
        """Clean a kept private blob without changing its length, so its structure stays valid:
        UIDs inside it (e.g. ``tReferenceImage0`` in the Siemens CSA series header) become
        same-length keyed UIDs, e-mail addresses become ``X`` runs, and whole-word
        occurrences of the dataset's own identifying strings (``pattern``, see
        :func:`blob_pattern`) become ``X`` runs. What the series' identifiers
        (``pattern.words``) do to a value is remembered; the instance's times
        (``pattern.times``) are looked for in the same text each time."""
        words = pattern.words if pattern is not None else None
        base, new = self._memoised(("words", value, words), value, lambda: self._scrub_series_level(value, words))
        if pattern is not None and pattern.times is not None:
            new = x_out(new, pattern.times.spans(base))
        return value if new == value else new

    def _scrub_series_level(self, value: bytes, words: "BlobPattern | None") -> tuple[bytes, bytes]:
        """(``value`` with its UIDs and e-mail addresses replaced, that with ``words``
        overwritten too)."""
        new = value
        if value.count(b".") >= 4:
            def repl(m: re.Match) -> bytes:
                uid = m.group(0).decode("ascii")
                if uid.startswith(STANDARD_UID_ROOT) or self._retain_uids:
                    return m.group(0)
                return pseudonym.uid_pseudonym_fixed_length(self.secret, uid, len(uid)).encode("ascii")
            new = EMBEDDED_UID.sub(repl, new)
        if b"@" in new:  # e-mail addresses (a person's, whoever's): the whole address
            new = mask_email_addresses(new)
        return new, (x_out(new, words.spans(new)) if words is not None else new)

    def _set(self, ds: Dataset, tag: int, vr: str, value: Any) -> None:
        """Replace an element's value; an ASCII value of a raw element stays raw (no conversion)."""
        old = ds._dict.get(tag)
        if type(old) is RawDataElement and vr in ASCII_VRS and old.length != UNDEFINED_LENGTH:
            if value is None:
                data = b""
            else:
                text = value if isinstance(value, str) else "\\".join(value)
                data = text.encode("ascii", "strict") if text.isascii() else None
            if data is not None:
                if len(data) % 2:
                    data += b"\x00" if vr == "UI" else b" "
                ds._dict[tag] = RawDataElement(tag, old.VR, len(data), data, 0, old.is_implicit_VR,
                                               old.is_little_endian)
                return
        ds._dict[BaseTag(tag)] = DataElement(tag, vr, value)  # a tag key: pydicom's writer reads .group

    def note_not_parsed(self, tag: int, vr: str, done: str) -> None:
        """Record an attribute whose value does not parse as its VR (never its value)."""
        label = f"({tag >> 16:04X},{tag & 0xFFFF:04X})"
        keyword = keyword_for_tag(tag) or "private"
        self.not_parsed[keyword] += 1
        self.counts["not_parsed"] += 1
        self.notes.append(f"{label} {keyword} is not a valid {vr} value; {done}")

    def _values(self, ds: Dataset, tag: int) -> list[str]:
        old = ds._dict[tag]
        if type(old) is RawDataElement and old.VR in ASCII_VRS | {None} and old.length != UNDEFINED_LENGTH:
            raw = old.value or b""
            if raw.isascii():
                text = raw.decode("ascii").rstrip("\x00 ")
                return [v.strip("\x00 ") for v in text.split("\\")] if text else []
        value = ds[tag].value
        if value is None:
            return []
        if isinstance(value, (str, bytes)):
            return [value.decode("latin-1") if isinstance(value, bytes) else value]
        return [str(v) for v in value]

    # -- the walk
    def allowlisted_private(self, creators: dict[tuple[int, int], str], tag: int) -> tuple[str, int, int] | None:
        """The allowlist key (private creator, group, element byte) of a private data
        element (PS3.5 7.8.1) when it is kept, else None."""
        group, element = tag >> 16, tag & 0xFFFF
        creator = creators.get((group, element >> 8))
        key = (creator, group, element & 0xFF)
        if creator is None or key not in self.allowlist:
            return None
        self.private_kept_by[allowlist_label(key)] += 1
        return key

    def unlisted_action(self, tag: int, vr: str | None) -> str | None:
        """Action for a public attribute the profile table does not list: sequences
        are walked (K), UIDs replaced (U) unless standard, dates/times shifted (C)
        or removed (X); anything else is kept as it is (None)."""
        if vr == "SQ":
            return "K"
        if vr == "UI":
            return "K" if tag in self._standard_uid_tags else "U"
        if vr in ("DA", "DT", "TM"):
            return "C" if self._longitudinal else "X"
        return None

    def deidentify(self, ds: Dataset, *, fallback_key: str = "") -> PatientContext:
        """De-identify ``ds`` in place (file meta included); return its patient context.

        Raises :class:`DeidentificationFailed` when an element cannot be handled
        (unknown VR in a kept position, corrupt sequence, unparsable date).
        """
        pixel_hash = self._pixel_hash(ds)
        enhanced = SHARED_FG in ds._dict or PER_FRAME_FG in ds._dict
        self.notes = []
        try:
            patient = patient_context(ds, self.secret, fallback_key, identifiers=self._cleans_text,
                                      cache=self._patients)
            self._blob_pattern = blob_pattern([raw_bytes(ds, t) for t in BLOB_IDENTIFIER_TAGS],
                                              raw_bytes(ds, SPECIFIC_CHARSET))
            self._clean(ds, 0, enhanced, patient)
        except DeidentificationFailed:
            raise
        except Exception as exc:
            raise DeidentificationFailed(f"{type(exc).__name__} while de-identifying") from exc
        self._clean_file_meta(ds)
        self._mark(ds)
        if self._pixel_hash(ds) != pixel_hash:
            raise DeidentificationFailed("pixel data changed during de-identification")
        self.counts["instances"] += 1
        return patient

    @staticmethod
    def _pixel_hash(ds: Dataset) -> str:
        h = hashlib.sha256()
        for tag in PIXEL_TAGS:
            elem = ds._dict.get(tag)
            if elem is not None:
                value = elem.value
                h.update(value if isinstance(value, (bytes, bytearray)) else repr(value).encode())
        return h.hexdigest()

    def _clean(self, ds: Dataset, depth: int, enhanced: bool, patient: PatientContext) -> None:
        actions = self.plan.actions(depth, enhanced)
        d = ds._dict
        counts = self.counts
        privates = []
        handled: set[int] = set()
        for tag in sorted(d):
            group = tag >> 16
            if group & 1:
                privates.append(tag)
                continue
            if tag in handled:
                continue
            if not tag & 0xFFFF and group > 2:  # group length: stale after edits
                del d[tag]
                continue
            if self._graphics and (0x5000 <= group <= 0x501E or 0x6000 <= group <= 0x601E):
                del d[tag]  # Clean Graphics: curves 50xx, overlays 60xx
                counts["X"] += 1
                continue
            elem = d[tag]
            vr = elem.VR
            if vr is not None and vr not in VALID_VRS and " or " not in vr:
                raise DeidentificationFailed(f"unknown VR in element ({tag >> 16:04X},{tag & 0xFFFF:04X})")
            if vr is None or vr == "UN" or " or " in vr:
                vr = self._vr(tag)
            action = actions.get(tag)
            if action is None and 0x5000 <= group <= 0x50FF:
                action = actions.get((group << 16) | 0xFFFF)  # every element of a curve group
            if action is None:
                if vr is None or self._vr(tag) is None:
                    # a public tag unknown to the dictionary: nothing says it is safe
                    del d[tag]
                    counts["X"] += 1
                    continue
                if not self._defaults:
                    if vr == "SQ":
                        self._recurse(ds, tag, depth, enhanced, patient)
                    continue
                action = self.unlisted_action(tag, vr)
                if action is None:
                    continue  # kept unparsed: the fast path
            elif vr == "UI" and action == "K" and self._defaults and tag not in self._standard_uid_tags:
                action = "U" if not self._retain_uids else "K"
            self._apply(ds, tag, action, vr, depth, enhanced, patient, handled)
        if privates:
            self._clean_private(ds, privates, depth, enhanced, patient)

    def _recurse(self, ds: Dataset, tag: int, depth: int, enhanced: bool, patient: PatientContext) -> None:
        seq = ds[tag].value
        if seq is None:
            return
        for item in seq:
            self._clean(item, depth + 1, enhanced, patient)

    def _apply(self, ds, tag, action, vr, depth, enhanced, patient, handled) -> None:
        d = ds._dict
        counts = self.counts
        if action == "X":
            del d[tag]
            counts["X"] += 1
        elif vr == "SQ":
            if action == "Z":
                self._set(ds, tag, "SQ", Sequence())
                counts["Z"] += 1
            elif action == "X":  # pragma: no cover - handled above
                del d[tag]
            else:
                self._recurse(ds, tag, depth, enhanced, patient)
        elif action == "K":
            return
        elif action == "Z":
            self._set(ds, tag, vr, None)
            counts["Z"] += 1
        elif action == "P":
            self._set(ds, tag, vr, patient.pseudonym)
            counts["P"] += 1
        elif action == "A":
            old = element_text(ds, tag).strip()
            age = cap_age(old)
            if old and not age:
                self.note_not_parsed(tag, "AS", "value emptied")
            self._set(ds, tag, vr, age)
            counts["K"] += 1
        elif vr == "UI" and action in ("U", "D", "C"):
            values = self._values(ds, tag)
            if not all(UID_SYNTAX.match(v) for v in values if v):
                self.note_not_parsed(tag, "UI", "replaced by a keyed UID")
            new = [self.new_uid(v) for v in values]
            self._set(ds, tag, "UI", new[0] if len(new) == 1 else new)
            counts["U"] += 1
        elif action == "D":
            if tag == PATIENT_SEX:
                self._set(ds, tag, vr, "O")
            else:
                self._set(ds, tag, vr, DUMMY.get(vr, "ANONYMIZED"))
            counts["D"] += 1
        elif action == "U":  # U on a non-UI VR (never in the table): remove
            del d[tag]
            counts["X"] += 1
        elif action == "C":
            self._clean_value(ds, tag, vr, patient, handled)
            counts["C"] += 1
        else:  # pragma: no cover
            raise DeidentificationFailed(f"unknown action {action!r}")

    def _clean_value(self, ds: Dataset, tag: int, vr: str, patient: PatientContext, handled: set) -> None:
        """C: shift dates/times by the patient's offset; scrub identifiers from text."""
        d = ds._dict
        if vr == "DA":
            values = self._values(ds, tag)
            time_tag = DATE_TIME_PAIRS.get(tag)
            if (time_tag is not None and time_tag in d and len(values) == 1 and values[0].strip()
                    and self.plan.actions(1, False).get(time_tag, "C") == "C"):
                times = self._values(ds, time_tag)
                if len(times) == 1 and times[0].strip():
                    new_date, new_time = shift_pair(values[0], times[0], patient)
                    if new_date is None:
                        self.note_not_parsed(tag, "DA", "value emptied")
                    self._set(ds, tag, "DA", new_date)
                    if new_time is None:
                        self.note_not_parsed(time_tag, "TM", "value emptied")
                    self._set(ds, time_tag, "TM", new_time)
                    handled.add(time_tag)
                    self.counts["C"] += 1
                    return
        if vr in ("DA", "TM", "DT"):
            new = shift_values(vr, self._values(ds, tag), patient)
            if new is None:
                self.note_not_parsed(tag, vr, "value emptied")
            self._set(ds, tag, vr, None if not new else new[0] if len(new) == 1 else new)
        elif vr in TEXT_VRS:
            pattern = patient.identifiers
            values = self._values(ds, tag)
            if pattern is not None:
                values = [re.sub(r"\s{2,}", " ", pattern.sub("", v)).strip() for v in values]
            self._set(ds, tag, vr, values[0] if len(values) == 1 else values)
        else:  # numbers and binary values carry no free text: keep
            return

    def _clean_private(self, ds: Dataset, tags: list[int], depth: int, enhanced: bool,
                       patient: PatientContext) -> None:
        """Remove private attributes except allowlisted (creator, group, element byte) ones."""
        d = ds._dict
        counts = self.counts
        if self.plan.remove_all_private or not self.allowlist:
            for tag in tags:
                del d[tag]
            counts["private_removed"] += len(tags)
            return
        for tag in tags:
            vr = d[tag].VR
            if vr is not None and vr not in VALID_VRS and " or " not in vr:
                raise DeidentificationFailed(f"unknown VR in element ({tag >> 16:04X},{tag & 0xFFFF:04X})")
        creators: dict[tuple[int, int], str] = {}
        for tag in tags:
            el = tag & 0xFFFF
            if 0x10 <= el <= 0xFF:
                value = d[tag].value
                if isinstance(value, bytes):
                    value = value.decode("latin-1")
                creators[(tag >> 16, el)] = str(value or "").strip(" \x00")
        kept_blocks = set()
        for tag in tags:
            if tag & 0xFFFF < 0x1000:
                continue
            key = self.allowlisted_private(creators, tag)
            if key is not None:
                kept_blocks.add((tag >> 16, (tag & 0xFFFF) >> 8))
                counts["private_kept"] += 1
                elem = d[tag]
                if elem.VR == "SQ" or (isinstance(elem, RawDataElement) and elem.length == UNDEFINED_LENGTH):
                    self._recurse(ds, tag, depth, enhanced, patient)
                elif isinstance(elem, RawDataElement) and elem.value:
                    new = self.kept_private_value(key, tag, elem.VR, elem.value, patient)
                    if new is not elem.value:
                        d[tag] = elem._replace(value=new, length=len(new))
            else:
                del d[tag]
                counts["private_removed"] += 1
        for tag in tags:
            el = tag & 0xFFFF
            if el < 0x1000 and not (0x10 <= el <= 0xFF and (tag >> 16, el) in kept_blocks):
                del d[tag]

    def _clean_file_meta(self, ds: Dataset) -> None:
        """File meta (PS3.10 7.1): MediaStorageSOPInstanceUID follows SOPInstanceUID; AE titles removed."""
        meta = getattr(ds, "file_meta", None)
        if meta is None:
            return
        for tag in list(meta._dict):
            if tag not in FILE_META_KEEP:
                del meta._dict[tag]
        if 0x00020003 in meta._dict:
            sop = element_text(ds, 0x00080018)
            uid = sop if sop else self.new_uid(element_text(meta, 0x00020003))
            meta.add(DataElement(0x00020003, "UI", uid))
        # the writing software is ours: the input's implementation UID/version name may
        # identify a site's PACS or workstation (added with tag keys: a file written without
        # them, e.g. by pydicom without a preamble, must still be writable by pydicom)
        meta.add(DataElement(0x00020012, "UI", IMPLEMENTATION_CLASS_UID))
        meta.add(DataElement(0x00020013, "SH", IMPLEMENTATION_VERSION_NAME))

    def _mark(self, ds: Dataset) -> None:
        """PatientIdentityRemoved, DeidentificationMethod(+CodeSequence) (0012,0062-0064),
        LongitudinalTemporalInformationModified (0028,0303)."""
        options = self.plan.options
        ds.PatientIdentityRemoved = "YES"
        method = ["PS3.15 E Basic Profile", f"preset {self.plan.preset}" + (" only" if self.plan.preset_only else "")]
        method += [meaning.replace(" Option", "")[:64] for _, meaning in options.method_codes()[1:]]
        ds.DeidentificationMethod = [m[:64] for m in method]
        items = []
        for value, meaning in options.method_codes():
            item = Dataset()
            item.CodeValue = value
            item.CodingSchemeDesignator = "DCM"
            item.CodeMeaning = meaning
            items.append(item)
        ds.DeidentificationMethodCodeSequence = Sequence(items)
        ds.LongitudinalTemporalInformationModified = "MODIFIED" if options.retain_longitudinal_modified_dates else "REMOVED"


def make_deidentifier(config: dict, secret: bytes) -> Deidentifier:
    """A :class:`Deidentifier` for ``config['deid']`` (plan + private allowlist)."""
    deid = (config or {}).get("deid", {}) or {}
    plan = plan_from_config(config)
    allowlist = frozenset() if plan.remove_all_private else load_private_allowlist(deid.get("private_allowlist"))
    mode = str(deid.get("structured_reports") or "drop")
    if mode == "clean":  # PS3.15 Clean Structured Content: free text of the SR header too
        for table in (plan.top, plan.top_enhanced, plan.nested):
            for keyword in SR_FREE_TEXT:
                table[int(tag_for_keyword(keyword))] = "X"
    engine = Deidentifier(plan=plan, secret=secret, allowlist=allowlist, structured_reports=mode,
                          burned_in=pixels.settings_from_config(config))  # burned-in text (pixels.py)
    edits.attach(engine, config)             # config deid.edits (deid/edits.py)
    return engine


#: SR attributes of free text that PS3.15 Table E.1-1 does not list; removed under
#: ``deid.structured_reports: clean`` (the content tree's TEXT items get a dummy value
#: and PNAME items, observers and organisations are replaced by the basic profile).
SR_FREE_TEXT = ("CompletionFlagDescription",)

