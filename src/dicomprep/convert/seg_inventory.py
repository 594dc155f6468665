"""Per-unit SEG inventories, selection (config ``seg``) and the ``convert_seg`` job.

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

Selection (``seg`` config): ``segmentor`` / ``name`` / ``assessor`` are regexes
(case-insensitive, ``re.search``) on the segmentor, the exported name and the
assessor folder. ``table`` is a CSV (``,`` or ``;``) or Excel (.xlsx/.xls) file:

* one row per case; the case column is the first column named ``case``,
  ``subject``, ``session``, ``patient``, ``patientid``, ``experiment``, ``label``
  or ``id`` (any case), else the first column. A case matches a unit by its
  original subject / session (scan) folder, the unit key, its pseudonymous
  subject / scan, or PatientID;
* the segmentation names: a column named ``segmentation(s)``, ``seg(s)``,
  ``name(s)``, ``segment(s)`` or ``labels`` holding names separated by ``,``
  ``;`` or ``|``; else every other column, one or more names per cell (the XNAT
  scripts' sheet with one column per segmentation works as is);
* a name matches a SEG's exported name, ContentLabel or assessor folder
  (case-insensitive, exact). Names the unit does not have become reason rows.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..dicomio import atomic_path, atomic_write, read_dataset
from ..errors import ConfigError, DicomprepError, is_environment_error
from ..logs import get_logger
from .seg import SEG_SOP_CLASSES, SegDecoder, SegOptions, segment_infos, source_grid, write_masks

MANIFEST_COLUMNS = ["series_key", "series_id", "status", "reason", "outputs", "assessor_id", "segmentation",
                    "source_series_key", "source_series_id", "segment_number", "segment_label", "n_voxels",
                    "volume_ml", "placement", "frames_unplaced"]
_CASE_COLUMNS = ("case", "subject", "session", "patient", "patientid", "experiment", "label", "id")
_NAME_COLUMNS = ("segmentation", "segmentations", "seg", "segs", "name", "names", "segment", "segments", "labels")
_ASSESSOR_MARKERS = {"assessors"}
_NO_SECRET = b"dicomprep-no-secret-anonymisation-off"


# --- small helpers ------------------------------------------------------------------

def _text(v) -> str:
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return ""
    return str(v).strip()


def _pseudo(secret: bytes | None, kind: str, *parts: str) -> str:
    from ..deid.pseudonym import short_id

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
    try:
        from ..layout import find_xnat_catalogs, read_xnat_catalog
    except ImportError:  # pragma: no cover - layout.py ships them
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
        series = series or _text(getattr(item, "SeriesInstanceUID", ""))
        for inst in getattr(item, "ReferencedInstanceSequence", None) or []:
            sops.append(_text(getattr(inst, "ReferencedSOPInstanceUID", "")))
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
        segmentor = _text(cat.get("createdBy")) or _text(getattr(orig, "ContentCreatorName", ""))
        created = _text(cat.get("createdTime")) or " ".join(
            x for x in (_text(getattr(orig, "ContentDate", "")), _text(getattr(orig, "ContentTime", ""))) if x)
        ref_series, ref_sops = _referenced_series(used)
        orig_ref_series, _ = _referenced_series(orig)
        rec.update({
            "orig_assessor_folder": folder, "assessor_id": "A" + _pseudo(secret, "assessor", orig_unit, folder),
            "orig_segmentor": segmentor, "segmentor_id": ("R" + _pseudo(secret, "segmentor", segmentor)) if segmentor else "",
            "orig_created": created, "catalog": bool(cat),
            "orig_name": _text(getattr(orig, "SeriesDescription", "")),
            "name": _text(getattr(used, "SeriesDescription", "")),
            "content_label": _text(getattr(used, "ContentLabel", "")),
            "orig_seg_series_uid": _text(getattr(orig, "SeriesInstanceUID", "")),
            "orig_referenced_series_uid": orig_ref_series,
            "referenced_series_uid": ref_series, "referenced_sop_uids": ref_sops,
            "frame_of_reference_uid": _text(getattr(used, "FrameOfReferenceUID", "")),
            "sop_class_uid": _text(getattr(used, "SOPClassUID", "")),
            "segmentation_type": _text(getattr(used, "SegmentationType", "")),
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
            base["error"] = _share_text(base["error"])
        else:
            base.update({"file": rec["path"], "assessor_folder": rec.get("orig_assessor_folder"),
                         "segmentor": rec.get("orig_segmentor"), "created": rec.get("orig_created"),
                         "exported_name": rec.get("orig_name"), "content_label": rec.get("content_label"),
                         "seg_series_uid": rec.get("orig_seg_series_uid"),
                         "referenced_series_uid": rec.get("orig_referenced_series_uid"),
                         "selection_reason": rec.get("selection_reason", "")})
        rows.append(base)
    return pd.DataFrame(rows)


def _share_text(text: str) -> str:
    try:
        from ..tables import share_safe_text
    except ImportError:  # pragma: no cover
        return re.sub(r"\S*/\S*", "<path>", text or "")
    return share_safe_text(text)


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


# --- selection -------------------------------------------------------------------

def read_selection_table(path: str | Path) -> dict[str, list[str]]:
    """``seg.table`` as {case: [segmentation names]} (formats: module docstring)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"seg.table: {path} does not exist; give a CSV or Excel file with a case column "
                          "and the segmentation names per case.")
    if path.suffix.lower() in (".xlsx", ".xlsm", ".xls"):
        df = pd.read_excel(path, dtype=str)
    else:
        df = pd.read_csv(path, dtype=str, sep=None, engine="python")
    if df.empty or len(df.columns) < 2:
        raise ConfigError(f"seg.table: {path} needs a case column and at least one column of segmentation names.")
    cols = {str(c).strip().lower().replace(" ", "").replace("_", ""): c for c in df.columns}
    case_col = next((cols[c] for c in _CASE_COLUMNS if c in cols), df.columns[0])
    name_cols = [cols[c] for c in _NAME_COLUMNS if c in cols and cols[c] != case_col]
    if not name_cols:
        name_cols = [c for c in df.columns if c != case_col]
    out: dict[str, list[str]] = {}
    for _, row in df.iterrows():
        case = _text(row[case_col])
        if not case:
            continue
        names = out.setdefault(case, [])
        for c in name_cols:
            for part in re.split(r"[,;|]", _text(row[c])):
                if part.strip() and part.strip() not in names:
                    names.append(part.strip())
    return out


