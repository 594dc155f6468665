"""The previous file of a series as a template for the next (:class:`.fast_path.ByteRewriter`).

The files of a series share almost every byte of their headers: the same
elements, in the same order, mostly with the same values; the SOP Instance UID,
instance number, position, a few times and the pixels differ. :func:`align`
matches a new file's top-level data elements (PS3.5 7.1) to the previous file's:
a run of elements whose bytes (headers and values) are identical is the same
run at a shifted offset; an element whose bytes differ must have the same tag
and VR, and its header gives its new length (PS3.5 7.1.2, 7.1.3; an undefined
length ends at its delimiter, 7.5). The rewriter then de-identifies only the
elements that differ (and those whose result depends on them) and keeps the
previous output of the others.

Nothing here decides what is kept: it only says which elements are byte for
byte what they were in the file before.
"""
from __future__ import annotations

import struct
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from .. import dicomio_walk
from ..dicomio_walk import UNDEFINED_LENGTH, VR_NAMES
from .dates import DATE_TIME_PAIRS

#: DA tag -> TM tag and TM tag -> DA tag of the date/time pairs shifted together
#: (:data:`.dates.DATE_TIME_PAIRS`): one of a pair differing re-does both.
PARTNERS: dict[int, int] = {**DATE_TIME_PAIRS, **{t: d for d, t in DATE_TIME_PAIRS.items()}}

#: Bytes compared at once when looking for the next element that differs.
WINDOW = 8192
#: More elements than this (or a quarter of them) differing: not the same kind of file.
MAX_CHANGED = 48
#: Fewer top-level elements than this: walking the next file is as cheap as matching it.
MIN_ELEMENTS = 150


class ElementTable:
    """A data set's top-level elements as arrays (PS3.5 7.1): tag, value start and
    length, element start, VR and undefined length, in file order (ascending tags)."""

    __slots__ = ("tags", "vstart", "vlen", "estart", "vrs", "undefined", "_creators")

    def __init__(self, tags: np.ndarray, vstart: np.ndarray, vlen: np.ndarray, estart: np.ndarray,
                 vrs: list, undefined: list) -> None:
        self.tags, self.vstart, self.vlen, self.estart = tags, vstart, vlen, estart
        self.vrs, self.undefined = vrs, undefined
        self._creators: list[int] | None = None

    @classmethod
    def from_entries(cls, entries: list[tuple]) -> "ElementTable":
        """From :func:`dicomio_walk.walk_elements` entries ``(tag, vr, vstart, vlen, undefined, estart)``."""
        if not entries:
            empty = np.zeros(0, np.int64)
            return cls(empty, empty, empty, empty, [], [])
        tags, vrs, vstart, vlen, undefined, estart = zip(*entries)
        return cls(np.array(tags, np.int64), np.array(vstart, np.int64), np.array(vlen, np.int64),
                   np.array(estart, np.int64), list(vrs), list(undefined))

    def __len__(self) -> int:
        return len(self.tags)

    def sorted_unique(self) -> bool:
        return bool(np.all(np.diff(self.tags) > 0))

    def entry(self, i: int) -> tuple:
        """The walker's tuple for element ``i`` (what :meth:`ByteRewriter._level` reads)."""
        return (int(self.tags[i]), self.vrs[i], int(self.vstart[i]), int(self.vlen[i]), self.undefined[i],
                int(self.estart[i]))

    def find(self, tags) -> list[int | None]:
        """The index of each of ``tags``, or None when the data set does not have it."""
        wanted = np.asarray(tags, np.int64)
        at = np.searchsorted(self.tags, wanted)
        found = at < len(self.tags)
        found[found] = self.tags[at[found]] == wanted[found]
        return [int(i) if ok else None for i, ok in zip(at, found)]

    def repattern_rows(self) -> list[int]:
        """Indices of the private elements (odd group) and of the sequences (explicit VR
        SQ, or any undefined length other than Pixel Data): where kept private values are."""
        odd = (self.tags >> 16) & 1 == 1
        nested = np.array([vr == "SQ" or bool(und) for vr, und in zip(self.vrs, self.undefined)], bool)
        nested &= self.tags != 0x7FE00010
        return np.flatnonzero(odd | nested).tolist()

    def creators(self) -> list[int]:
        """Indices of the private creator elements (gggg,0010-00FF), odd gggg (PS3.5 7.8.1)."""
        if self._creators is None:
            el = self.tags & 0xFFFF
            mask = ((self.tags >> 16) & 1 == 1) & (el >= 0x10) & (el <= 0xFF)
            self._creators = np.flatnonzero(mask).tolist()
        return self._creators


