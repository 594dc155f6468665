"""The byte-level fast path: the profile applied to the encoded bytes (:class:`ByteRewriter`).

The same decisions as :class:`~.dataset.Deidentifier`, made on the elements
the shared byte walker (:func:`dicomio_walk.walk_elements`, PS3.5 section 7) finds:
kept elements are copied as bytes, never parsed into Python values; only
replaced values are encoded. Anything unusual raises
:class:`FastPathUnsupported` and the caller uses the pydicom path; the tests
check both give identical bytes and counts.
"""
from __future__ import annotations

import struct
from collections import Counter

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset

from .. import dicomio_walk
from ..dicomio_walk import LONG_VR_NAMES, TS_EXPLICIT_BE, TS_IMPLICIT_LE
from . import series_template
from .blobs import BLOB_IDENTIFIER_TAGS, blob_pattern
from .dataset import (
    ASCII_VRS, DUMMY, FILE_META_KEEP, IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME, PATIENT_SEX,
    PER_FRAME_FG, PIXEL_TAGS, SHARED_FG, SPECIFIC_CHARSET, TEXT_VRS, UID_SYNTAX, UNDEFINED_LENGTH,
    Deidentifier,
)
from .dates import DATE_TIME_PAIRS, cap_age, shift_pair, shift_values
from .encode import TS_DEFLATED_LE, encode_elements
from .patient import ISSUER, PATIENT_ID, PatientContext, patient_context
from .pixels import IMAGE_TAGS

#: The top-level elements :meth:`ByteRewriter.rewrite` reads before de-identifying:
#: the patient, the original study and series, the functional groups, the identifiers
#: of the blob pattern and the character set.
_LOOKUP_TAGS = tuple(sorted({PATIENT_ID, ISSUER, 0x0020000D, 0x0020000E, SHARED_FG, PER_FRAME_FG, SPECIFIC_CHARSET,
                             *BLOB_IDENTIFIER_TAGS}))

#: An element's fate when it depends only on its tag and encoding (``ByteRewriter._fate``).
_COPY, _DROP = True, False


class FastPathUnsupported(Exception):
    """The file needs the pydicom path (:class:`Deidentifier`); not an error."""


_U32 = struct.Struct("<I")
_HDR_SHORT, _HDR_LONG, _HDR_IMPL = struct.Struct("<HH2sH"), struct.Struct("<HH2s2xI"), struct.Struct("<HHI")
#: (0012,0062-0064) PatientIdentityRemoved, DeidentificationMethod(+CodeSequence),
#: (0028,0303) LongitudinalTemporalInformationModified: written by the profile itself.
_IDENTITY_TAGS = (0x00120062, 0x00120063, 0x00120064, 0x00280303)