def _rx(pattern: str | None, key: str):
    if not pattern:
        return None
    try:
        return re.compile(pattern, re.IGNORECASE)
    except re.error as exc:
        raise ConfigError(f"seg.{key}: '{pattern}' is not a valid regular expression ({exc}).") from None


def select_segmentations(records: list[dict], seg_cfg: dict, case_keys: list[str]) -> list[dict]:
    """Mark ``selected`` / ``selection_reason`` on each record; return reason rows
    (dicts with ``reason``) for names the table asks for that this unit lacks."""
    rx = {k: _rx(seg_cfg.get(k), k) for k in ("segmentor", "name", "assessor")}
    fields = {"segmentor": "orig_segmentor", "name": "orig_name", "assessor": "orig_assessor_folder"}
    wanted: list[str] | None = None
    problems: list[dict] = []
    if seg_cfg.get("table"):
        table = read_selection_table(seg_cfg["table"])
        lowered = {k.strip().lower(): v for k, v in table.items()}
        case = next((c for c in case_keys if c and c.strip().lower() in lowered), None)
        wanted = lowered.get(case.strip().lower(), []) if case else []
        if case is None:
            problems.append({"reason": "the unit's case is not listed in seg.table; no segmentation selected"})
        known = set()
        for rec in records:
            known |= {x.lower() for x in (rec.get("orig_name"), rec.get("content_label"),
                                          rec.get("orig_assessor_folder")) if x}
        for name in wanted:
            if name.lower() not in known:
                problems.append({"reason": f"seg.table lists segmentation '{name}' for case '{case}', "
                                           "but the unit has no SEG of that name (SeriesDescription, "
                                           "ContentLabel or assessor folder)", "segmentation": name})
    for rec in records:
        if rec.get("error"):
            rec.update(selected=False, selection_reason=rec["error"])
            continue
        reasons = [f"seg.{k} '{seg_cfg.get(k)}' does not match" for k, r in rx.items()
                   if r is not None and not r.search(rec.get(fields[k]) or "")]
        if wanted is not None:
            names = {x.lower() for x in (rec.get("orig_name"), rec.get("content_label"),
                                         rec.get("orig_assessor_folder")) if x}
            if not names & {w.lower() for w in wanted}:
                reasons.append("not listed in seg.table for this case")
        rec["selected"] = not reasons
        rec["selection_reason"] = "; ".join(reasons)
    return problems