@dataclass
class SeriesTemplate:
    """One rewritten file: its bytes, top-level elements and what they became."""

    data: bytes
    #: the data set's start (after the file meta) and transfer syntax
    start: int
    transfer_syntax: str
    implicit: bool
    elements: ElementTable
    #: the de-identified top-level elements by tag (before the identity elements are set)
    pieces: dict[int, bytes]
    #: what this file added to the counters (:attr:`Deidentifier.counts`, ``private_kept_by``)
    counts: Counter = field(default_factory=Counter)
    kept_by: Counter = field(default_factory=Counter)
    #: the new SOP Instance UID (for the file meta), the patient key, the blob pattern
    sop: str | None = None
    patient_key: tuple = ()
    blob_pattern: object = None
    enhanced: bool = False
    #: this file's blob pattern differed from the file before while private values are kept
    repatterned: bool = False

    def worth_aligning(self) -> bool:
        """Whether the next file is likely to be cheaper from this template than walked:
        a header of many elements (a CT slice of ~90 walks in 0.05 ms), and a blob
        pattern that did not change at this file (when its identifiers, e.g. an
        acquisition time, change per file, every kept private value is cleaned anew
        anyway)."""
        return len(self.elements) >= MIN_ELEMENTS and not self.repatterned


def align(template: SeriesTemplate, data: bytes, start: int) -> tuple[ElementTable, list[int]] | None:
    """The top-level elements of ``data`` (from ``start``), found by matching the
    template's, and the indices of those whose bytes differ.

    None when the files do not line up (another tag or VR at a place, bytes left
    over or missing): the caller walks the file instead.
    """
    old_table = template.elements
    n = len(old_table)
    if not n:
        return None
    old, implicit = template.data, template.implicit
    a, b = np.frombuffer(old, np.uint8), np.frombuffer(data, np.uint8)
    estart, vstart, vlen = old_table.estart, old_table.vstart, old_table.vlen
    ends = vstart + vlen
    read = dicomio_walk.header_reader(implicit)
    shift = start - template.start
    first_shift = shift
    increments = np.zeros(n + 1, np.int64)
    changed: list[int] = []
    new_lengths: list[int] = []
    new_undefined: list[bool] = []
    size_old, size_new = len(old), len(data)
    limit = max(MAX_CHANGED, n // 4)
    # the differing bytes of the last window compared, as offsets in the template, for
    # the shift they were compared at: the next element after one whose length did not
    # change is looked up there instead of comparing again
    window_start = window_end = window_shift = -1
    differing = np.zeros(0, np.int64)
    i = 0
    try:
        while i < n:
            p = int(estart[i])
            q = p + shift
            if shift != window_shift or not window_start <= p < window_end:
                width = min(WINDOW, size_old - p, size_new - q)
                if width <= 0:
                    return None
                differing = p + np.flatnonzero(a[p:p + width] != b[q:q + width])
                window_start, window_end, window_shift = p, p + width, shift
            k = int(np.searchsorted(differing, p))
            if k < len(differing):
                j = int(np.searchsorted(ends, int(differing[k]), "right"))
            else:
                j = int(np.searchsorted(ends, window_end, "right"))
                if j > i:          # elements i..j-1 end inside the window: all unchanged
                    i = j
                    continue
                end = int(ends[i])  # element i is longer than the window: compare it whole (views, no copies)
                if end - p <= size_new - q and np.array_equal(a[p:end], b[q:q + end - p]):
                    i += 1
                    continue
                j = i
            # elements i..j-1 are unchanged; element j differs
            e = int(estart[j]) + shift
            tag, vrb, new_vstart, length = read(data, e)
            if tag != int(old_table.tags[j]) or (not implicit and VR_NAMES.get(vrb) != old_table.vrs[j]):
                return None
            undefined = length == UNDEFINED_LENGTH
            if undefined:
                length = dicomio_walk.skip_undefined(data, new_vstart, size_new, implicit) - new_vstart
            elif new_vstart + length > size_new:
                return None
            changed.append(j)
            if len(changed) > limit:  # another kind of file: walking it is cheaper
                return None
            new_lengths.append(length)
            new_undefined.append(undefined)
            new_shift = new_vstart + length - int(ends[j])
            increments[j + 1] += new_shift - shift
            shift = new_shift
            i = j + 1
    except (dicomio_walk.WalkError, struct.error):  # bytes that do not line up, a header past the end
        return None
    if int(ends[-1]) + shift != size_new:
        return None
    shifts = first_shift + np.cumsum(increments[:n])
    new_vlen = vlen.copy()
    undefined_flags = list(old_table.undefined)
    if changed:
        new_vlen[changed] = new_lengths
        for j, flag in zip(changed, new_undefined):
            undefined_flags[j] = flag
    table = ElementTable(old_table.tags, vstart + shifts, new_vlen, estart + shifts, old_table.vrs, undefined_flags)
    table._creators = old_table._creators
    return table, changed


def counter_delta(after: Counter, before: Counter) -> Counter:
    """What a step added to a counter (only increments happen)."""
    return Counter({k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)})
