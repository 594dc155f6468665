"""Per-unit SEG inventories: what segmentations a unit has, in private and share-safe form.

Inventories (written for every unit, whatever is selected):

* ``private/seg/<unit>/{sources,segmentations,segments}.csv`` + ``inventory.json``
  with original names: source series (folder, SeriesNumber, SeriesInstanceUID,
  SeriesDescription, SOPClassUID), segmentations (assessor folder, segmentor
  and creation time from the XNAT catalog XML — else ContentCreatorName
  (0070,0084) and ContentDate/Time (0008,0023/0033) of the SEG —, exported name
  = SeriesDescription (0008,103E), ContentLabel (0070,0080), referenced series
  UID (ReferencedSeriesSequence (0008,1115)), SOP class, SegmentationType
  (0062,0001)) and segments (number, label, category/type codes, RGB colour).
* ``share/tables/seg/<unit>/...`` the same, pseudonymous: no UIDs, folder names,
  person names or dates; the assessor is ``A<short_id>``, the segmentor
  ``R<short_id>``, the series its ``series_id``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from ..deid.pseudonym import short_id
from ..dicomio import atomic_path, atomic_write, read_dataset, value_text
from ..errors import DicomprepError
from ..layout import find_xnat_catalogs, read_xnat_catalog
from ..tables import share_safe_text
from .seg import segment_infos

_ASSESSOR_MARKERS = {"assessors"}
_NO_SECRET = b"dicomprep-no-secret-anonymisation-off"


# --- small helpers ------------------------------------------------------------------

def _pseudo(secret: bytes | None, kind: str, *parts: str) -> str:
    """A short keyed pseudonym (``short_id``); a fixed key when anonymisation is off."""
    return short_id(secret or _NO_SECRET, kind, *parts)


def assessor_folder(path: str | Path) -> tuple[str, Path | None]:
    """(assessor folder name, its path) of a SEG file: the folder after ``ASSESSORS``
    (XNAT session layout, any case); else the SEG's own parent folder and None."""
    p = Path(path)
    parts = p.parts
    for i, part in enumerate(parts[:-1]):
        if part.lower() in _ASSESSOR_MARKERS and i + 1 < len(parts) - 1:
            return parts[i + 1], Path(*parts[: i + 2])
    return p.parent.name, None


def catalog_fields(assessor_dir: Path | None) -> dict:
    """createdBy / createdTime of the assessor's XNAT catalog XML ({} when none)."""
    if assessor_dir is None or not assessor_dir.is_dir():
        return {}
    for cat in find_xnat_catalogs(assessor_dir):
        try:
            fields = read_xnat_catalog(cat)
        except DicomprepError:
            continue
        if fields.get("createdBy") or fields.get("createdTime"):
            return fields
    return {}


# --- inventories -------------------------------------------------------------------

def source_inventory(instances: pd.DataFrame) -> pd.DataFrame:
    """One row per non-SEG series of the unit (original names)."""
    rows = []
    img = instances[instances["kind"].astype(str) != "seg"] if "kind" in instances else instances
    for key, grp in img.groupby("series_key", sort=True):
        first = grp.iloc[0]
        rows.append({"series_key": key, "series_id": first.get("series_id"),
                     "folder": str(Path(str(first.get("relpath", first.get("path", "")))).parent),
                     "SeriesNumber": first.get("SeriesNumber"), "SeriesInstanceUID": first.get("SeriesInstanceUID"),
                     "SeriesDescription": first.get("SeriesDescription"), "SOPClassUID": first.get("SOPClassUID"),
                     "kind": first.get("kind"), "n_instances": len(grp)})
    return pd.DataFrame(rows, columns=["series_key", "series_id", "folder", "SeriesNumber", "SeriesInstanceUID",
                                       "SeriesDescription", "SOPClassUID", "kind", "n_instances"])


def _referenced_series(ds) -> tuple[str, list[str]]:
    """ReferencedSeriesSequence (0008,1115): first SeriesInstanceUID and all instance UIDs."""
    series, sops = "", []
    for item in getattr(ds, "ReferencedSeriesSequence", None) or []:
        series = series or value_text(getattr(item, "SeriesInstanceUID", "")).strip()
        for inst in getattr(item, "ReferencedInstanceSequence", None) or []:
            sops.append(value_text(getattr(inst, "ReferencedSOPInstanceUID", "")).strip())
    return series, sops