# --- source series ----------------------------------------------------------------

def source_headers(instances: pd.DataFrame) -> pd.DataFrame:
    """UIDs of every non-SEG image as stored in the files converters read
    (``source_path``: de-identified copies carry remapped UIDs)."""
    rows = []
    tags = ["SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID", "SOPClassUID"]
    img = instances[instances["kind"].astype(str) != "seg"] if "kind" in instances else instances
    for _, row in img.iterrows():
        try:
            ds = read_dataset(row["source_path"], stop_before_pixels=True, specific_tags=tags)
        except DicomprepError:
            continue
        if _text(getattr(ds, "SOPClassUID", "")) in SEG_SOP_CLASSES:
            continue
        rows.append({"series_key": row["series_key"], "series_id": row.get("series_id"),
                     "source_path": row["source_path"],
                     **{t: _text(getattr(ds, t, "")) for t in tags}})
    return pd.DataFrame(rows, columns=["series_key", "series_id", "source_path", *tags])


def find_source_series(rec: dict, headers: pd.DataFrame, index_rows: pd.DataFrame | None = None) -> tuple[list[str], str]:
    """Series keys to try for a SEG, best first, and how they were found:
    the original referenced SeriesInstanceUID in the private index, else the
    referenced SeriesInstanceUID / SOP Instance UIDs as stored in the files read
    (de-identified copies: remapped consistently), else the series sharing its
    FrameOfReferenceUID (placement by position then decides)."""
    if index_rows is not None and len(index_rows) and "SeriesInstanceUID" in index_rows:
        hit = index_rows[index_rows["SeriesInstanceUID"].astype(str) == (rec.get("orig_referenced_series_uid") or "-")]
        if not hit.empty:
            return list(dict.fromkeys(hit["series_key"])), "series uid (index)"
    if headers.empty:
        return [], "no"
    hit = headers[headers["SeriesInstanceUID"] == rec.get("referenced_series_uid")]
    if not hit.empty:
        return list(dict.fromkeys(hit["series_key"])), "series uid"
    sops = set(rec.get("referenced_sop_uids") or [])
    hit = headers[headers["SOPInstanceUID"].isin(sops)]
    if not hit.empty:
        return list(hit["series_key"].value_counts().index), "instance uid"
    for_uid = rec.get("frame_of_reference_uid")
    hit = headers[(headers["FrameOfReferenceUID"] == for_uid)] if for_uid else headers.iloc[0:0]
    if not hit.empty:
        return list(hit["series_key"].value_counts().index), "frame of reference"
    return [], "no"


def unshared_source_reason(rec: dict, unit_instances: pd.DataFrame, deid_manifest: pd.DataFrame) -> str | None:
    """Why a SEG has no source to decode when its referenced series (0008,1115) IS in
    the unit but de-identification did not write it (e.g. ``too_few_instances``);
    None when the series is not in the unit at all."""
    uid = rec.get("orig_referenced_series_uid") or ""
    if not uid or unit_instances.empty or "SeriesInstanceUID" not in unit_instances:
        return None
    hit = unit_instances[unit_instances["SeriesInstanceUID"].astype(str) == uid]
    if "kind" in hit:
        hit = hit[hit["kind"].astype(str) != "seg"]
    if hit.empty:
        return None
    not_written = deid_manifest[deid_manifest["path"].isin(set(hit["path"]))
                                & (deid_manifest["status"].astype(str) != "written")]
    why = _text(not_written["reason"].iloc[0]) if len(not_written) else "not written"
    series_id = _text(hit["series_id"].iloc[0]) if "series_id" in hit else ""
    return (f"source series {series_id} is in this unit but de-identification did not share it ({why}); "
            f"list its SeriesInstanceUID or series_id under deid.drop_series.allow to decode this SEG")


