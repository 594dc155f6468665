"""Decoded SEG masks merged and written: per-segment NIfTI, a labelled 3D Slicer
``.seg.nrrd`` and the segment metadata JSON (the masks come from
:mod:`dicomprep.convert.seg`).

Segment attributes follow the Segment Sequence (0062,0002) of the
Segmentation Image Module (PS3.3 C.8.20.2): SegmentNumber (0062,0004),
SegmentLabel (0062,0005), the category/type code sequences (0062,0003 /
0062,000F) and RecommendedDisplayCIELabValue (0062,000D).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from .. import geometry
from ..dicomio import atomic_path, atomic_write
from .seg import SegmentInfo, SegmentMask


# --- merging ---------------------------------------------------------------------

class _MergeRule:
    """Accumulates the union of one ``seg.merge`` rule ``{new, from, segmentation}``
    over a stream of masks of one SEG."""

    def __init__(self, rule: dict):
        self.new = str(rule["new"])
        self.pattern = rule.get("segmentation")
        self.wanted = [str(x) for x in rule.get("from", [])]
        self.lower = {w.lower() for w in self.wanted}
        self.data: np.ndarray | None = None
        self.found: list[SegmentMask] = []
        self.applies: bool | None = None

    def add(self, m: SegmentMask) -> None:
        if self.applies is None:
            self.applies = not self.pattern or bool(re.search(self.pattern, m.series_description or ""))
        if not self.applies or m.segment.label.lower() not in self.lower:
            return
        if self.data is None:
            self.data = m.data.copy()
        else:
            np.maximum(self.data, m.data.astype(self.data.dtype), out=self.data)
        self.found.append(m)

    def result(self, name: str) -> tuple[SegmentMask | None, list[str]]:
        if not self.applies:
            return None, []
        have = {m.segment.label.lower() for m in self.found}
        missing = [w for w in self.wanted if w.lower() not in have]
        problems = []
        if missing and (self.found or self.pattern):
            problems.append(f"seg.merge '{self.new}': segment(s) {', '.join(missing)} not in segmentation '{name}'")
        if not self.found:
            return None, problems
        base = self.found[0]
        info = SegmentInfo(number=0, label=self.new,
                           description="union of " + ", ".join(m.segment.label for m in self.found))
        mask = SegmentMask(segment=info, data=self.data, affine=base.affine, voxel_ml=base.voxel_ml,
                           seg_path=base.seg_path, series_description=base.series_description,
                           segmentation_type=base.segmentation_type, sop_class_uid=base.sop_class_uid,
                           source_series_uid=base.source_series_uid, placement=base.placement,
                           n_frames_unplaced=base.n_frames_unplaced,
                           merged_from=[m.segment.label for m in self.found])
        return mask, problems


def merge_masks(masks: Sequence[SegmentMask], rules: Sequence[dict]) -> tuple[list[SegmentMask], list[str]]:
    """Union masks per ``seg.merge`` rule ``{new, from: [labels], segmentation: regex}``.

    Labels match SegmentLabel case-insensitively; ``segmentation`` (a regex on
    the exported name, SeriesDescription) limits a rule to some SEGs. Returns
    the new masks (the originals are not modified) and problems found: labels
    missing from a SEG the rule names, or from one that has some of its labels.
    """
    accs = [_MergeRule(r) for r in rules or []]
    for m in masks:
        for acc in accs:
            acc.add(m)
    out, problems = [], []
    name = masks[0].series_description if masks else ""
    for acc in accs:
        mask, probs = acc.result(name)
        problems += probs
        if mask is not None:
            out.append(mask)
    return out, problems


# --- writing ---------------------------------------------------------------------

def label_slug(label: str) -> str:
    """File-name token of a segment label: lower-case letters, digits and ``-``."""
    s = re.sub(r"[^a-z0-9]+", "-", str(label).lower()).strip("-")
    return s or "segment"


def _write_nifti(data: np.ndarray, affine: np.ndarray, path: Path) -> None:
    import nibabel as nib

    img = nib.Nifti1Image(data, affine)
    img.header.set_qform(affine, code=1)
    img.header.set_sform(affine, code=1)
    if data.dtype == np.uint8:
        img.header.set_slope_inter(1, 0)
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))


def overlapping(masks: Sequence[SegmentMask]) -> bool:
    """True when any voxel belongs to two segments."""
    total = np.zeros(masks[0].data.shape, np.uint16)
    for m in masks:
        total += (m.data > 0)
    return bool((total > 1).any())


@dataclass
class WrittenSegmentation:
    """What :func:`write_masks` wrote: files, one summary per mask, problems."""

    paths: list
    segments: list
    problems: list

    def __iter__(self):
        return iter(self.paths)


class _SegNrrd:
    """Builds Slicer's ``.seg.nrrd`` segment by segment: each segment goes to the
    first layer it does not overlap, with the next free label value there."""

    def __init__(self):
        self.layers: list[np.ndarray] = []
        self.header: dict = {}
        self.n = 0
        self.affine = None

    def add(self, m: SegmentMask) -> None:
        on = m.data > 0
        self.affine = m.affine
        layer = next((i for i, lay in enumerate(self.layers) if not lay[on].any()), None)
        if layer is None:
            self.layers.append(np.zeros(on.shape, np.uint8))
            layer = len(self.layers) - 1
        value = int(self.layers[layer].max()) + 1
        self.layers[layer][on] = value
        rgb = m.segment.rgb or [128, 174, 128]
        idx = np.nonzero(on)
        extent = " ".join(f"{int(a.min())} {int(a.max())}" for a in idx) if on.any() else "0 -1 0 -1 0 -1"
        term = _terminology(m.segment)
        n = self.n
        self.header.update({
            f"Segment{n}_ID": f"Segment_{n + 1}", f"Segment{n}_Name": m.segment.label,
            f"Segment{n}_Color": " ".join(f"{c / 255:.6g}" for c in rgb),
            f"Segment{n}_ColorAutoGenerated": "0", f"Segment{n}_LabelValue": str(value),
            f"Segment{n}_Layer": str(layer), f"Segment{n}_Extent": extent,
            f"Segment{n}_NameAutoGenerated": "0",
            f"Segment{n}_Tags": (f"TerminologyEntry:{term}|" if term else "|"),
        })
        self.n += 1

    def write(self, path: str | Path) -> Path:
        import nrrd

        data = np.stack(self.layers, axis=0)
        lps = geometry.LPS_TO_RAS @ self.affine          # RAS -> LPS (the flip is its own inverse)
        dirs = [lps[:3, i].tolist() for i in range(3)]
        header = {"type": "unsigned char", "space": "left-posterior-superior", "encoding": "gzip",
                  "space origin": lps[:3, 3].tolist(),
                  "Segmentation_MasterRepresentation": "Binary labelmap",
                  "Segmentation_ContainedRepresentationNames": "Binary labelmap|",
                  "Segmentation_ReferenceImageExtentOffset": "0 0 0",
                  "Segmentation_ConversionParameters": "", **self.header}
        if data.shape[0] == 1:      # one layer: a plain 3-D label volume
            data = data[0]
            header.update({"dimension": 3, "kinds": ["domain"] * 3, "space directions": dirs})
        else:
            header.update({"dimension": 4, "kinds": ["list", "domain", "domain", "domain"],
                           "space directions": [[np.nan] * 3] + dirs})
        path = Path(path)
        with atomic_path(path) as tmp:
            nrrd.write(str(tmp), data, header)
        return path


def write_seg_nrrd(masks: Sequence[SegmentMask], path: str | Path) -> Path:
    """3D Slicer segmentation file (``.seg.nrrd``): ``[layer, i, j, k]`` uint8 in LPS
    (3-D when one layer suffices), segments in the fewest non-overlapping layers,
    described by ``Segment<n>_ID/_Name/_Color/_LabelValue/_Layer/_Extent/_Tags``
    (Slicer's vtkMRMLSegmentationStorageNode conventions)."""
    builder = _SegNrrd()
    for m in masks:
        builder.add(m)
    return builder.write(path)


def write_masks(masks: Iterable[SegmentMask], out_dir: str | Path, *, series_id: str, assessor_id: str,
                labelmap: bool = False, fmt: str = "nifti", merge_rules: Sequence[dict] = (),
                merged: Sequence[SegmentMask] = (), json_extra: dict | None = None) -> WrittenSegmentation:
    """Write one ``uint8`` NIfTI per segment (``<series_id>_seg-<label>_<assessor_id>.nii.gz``),
    the unions of ``merge_rules`` (and any precomputed ``merged`` masks), a label
    map if ``labelmap`` and the segments do not overlap, Slicer ``.seg.nrrd`` if
    ``fmt == 'nrrd'``, and ``<series_id>_seg_<assessor_id>.json`` describing them.

    ``masks`` may be a generator (:func:`iter_segment_masks`): each mask is
    written and released before the next is decoded. Names carry no original
    identifier: ``series_id`` and ``assessor_id`` must already be share-safe.
    """
    out_dir = Path(out_dir)
    result = WrittenSegmentation([], [], [])
    used: set[str] = set()
    accs = [_MergeRule(r) for r in merge_rules or []]
    nrrd_builder = _SegNrrd() if fmt == "nrrd" else None
    lm: np.ndarray | None = None
    lm_overlap = False
    first: SegmentMask | None = None

    def emit(m: SegmentMask) -> None:
        slug = label_slug(m.segment.label)
        if slug in used:
            slug = f"{slug}-{m.segment.number}" if m.segment.number else f"{slug}-merged"
        used.add(slug)
        path = out_dir / f"{series_id}_seg-{slug}_{assessor_id}.nii.gz"
        data = m.data if m.data.dtype.kind == "f" else m.data.astype(np.uint8, copy=False)
        _write_nifti(data, m.affine, path)
        m.file = path.name
        result.paths.append(path)
        result.segments.append({**m.segment.share_dict(), "file": path.name, "n_voxels": m.n_voxels,
                                "volume_ml": round(m.volume_ml, 4), "merged_from": m.merged_from,
                                "placement": m.placement, "frames_unplaced": m.n_frames_unplaced})
        if nrrd_builder is not None:
            nrrd_builder.add(m)

    for m in masks:
        first = first or m
        emit(m)
        for acc in accs:
            acc.add(m)
        if labelmap and not lm_overlap:
            on = m.data > 0
            if lm is None:
                lm = np.zeros(m.data.shape, np.uint16)
            if lm[on].any():
                lm_overlap, lm = True, None
            else:
                lm[on] = m.segment.number
    extra = list(merged)
    for acc in accs:
        mask, probs = acc.result(first.series_description if first else "")
        result.problems += probs
        if mask is not None:
            extra.append(mask)
    for m in extra:
        emit(m)
    base = f"{series_id}_seg_{assessor_id}"
    meta: dict[str, Any] = {"segmentation_type": first.segmentation_type if first else "",
                            "sop_class_uid": first.sop_class_uid if first else "",
                            "placement": first.placement if first else "",
                            "frames_unplaced": first.n_frames_unplaced if first else 0,
                            "shape": list(first.data.shape) if first else [],
                            "affine_ras": first.affine.round(6).tolist() if first else [],
                            "segments": result.segments, "labelmap": None, "seg_nrrd": None,
                            "problems": result.problems}
    if json_extra:
        meta.update(json_extra)
    if labelmap and first is not None:
        if lm_overlap:
            meta["labelmap"] = "not written: segments overlap"
        else:
            path = out_dir / f"{series_id}_seg-labelmap_{assessor_id}.nii.gz"
            _write_nifti(lm.astype(np.uint8) if lm.max() < 256 else lm, first.affine, path)
            result.paths.append(path)
            meta["labelmap"] = path.name
    if nrrd_builder is not None and nrrd_builder.n:
        path = nrrd_builder.write(out_dir / f"{base}.seg.nrrd")
        result.paths.append(path)
        meta["seg_nrrd"] = path.name
    jpath = out_dir / f"{base}.json"
    with atomic_write(jpath, "w") as fh:
        json.dump(meta, fh, indent=2, default=_json_default)
    result.paths.append(jpath)
    return result


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def _terminology(s: SegmentInfo) -> str:
    """Slicer TerminologyEntry tag: context~category~type~modifier~region… (codes as scheme^value^meaning)."""
    def c(code):
        return f"{code.get('scheme', '')}^{code.get('value', '')}^{code.get('meaning', '')}" if code else "^^"
    if not s.category and not s.type:
        return ""
    return "~".join(["Segmentation category and type - DICOM master list", c(s.category), c(s.type), "^^",
                     "Anatomic codes - DICOM master list", c(s.anatomic_region), "^^"])