class ByteRewriter:
    """The same de-identification as :class:`Deidentifier`, done on the encoded bytes.

    Elements that are kept are copied as bytes; only replaced values are encoded.
    Little-endian files (explicit or implicit VR) only; anything unusual (big
    endian, deflate, unsorted or duplicate tags, sequences encoded as UN, values
    that need text cleaning or non-ASCII dummies, unknown VRs) raises
    :class:`FastPathUnsupported` and the caller uses the pydicom path. The tests
    check that both paths give identical bytes and counts.
    """

    def __init__(self, deid: Deidentifier) -> None:
        self.deid = deid
        self.counts = deid.counts
        self._identity: dict[bool, dict[int, bytes]] = {}
        #: (depth, enhanced, tag, VR as encoded, undefined length) -> COPY or DROP, for
        #: the elements whose fate depends on nothing else (see :meth:`_level`)
        self._fate: dict[tuple, bool] = {}
        #: the bytes of the last rewrite and where its image attributes are in them
        self._last: tuple[bytes, list[tuple]] | None = None
        #: the last file rewritten, for the next file of its series (:mod:`.series_template`)
        self._template: series_template.SeriesTemplate | None = None
        self.use_template = True

    # -- encoding
    @staticmethod
    def _header(tag: int, vr: str | None, length: int, implicit: bool) -> bytes:
        if implicit:
            return _HDR_IMPL.pack(tag >> 16, tag & 0xFFFF, length)
        if vr in LONG_VR_NAMES:
            return _HDR_LONG.pack(tag >> 16, tag & 0xFFFF, vr.encode(), length)
        return _HDR_SHORT.pack(tag >> 16, tag & 0xFFFF, vr.encode(), length)

    def _text_element(self, tag: int, raw_vr: str | None, vr: str, values, implicit: bool) -> bytes:
        if values is None:
            data = b""
        else:
            text = values if isinstance(values, str) else "\\".join(values)
            if not text.isascii():
                raise FastPathUnsupported("non-ASCII replacement")
            data = text.encode("ascii")
            if len(data) % 2:
                data += b"\x00" if vr == "UI" else b" "
        out_vr = raw_vr if vr in ASCII_VRS else vr
        if not implicit and (out_vr is None or len(out_vr) != 2):
            raise FastPathUnsupported("no VR to write")
        if not implicit and out_vr not in LONG_VR_NAMES and len(data) > 0xFFFF:
            raise FastPathUnsupported("value too long")
        return self._header(tag, out_vr, len(data), implicit) + data

    @staticmethod
    def _strings(data: bytes, vstart: int, vlen: int) -> list[str]:
        raw = data[vstart:vstart + vlen]
        if not raw.isascii():
            raise FastPathUnsupported("non-ASCII value")
        text = raw.decode("ascii").rstrip("\x00 ")
        return [v.strip("\x00 ") for v in text.split("\\")] if text else []

    def _identity_elements(self, implicit: bool) -> dict[int, bytes]:
        """The encoded (0012,0062-0064) and (0028,0303) elements (constant per plan)."""
        if implicit not in self._identity:
            ds = Dataset()
            self.deid._mark(ds)
            encoded = {}
            for tag in _IDENTITY_TAGS:
                sub = Dataset()
                sub._dict[tag] = ds._dict[tag]
                encoded[tag] = b"".join(encode_elements(sub, True, implicit, ["iso8859"]))
            self._identity[implicit] = encoded
        return self._identity[implicit]

    # -- the walk (mirrors Deidentifier._clean / _apply / _clean_value / _clean_private)
    def _level(self, data: bytes, entries, depth: int, enhanced: bool, patient: PatientContext,
               implicit: bool, top_state: dict | None) -> list[tuple[int, bytes]]:
        deid, counts = self.deid, self.counts
        actions = deid.plan.actions(depth, enhanced)
        tags = [e[0] for e in entries]
        if tags != sorted(set(tags)):
            raise FastPathUnsupported("unsorted or duplicate tags")
        by_tag = {e[0]: e for e in entries}
        out: list[tuple[int, bytes]] = []
        privates = []
        handled: set[int] = set()
        fates = self._fate
        for entry in entries:
            tag, raw_vr, vstart, vlen, undefined, estart = entry
            group = tag >> 16
            if group & 1:
                privates.append(entry)
                continue
            if tag in handled:
                continue
            if not tag & 0xFFFF and group > 2:
                continue
            # an element seen before whose fate depends only on its tag and encoding
            key = (depth, enhanced, tag, raw_vr, undefined)
            fate = fates.get(key)
            if fate is not None:
                if fate is _COPY:
                    out.append((tag, data[estart:vstart + vlen]))
                else:
                    counts["X"] += 1
                continue
            if deid._graphics and (0x5000 <= group <= 0x501E or 0x6000 <= group <= 0x601E):
                counts["X"] += 1
                fates[key] = _DROP
                continue
            vr = raw_vr
            if vr is None or vr == "UN":
                vr = deid._vr(tag)
                if raw_vr == "UN" and vr == "SQ":
                    raise FastPathUnsupported("sequence encoded as UN")
            action = actions.get(tag)
            if action is None and 0x5000 <= group <= 0x50FF:
                action = actions.get((group << 16) | 0xFFFF)
            whole = data[estart:vstart + vlen]
            if action is None:
                if vr is None or deid._vr(tag) is None:
                    counts["X"] += 1
                    fates[key] = _DROP
                    continue
                if not deid._defaults:
                    if vr == "SQ":
                        out.append((tag, self._sequence(data, entry, depth, enhanced, patient, implicit)))
                    else:
                        out.append((tag, whole))
                        fates[key] = _COPY
                    continue
                action = deid.unlisted_action(tag, vr)
                if action is None:
                    out.append((tag, whole))
                    fates[key] = _COPY
                    continue
            elif vr == "UI" and action == "K" and deid._defaults and tag not in deid._standard_uid_tags:
                action = "U" if not deid._retain_uids else "K"
            if undefined and vr != "SQ":
                if action in ("K",) or tag in PIXEL_TAGS:
                    out.append((tag, whole))
                    fates[key] = _COPY
                    continue
                raise FastPathUnsupported("undefined-length value to rewrite")
            # _apply
            if action == "X":
                counts["X"] += 1
                fates[key] = _DROP
            elif vr == "SQ":
                if action == "Z":
                    out.append((tag, self._header(tag, "SQ", 0, implicit)))
                    counts["Z"] += 1
                else:
                    out.append((tag, self._sequence(data, entry, depth, enhanced, patient, implicit)))
            elif action == "K":
                out.append((tag, whole))
                fates[key] = _COPY
            elif action == "Z":
                out.append((tag, self._text_element(tag, raw_vr, vr, None, implicit)))
                counts["Z"] += 1
            elif action == "P":
                out.append((tag, self._text_element(tag, raw_vr, vr, patient.pseudonym, implicit)))
                counts["P"] += 1
            elif action == "A":
                old = "\\".join(self._strings(data, vstart, vlen)).strip()
                age = cap_age(old)
                if old and not age:
                    deid.note_not_parsed(tag, "AS", "value emptied")
                out.append((tag, self._text_element(tag, raw_vr, vr, age, implicit)))
                counts["K"] += 1
            elif vr == "UI" and action in ("U", "D", "C"):
                values = self._strings(data, vstart, vlen)
                if not all(UID_SYNTAX.match(v) for v in values if v):
                    deid.note_not_parsed(tag, "UI", "replaced by a keyed UID")
                new = [deid.new_uid(v) for v in values]
                out.append((tag, self._text_element(tag, raw_vr, vr, new, implicit)))
                if top_state is not None and tag == 0x00080018:
                    top_state["sop"] = new[0] if new else ""
                counts["U"] += 1
            elif action == "D":
                if vr not in ASCII_VRS and vr not in TEXT_VRS:
                    raise FastPathUnsupported("dummy of a binary VR")
                value = "O" if tag == PATIENT_SEX else DUMMY.get(vr, "ANONYMIZED")
                out.append((tag, self._text_element(tag, raw_vr, vr, value, implicit)))
                counts["D"] += 1
            elif action == "U":
                counts["X"] += 1
                fates[key] = _DROP
            elif action == "C":
                counts["C"] += 1
                if vr == "DA":
                    values = self._strings(data, vstart, vlen)
                    time_tag = DATE_TIME_PAIRS.get(tag)
                    if (time_tag is not None and time_tag in by_tag and len(values) == 1 and values[0]
                            and deid.plan.actions(1, False).get(time_tag, "C") == "C"):
                        t_entry = by_tag[time_tag]
                        times = self._strings(data, t_entry[2], t_entry[3])
                        if len(times) == 1 and times[0]:
                            new_date, new_time = shift_pair(values[0], times[0], patient)
                            if new_date is None:
                                deid.note_not_parsed(tag, "DA", "value emptied")
                            if new_time is None:
                                deid.note_not_parsed(time_tag, "TM", "value emptied")
                            out.append((tag, self._text_element(tag, raw_vr, "DA", new_date, implicit)))
                            out.append((time_tag, self._text_element(time_tag, t_entry[1], "TM", new_time, implicit)))
                            handled.add(time_tag)
                            counts["C"] += 1
                            continue
                    new = shift_values("DA", values, patient)
                elif vr in ("TM", "DT"):
                    new = shift_values(vr, self._strings(data, vstart, vlen), patient)
                elif vr in TEXT_VRS:
                    raise FastPathUnsupported("text cleaning")
                else:
                    out.append((tag, whole))
                    continue
                if new is None:
                    deid.note_not_parsed(tag, vr, "value emptied")
                out.append((tag, self._text_element(tag, raw_vr, vr, None if not new else new[0] if len(new) == 1 else new,
                                                    implicit)))
            else:  # pragma: no cover
                raise FastPathUnsupported(f"action {action}")
        if privates:
            out += self._private(data, privates, depth, enhanced, patient, implicit)
        return out

    def _private(self, data, entries, depth, enhanced, patient, implicit) -> list[tuple[int, bytes]]:
        deid, counts = self.deid, self.counts
        if deid.plan.remove_all_private or not deid.allowlist:
            counts["private_removed"] += len(entries)
            return []
        # one pass: entries are sorted, so a group's private creators (gggg,0010-00FF) come
        # before its data elements (gggg,xx00-xxFF); a block whose creator has no
        # allowlisted element byte is removed element by element without building keys
        creators: dict = {}
        creator_entries = []
        live: dict = {}
        allowed = deid.allowlist_blocks
        empty: frozenset = frozenset()
        kept, kept_blocks = [], set()
        removed = 0
        for entry in entries:
            tag = entry[0]
            el = tag & 0xFFFF
            if el < 0x1000:
                if 0x10 <= el <= 0xFF:
                    creator = data[entry[2]:entry[2] + entry[3]].decode("latin-1").strip(" \x00")
                    creators[(tag >> 16, el)] = creator
                    elements = allowed.get((creator, tag >> 16))
                    if elements:
                        live[(tag >> 16, el)] = elements
                    creator_entries.append(entry)
                continue
            if (el & 0xFF) not in live.get((tag >> 16, el >> 8), empty):
                removed += 1
                continue
            tag, vr, vstart, vlen, undefined, estart = entry
            key = deid.allowlisted_private(creators, tag)
            if key is not None:
                kept_blocks.add((tag >> 16, (tag & 0xFFFF) >> 8))
                counts["private_kept"] += 1
                if vr == "SQ" or undefined:
                    kept.append((tag, self._sequence(data, entry, depth, enhanced, patient, implicit)))
                elif vlen:
                    value = data[vstart:vstart + vlen]
                    new = deid.kept_private_value(key, tag, vr, value, patient)
                    if len(new) == vlen:
                        kept.append((tag, data[estart:vstart] + new))
                    else:
                        kept.append((tag, self._header(tag, vr, len(new), implicit) + new))
                else:
                    kept.append((tag, data[estart:vstart + vlen]))
            else:
                removed += 1
        counts["private_removed"] += removed
        for tag, vr, vstart, vlen, undefined, estart in creator_entries:
            if (tag >> 16, tag & 0xFFFF) in kept_blocks:
                kept.append((tag, data[estart:vstart + vlen]))
        return kept

    def _sequence(self, data, entry, depth, enhanced, patient, implicit) -> bytes:
        tag, raw_vr, vstart, vlen, undefined, estart = entry
        if raw_vr not in (None, "SQ"):
            raise FastPathUnsupported("sequence with another VR")
        body = []
        try:
            items = dicomio_walk.sequence_items(data, vstart, vlen, implicit)
        except dicomio_walk.WalkError as exc:
            raise FastPathUnsupported(str(exc)) from None
        for entries, item_undefined in items:
            elements = self._level(data, entries, depth + 1, enhanced, patient, implicit, None)
            elements.sort(key=lambda x: x[0])
            content = b"".join(b for _, b in elements)
            if item_undefined:
                body.append(b"\xfe\xff\x00\xe0\xff\xff\xff\xff" + content + b"\xfe\xff\x0d\xe0\x00\x00\x00\x00")
            else:
                body.append(b"\xfe\xff\x00\xe0" + _U32.pack(len(content)) + content)
        value = b"".join(body)
        if undefined:
            return (self._header(tag, "SQ", UNDEFINED_LENGTH, implicit) + value
                    + b"\xfe\xff\xdd\xe0\x00\x00\x00\x00")
        return self._header(tag, "SQ", len(value), implicit) + value

    # -- the counters a rewrite adds to (Deidentifier.counts, not_parsed, private_kept_by)
    def _counters(self) -> tuple[Counter, Counter, Counter]:
        return self.counts, self.deid.not_parsed, self.deid.private_kept_by

    def _snapshot(self) -> tuple[Counter, ...]:
        """A copy of the counters, to put back when a rewrite is abandoned."""
        return tuple(Counter(c) for c in self._counters())

    def _restore(self, snapshot: tuple[Counter, ...]) -> None:
        """The counters as they were at ``snapshot``; no notes for this file."""
        for counter, before in zip(self._counters(), snapshot):
            counter.clear()
            counter.update(before)
        self.deid.notes = []

    # -- the elements that differ from the previous file of the series
    def _from_template(self, template: series_template.SeriesTemplate, data: bytes,
                       table: series_template.ElementTable,
                       changed: list[int], enhanced: bool, patient: PatientContext, implicit: bool,
                       state: dict, *, repattern: bool = False) -> dict[int, bytes] | None:
        """The de-identified top-level elements of ``data``, from the template's for the
        elements whose bytes are unchanged and de-identified anew for the others, plus
        the ones whose result depends on them (the other half of a date/time pair; the
        private creators of the level when a private element differs, PS3.5 7.8.1).
        With ``repattern`` (the blob pattern differs, explicit VR) every private element
        and every sequence (which may hold private ones) is de-identified anew as well,
        so each kept private value is cleaned with this file's pattern.
        The counters end as if the file had been rewritten whole: the template's
        increments, less those of the differing elements in the template file, plus
        theirs in this one. None (counters untouched) when it cannot be done so."""
        deid, counts = self.deid, self.counts
        subset = set(changed)
        private = False
        partners = []
        for i in changed:
            tag = int(table.tags[i])
            if (tag >> 16) & 1:
                if 0x10 <= tag & 0xFFFF <= 0xFF:
                    return None  # a private creator differs: which elements it names may differ
                private = True
            partner = series_template.PARTNERS.get(tag)
            if partner is not None:
                partners.append(partner)
        if partners:
            subset.update(j for j in table.find(partners) if j is not None)
        if repattern:
            subset.update(table.repattern_rows())
            private = True
        if private:
            subset.update(table.creators())
        old_table = template.elements
        # elements whose fate depends only on tag and encoding (the memo of _level): a copy
        # is its own bytes in either file, a drop leaves nothing and the same count; so
        # Pixel Data and the like are neither copied twice nor walked
        fates = self._fate
        copied: list[int] = []
        rows = []
        for i in sorted(subset):
            tag = int(table.tags[i])
            fate = fates.get((0, enhanced, tag, table.vrs[i], table.undefined[i]))
            if fate is not None and fate is fates.get((0, enhanced, tag, old_table.vrs[i], old_table.undefined[i])):
                if fate is _COPY:
                    copied.append(i)
                continue
            rows.append(i)
        snapshot = self._snapshot()
        counts_before, kept_before = snapshot[0], snapshot[2]

        def restore() -> None:
            self._restore(snapshot)
            deid._blob_pattern = self._blob_pattern

        try:
            deid._blob_pattern = template.blob_pattern  # the old elements as they were rewritten
            old_out = self._level(template.data, [old_table.entry(i) for i in rows], 0, enhanced, patient,
                                  implicit, {})
            old_counts = series_template.counter_delta(counts, counts_before)
            old_kept = series_template.counter_delta(deid.private_kept_by, kept_before)
            restore()
            new_out = self._level(data, [table.entry(i) for i in rows], 0, enhanced, patient, implicit, state)
        except FastPathUnsupported:
            restore()
            return None
        if deid.notes:
            restore()
            return None
        for counter, carried, old in ((counts, template.counts, old_counts),
                                      (deid.private_kept_by, template.kept_by, old_kept)):
            for k in set(carried) | set(old):
                extra = carried.get(k, 0) - old.get(k, 0)
                if extra < 0:  # pragma: no cover - the template's own increments include the old ones
                    restore()
                    return None
                if extra:
                    counter[k] += extra
        pieces = dict(template.pieces)
        for i in copied:
            tag, start, end = int(table.tags[i]), int(table.estart[i]), int(table.vstart[i] + table.vlen[i])
            if tag not in pieces:  # pragma: no cover - a copied element is in the template's output
                restore()
                return None
            pieces[tag] = data[start:end]
        for tag, _ in old_out:
            if pieces.pop(tag, None) is None:  # pragma: no cover - the old run made what the template holds
                restore()
                return None
        for tag, piece in new_out:
            if tag in pieces:  # pragma: no cover
                restore()
                return None
            pieces[tag] = piece
        if "sop" not in state and all(int(table.tags[i]) != 0x00080018 for i in subset):
            if template.sop is not None:
                state["sop"] = template.sop
        return pieces

    # -- a whole file
    def rewrite(self, data: bytes, fallback_key: str = "") -> tuple[bytes, PatientContext, dict]:
        """De-identified file bytes, the patient context and the original Study/Series UIDs."""
        deid = self.deid
        if deid._cleans_text or data[128:132] != b"DICM":
            raise FastPathUnsupported("text cleaning or no PS3.10 header")
        try:
            meta, pos = dicomio_walk.file_meta_elements(data)
        except dicomio_walk.WalkError as exc:
            raise FastPathUnsupported(str(exc)) from None
        meta_by = {e[0]: e for e in meta}
        if 0x00020010 not in meta_by or 0x00020001 not in meta_by:
            raise FastPathUnsupported("incomplete file meta")
        ts = self._strings(data, meta_by[0x00020010][2], meta_by[0x00020010][3])[0]
        if ts == TS_IMPLICIT_LE:
            implicit = True
        elif ts in (TS_EXPLICIT_BE, TS_DEFLATED_LE):
            raise FastPathUnsupported("big endian or deflated")
        else:
            implicit = False
        template, self._template = self._template, None
        aligned = None
        if (template is not None and self.use_template and template.transfer_syntax == ts
                and template.worth_aligning()):
            aligned = series_template.align(template, data, pos)
        if aligned is not None:
            table, changed = aligned
            entries = None
        else:
            try:
                entries, _ = dicomio_walk.walk_elements(data, pos, len(data), implicit)
            except dicomio_walk.WalkError as exc:
                raise FastPathUnsupported(str(exc)) from None
            table = series_template.ElementTable.from_entries(entries)
            if not table.sorted_unique():
                raise FastPathUnsupported("unsorted or duplicate tags")
        by_tag = {t: table.entry(i) for t, i in zip(_LOOKUP_TAGS, table.find(_LOOKUP_TAGS)) if i is not None}

        def text(tag):
            e = by_tag.get(tag)
            return "\\".join(self._strings(data, e[2], e[3])) if e is not None else ""

        pid, issuer = text(PATIENT_ID).strip(), text(ISSUER).strip()
        key = (pid, issuer, "" if pid else fallback_key)
        if key in deid._patients:
            pseudo, days, seconds = deid._patients[key]
            patient = PatientContext(pid, issuer, pseudo, days, seconds, None)
        else:
            shim = Dataset()
            for t in (PATIENT_ID, ISSUER):
                if t in by_tag:
                    shim._dict[t] = DataElement(t, "LO", text(t))
            patient = patient_context(shim, deid.secret, fallback_key, identifiers=False, cache=deid._patients)
        orig = {"StudyInstanceUID": text(0x0020000D), "SeriesInstanceUID": text(0x0020000E)}
        enhanced = SHARED_FG in by_tag or PER_FRAME_FG in by_tag
        self._blob_pattern = deid._blob_pattern = blob_pattern([data[by_tag[t][2]:by_tag[t][2] + by_tag[t][3]] if t in by_tag else b""
                                           for t in BLOB_IDENTIFIER_TAGS],
                                          data[by_tag[SPECIFIC_CHARSET][2]:by_tag[SPECIFIC_CHARSET][2]
                                               + by_tag[SPECIFIC_CHARSET][3]] if SPECIFIC_CHARSET in by_tag else b"")
        state: dict = {}
        snapshot = self._snapshot()
        counts_before, kept_before = snapshot[0], snapshot[2]
        deid.notes = []
        pieces = None
        # another blob pattern (its identifiers differ) re-cleans every kept private value
        repattern = template is not None and template.blob_pattern != self._blob_pattern \
            and bool(template.counts.get("private_kept"))
        if (aligned is not None and template.patient_key == key and template.enhanced == enhanced
                and not (repattern and implicit)):
            pieces = self._from_template(template, data, table, changed, enhanced, patient, implicit, state,
                                         repattern=repattern)
        if pieces is None:
            try:
                if entries is None:
                    entries = [table.entry(i) for i in range(len(table))]
                pieces = dict(self._level(data, entries, 0, enhanced, patient, implicit, state))
            except FastPathUnsupported:
                self._restore(snapshot)
                raise
        if not deid.notes:  # a file with notes is not a template: its notes are per file
            self._template = series_template.SeriesTemplate(
                data=data, start=pos, transfer_syntax=ts, implicit=implicit, elements=table, pieces=pieces,
                counts=series_template.counter_delta(self.counts, counts_before),
                kept_by=series_template.counter_delta(deid.private_kept_by, kept_before),
                sop=state.get("sop"), patient_key=key, blob_pattern=self._blob_pattern, enhanced=enhanced,
                repatterned=repattern)
        elements = [e for e in pieces.items() if e[0] not in _IDENTITY_TAGS]
        elements += list(self._identity_elements(implicit).items())
        elements.sort(key=lambda x: x[0])
        # file meta (PS3.10 7.1): kept elements copied, MediaStorageSOPInstanceUID follows the SOP
        meta_parts = {
            0x00020012: self._text_element(0x00020012, "UI", "UI", IMPLEMENTATION_CLASS_UID, False),
            0x00020013: self._text_element(0x00020013, "SH", "SH", IMPLEMENTATION_VERSION_NAME, False),
        }
        for tag, vr, vstart, vlen, undefined, estart in meta:
            if tag == 0x00020000 or tag not in FILE_META_KEEP or tag in meta_parts:
                continue
            if tag == 0x00020003:
                sop = state.get("sop") or deid.new_uid(_first_string(data, vstart, vlen))
                meta_parts[tag] = self._text_element(tag, "UI", "UI", sop, False)
            else:
                meta_parts[tag] = data[estart:vstart + vlen]
        meta_bytes = b"".join(meta_parts[t] for t in sorted(meta_parts))
        head = (b"\x00" * 128 + b"DICM" + _HDR_SHORT.pack(2, 0, b"UL", 4) + _U32.pack(len(meta_bytes))
                + meta_bytes)
        out = head + b"".join(b for _, b in elements)
        self._last = (out, _image_elements(elements, len(head), implicit))
        self.counts["instances"] += 1
        return out, patient, orig

    def image_elements(self, out: bytes) -> list[tuple] | None:
        """Where the image attributes and Pixel Data are in ``out``, when ``out`` is
        what the last :meth:`rewrite` returned (for the burned-in text screen,
        :func:`.pixels.image_of_elements`, so it need not walk the bytes again)."""
        if self._last is not None and self._last[0] is out:
            return self._last[1]
        return None