# --- the job ---------------------------------------------------------------------

def convert_unit(*, unit: str, config: dict, instances: pd.DataFrame, share, private_dir: Path | None = None,
                 log=None, demo: bool = False, unit_instances: pd.DataFrame | None = None,
                 deid_manifest: pd.DataFrame | None = None) -> pd.DataFrame:
    """Inventory, select, decode and write every SEG of one unit; return the manifest.

    ``instances``: the unit's instance rows with ``source_path`` (the
    de-identified copies); ``share``: a :class:`dicomprep.paths.ShareTree` for
    masks and share-safe inventories; ``private_dir``: where the private
    inventories go. ``unit_instances`` + ``deid_manifest`` explain a source
    series that de-identification did not share.
    """
    logger = get_logger("seg", log)
    seg_cfg = dict(config.get("seg") or {})
    options = SegOptions.from_config(seg_cfg)
    rows: list[dict] = []
    if instances.empty or not seg_cfg.get("enabled", True):
        return _manifest(rows)
    from ..deid.pseudonym import secret_for_config

    secret = secret_for_config(config, demo=demo)
    orig_unit = _text(instances["orig_unit"].iloc[0]) if "orig_unit" in instances else unit
    kinds = instances["kind"].astype(str) if "kind" in instances else pd.Series("", index=instances.index)
    sop = instances["SOPClassUID"].astype(str) if "SOPClassUID" in instances else pd.Series("", index=instances.index)
    is_seg = (kinds == "seg") | sop.isin(SEG_SOP_CLASSES)
    seg_rows = instances[is_seg]
    img_rows = instances[~is_seg]
    if seg_rows.empty:          # nothing to inventory or decode in this unit
        return _manifest(rows)
    sources = source_inventory(img_rows)
    records = seg_inventory(seg_rows, secret, orig_unit)
    case_keys = [_text(instances[c].iloc[0]) for c in ("orig_subject", "orig_scan", "orig_unit", "unit", "PatientID")
                 if c in instances] + unit.split("/")[2:]
    for problem in select_segmentations(records, seg_cfg, case_keys):
        logger.warning("%s: %s", unit, problem["reason"])
        rows.append(_row(status="skipped", reason=problem["reason"], segmentation=problem.get("segmentation", "")))
    headers: pd.DataFrame | None = None     # read lazily: only when the index cannot tell
    series_ids = dict(zip(img_rows["series_key"], img_rows["series_id"])) if len(img_rows) else {}
    mask_dir = share.masks(unit)
    for rec in records:
        base = dict(series_key=rec["series_key"], series_id=rec.get("series_id"), assessor_id=rec.get("assessor_id", ""),
                    segmentation=rec.get("orig_name", ""))
        if not rec.get("selected"):
            rows.append(_row(**base, status="skipped" if not rec.get("error") else "failed",
                             reason=rec.get("selection_reason") or "not selected"))
            continue
        candidates, how = find_source_series(rec, pd.DataFrame(), img_rows)
        if not candidates:
            if headers is None:
                headers = source_headers(img_rows)
            candidates, how = find_source_series(rec, headers)
        if not candidates and unit_instances is not None:
            why = unshared_source_reason(rec, unit_instances, deid_manifest)
            if why:
                logger.warning("%s: %s", rec["path"], why)
                rows.append(_row(**base, status="failed", reason=why))
                continue
        rows.extend(_convert_one(rec, candidates, how, img_rows, series_ids, options, seg_cfg, mask_dir,
                                 share, base, logger))
    write_inventories(share.seg_tables(unit), private_dir, sources, records)
    n_ok = sum(r["status"] == "converted" for r in rows)
    logger.info("%s: %d SEG file(s), %d mask(s) written, %d reason row(s)", unit, len(records), n_ok,
                sum(r["status"] != "converted" for r in rows))
    return _manifest(rows)