def seg_inventory(seg_rows: pd.DataFrame, secret: bytes | None, orig_unit: str = "") -> list[dict]:
    """One record per SEG file of the unit (every file, not only the first per folder).

    ``seg_rows``: instance rows of kind ``seg`` with ``path`` (original) and
    ``source_path`` (the file to decode). Each record holds private fields
    (``orig_*``) and share-safe ones.
    """
    records = []
    for _, row in seg_rows.sort_values(["series_key", "path"]).iterrows():
        rec: dict[str, Any] = {"series_key": row["series_key"], "series_id": row.get("series_id"),
                               "path": row["path"], "source_path": row["source_path"]}
        try:
            orig = read_dataset(row["path"], stop_before_pixels=True)
            used = orig if row["source_path"] == row["path"] else read_dataset(row["source_path"],
                                                                                stop_before_pixels=True)
        except DicomprepError as exc:
            rec.update(error=str(exc), segments=[])
            records.append(rec)
            continue
        folder, assessor_dir = assessor_folder(row["path"])
        cat = catalog_fields(assessor_dir)
        segmentor = value_text(cat.get("createdBy")).strip() or value_text(getattr(orig, "ContentCreatorName", "")).strip()
        created = value_text(cat.get("createdTime")).strip() or " ".join(
            x for x in (value_text(getattr(orig, "ContentDate", "")).strip(), value_text(getattr(orig, "ContentTime", "")).strip()) if x)
        ref_series, ref_sops = _referenced_series(used)
        orig_ref_series, _ = _referenced_series(orig)
        rec.update({
            "orig_assessor_folder": folder, "assessor_id": "A" + _pseudo(secret, "assessor", orig_unit, folder),
            "orig_segmentor": segmentor, "segmentor_id": ("R" + _pseudo(secret, "segmentor", segmentor)) if segmentor else "",
            "orig_created": created, "catalog": bool(cat),
            "orig_name": value_text(getattr(orig, "SeriesDescription", "")).strip(),
            "name": value_text(getattr(used, "SeriesDescription", "")).strip(),
            "content_label": value_text(getattr(used, "ContentLabel", "")).strip(),
            "orig_seg_series_uid": value_text(getattr(orig, "SeriesInstanceUID", "")).strip(),
            "orig_referenced_series_uid": orig_ref_series,
            "referenced_series_uid": ref_series, "referenced_sop_uids": ref_sops,
            "frame_of_reference_uid": value_text(getattr(used, "FrameOfReferenceUID", "")).strip(),
            "sop_class_uid": value_text(getattr(used, "SOPClassUID", "")).strip(),
            "segmentation_type": value_text(getattr(used, "SegmentationType", "")).strip(),
            "n_frames": int(getattr(used, "NumberOfFrames", 1) or 1),
            "segments": [s.as_dict() for s in segment_infos(used)],
        })
        records.append(rec)
    # Several SEGs in one assessor folder: number them so file names stay unique.
    by_assessor: dict[str, list[dict]] = {}
    for rec in records:
        if "assessor_id" in rec:
            by_assessor.setdefault(rec["assessor_id"], []).append(rec)
    for recs in by_assessor.values():
        if len(recs) > 1:
            for i, rec in enumerate(recs, start=1):
                rec["assessor_id"] = f"{rec['assessor_id']}-{i}"
    return records


def _segments_table(records: list[dict], share: bool) -> pd.DataFrame:
    rows = []
    for rec in records:
        for s in rec.get("segments", []):
            rows.append({
                "assessor_id": rec.get("assessor_id"), "series_id": rec.get("series_id"),
                **({} if share else {"assessor_folder": rec.get("orig_assessor_folder"),
                                     "segmentation": rec.get("orig_name")}),
                "name": rec.get("name"),
                "segment_number": s["number"], "segment_label": s["label"],
                "category_code": s["category"].get("value", ""), "category_scheme": s["category"].get("scheme", ""),
                "category_meaning": s["category"].get("meaning", ""),
                "type_code": s["type"].get("value", ""), "type_scheme": s["type"].get("scheme", ""),
                "type_meaning": s["type"].get("meaning", ""),
                "algorithm_type": s.get("algorithm_type", ""),
                "rgb": " ".join(map(str, s["rgb"])) if s.get("rgb") else "",
                "cielab": " ".join(map(str, s["cielab"])) if s.get("cielab") else "",
                **({} if share else {"description": s.get("description", ""), "tracking_id": s.get("tracking_id", "")}),
            })
    return pd.DataFrame(rows)


def _segmentations_table(records: list[dict], share: bool) -> pd.DataFrame:
    rows = []
    for rec in records:
        base = {"series_key": rec["series_key"], "series_id": rec.get("series_id"),
                "assessor_id": rec.get("assessor_id"), "segmentor_id": rec.get("segmentor_id"),
                "name": rec.get("name"), "sop_class_uid": rec.get("sop_class_uid"),
                "segmentation_type": rec.get("segmentation_type"), "n_frames": rec.get("n_frames"),
                "n_segments": len(rec.get("segments", [])), "source_series_id": rec.get("source_series_id", ""),
                "selected": rec.get("selected", False), "error": rec.get("error", "")}
        if share:
            base.pop("series_key")
            base["error"] = share_safe_text(base["error"])
        else:
            base.update({"file": rec["path"], "assessor_folder": rec.get("orig_assessor_folder"),
                         "segmentor": rec.get("orig_segmentor"), "created": rec.get("orig_created"),
                         "exported_name": rec.get("orig_name"), "content_label": rec.get("content_label"),
                         "seg_series_uid": rec.get("orig_seg_series_uid"),
                         "referenced_series_uid": rec.get("orig_referenced_series_uid"),
                         "selection_reason": rec.get("selection_reason", "")})
        rows.append(base)
    return pd.DataFrame(rows)


def write_inventories(share_dir: Path, private_dir: Path | None, sources: pd.DataFrame,
                      records: list[dict]) -> list[Path]:
    """Write the share-safe (``share_dir``) and private (``private_dir``, if
    given) inventories (CSV + JSON) of one unit."""
    written = []
    for share in (False, True):
        if not share and private_dir is None:
            continue
        folder = Path(share_dir) if share else Path(private_dir)
        src = sources[["series_id", "SOPClassUID", "kind", "n_instances"]] if share else sources
        tables = {"sources.csv": src, "segmentations.csv": _segmentations_table(records, share),
                  "segments.csv": _segments_table(records, share)}
        for name, df in tables.items():
            with atomic_path(folder / name) as tmp:
                df.to_csv(tmp, index=False)
            written.append(folder / name)
        payload = {"sources": src.to_dict(orient="records"),
                   "segmentations": _segmentations_table(records, share).to_dict(orient="records"),
                   "segments": _segments_table(records, share).to_dict(orient="records")}
        with atomic_write(folder / "inventory.json", "w") as fh:
            json.dump(payload, fh, indent=2, default=str)
        written.append(folder / "inventory.json")
    return written