def _image_elements(elements: list[tuple[int, bytes]], start: int, implicit: bool) -> list[tuple]:
    """``(tag, VR, value start, value length, undefined)`` of the image attributes
    (:data:`.pixels.IMAGE_TAGS`) among the encoded top-level ``elements`` written
    from offset ``start`` (PS3.5 7.1.2 explicit, 7.1.3 implicit VR headers)."""
    found = []
    pos = start
    for tag, piece in elements:
        if tag in IMAGE_TAGS:
            _, vrb, header, length = dicomio_walk.element_header(piece, 0, implicit)
            vr = None if implicit else dicomio_walk.VR_NAMES.get(vrb)
            found.append((tag, vr, pos + header, len(piece) - header, length == UNDEFINED_LENGTH))
        pos += len(piece)
    return found


def _first_string(data: bytes, vstart: int, vlen: int) -> str:
    """The first value of a text element (a UID of the file meta)."""
    values = ByteRewriter._strings(data, vstart, vlen)
    return values[0] if values else ""


def rewriter_of(deid: Deidentifier) -> ByteRewriter:
    """The byte-level fast path of ``deid``, made once and kept on it (it shares the
    Deidentifier's plan, caches and counts)."""
    if deid._rewriter is None:
        deid._rewriter = ByteRewriter(deid)
    return deid._rewriter