def _convert_one(rec, candidates, how, img_rows, series_ids, options, seg_cfg, mask_dir, share, base,
                 logger) -> list[dict]:
    if not candidates:
        reason = ("source series not found: no image series of this unit has the SEG's referenced "
                  "SeriesInstanceUID, SOP Instance UIDs or FrameOfReferenceUID")
        logger.warning("%s: %s", rec["path"], reason)
        return [_row(**base, status="failed", reason=reason)]
    best, best_key, errors = None, None, []
    for key in candidates:
        paths = list(img_rows.loc[img_rows["series_key"] == key, "source_path"])
        try:
            decoder = SegDecoder(rec["source_path"], source_grid(paths), options)
        except DicomprepError as exc:
            errors.append(str(exc))
            continue
        if not decoder.infos:
            errors.append("the SEG describes no segment (only background)")
            continue
        if best is None or decoder.n_frames_unplaced < best.n_frames_unplaced:
            best, best_key = decoder, key
        if decoder.n_frames_unplaced == 0:
            break
    if best is None:
        reason = f"cannot place the SEG on its source series ({how} match): " + "; ".join(errors[:2])
        logger.warning("%s: %s", rec["path"], reason)
        return [_row(**base, status="failed", reason=reason)]
    src_id = series_ids.get(best_key, best_key)
    rec["source_series_id"] = src_id
    try:
        result = write_masks(best.masks(), mask_dir, series_id=str(src_id), assessor_id=rec["assessor_id"],
                             labelmap=bool(seg_cfg.get("labelmap")), fmt=str(seg_cfg.get("format", "nifti")),
                             merge_rules=seg_cfg.get("merge") or [],
                             json_extra={"name": rec.get("name", ""), "segmentor_id": rec.get("segmentor_id", ""),
                                         "source_series_id": src_id})
    except Exception as exc:  # a broken frame must not stop the unit's other SEGs
        if is_environment_error(exc):
            raise
        for p in mask_dir.glob(f"{src_id}_seg*_{rec['assessor_id']}.*"):
            p.unlink()
        reason = f"decoding or writing failed: {type(exc).__name__}: {exc}"
        logger.warning("%s: %s", rec["path"], reason)
        return [_row(**base, status="failed", reason=reason, source_series_key=best_key, source_series_id=src_id)]
    rel = {p.name: share.rel(p) for p in result.paths}
    shared = [v for k, v in rel.items() if k not in {s["file"] for s in result.segments}]
    unplaced = best.n_frames_unplaced
    note = "; ".join(best.plan.unplaced[:3] + best.plan.notes[:2])
    out = []
    for s in result.segments:
        out.append(_row(**base, status="converted", reason=note, outputs=rel[s["file"]],
                        source_series_key=best_key, source_series_id=src_id,
                        segment_number=int(s["number"]), segment_label=s["label"],
                        n_voxels=s["n_voxels"], volume_ml=s["volume_ml"], placement=s["placement"],
                        frames_unplaced=unplaced))
    if out:
        out[0]["outputs"] = ";".join([out[0]["outputs"], *shared])
    for p in result.problems:
        out.append(_row(**base, status="skipped", reason=p, source_series_key=best_key, source_series_id=src_id))
    return out


def _row(**kw) -> dict:
    row = {c: "" for c in MANIFEST_COLUMNS}
    row.update({"segment_number": -1, "n_voxels": -1, "volume_ml": float("nan"), "frames_unplaced": 0})
    row.update({k: v for k, v in kw.items() if k in row})
    return row


def _manifest(rows: list[dict]) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=MANIFEST_COLUMNS)
    for c in ("series_key", "series_id", "status", "reason", "outputs", "assessor_id", "segmentation",
              "source_series_key", "source_series_id", "segment_label", "placement"):
        df[c] = df[c].astype(str)
    for c in ("segment_number", "n_voxels", "frames_unplaced"):
        df[c] = pd.to_numeric(df[c]).astype("int64")
    df["volume_ml"] = pd.to_numeric(df["volume_ml"]).astype(float)
    return df
