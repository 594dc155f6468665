"""The ``decode_seg`` job of one unit: inventory, select, place and decode its SEGs.

Every SEG file of the unit is inventoried (:mod:`.seg_inventory`); the selected
ones are matched to their source series (ReferencedSeriesSequence (0008,1115),
then the referenced SOP Instance UIDs, then FrameOfReferenceUID (0020,0052)),
decoded on the source grid (:mod:`.seg`) and written as masks. The manifest has
one row per segment written and a reason row for every SEG or name not converted.

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

import re
from pathlib import Path

import numpy as np
import pandas as pd

from .. import geometry
from ..deid.pseudonym import secret_for_config
from ..dicomio import read_dataset, value_text
from ..errors import ConfigError, DicomprepError, is_environment_error
from ..logs import get_logger
from .seg import SEG_SOP_CLASSES, SegDecoder, SegOptions, source_grid
from .seg_inventory import seg_inventory, source_inventory, write_inventories
from .seg_output import write_masks

MANIFEST_COLUMNS = ["series_key", "series_id", "status", "reason", "outputs", "assessor_id", "segmentation",
                    "source_series_key", "source_series_id", "segment_number", "segment_label", "n_voxels",
                    "volume_ml", "placement", "frames_unplaced"]
_CASE_COLUMNS = ("case", "subject", "session", "patient", "patientid", "experiment", "label", "id")
_NAME_COLUMNS = ("segmentation", "segmentations", "seg", "segs", "name", "names", "segment", "segments", "labels")


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
        case = value_text(row[case_col]).strip()
        if not case:
            continue
        names = out.setdefault(case, [])
        for c in name_cols:
            for part in re.split(r"[,;|]", value_text(row[c]).strip()):
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
        if value_text(getattr(ds, "SOPClassUID", "")).strip() in SEG_SOP_CLASSES:
            continue
        rows.append({"series_key": row["series_key"], "series_id": row.get("series_id"),
                     "source_path": row["source_path"],
                     **{t: value_text(getattr(ds, t, "")).strip() for t in tags}})
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
    why = value_text(not_written["reason"].iloc[0]).strip() if len(not_written) else "not written"
    series_id = value_text(hit["series_id"].iloc[0]).strip() if "series_id" in hit else ""
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
        return manifest_table(rows)
    secret = secret_for_config(config, demo=demo)
    orig_unit = value_text(instances["orig_unit"].iloc[0]).strip() if "orig_unit" in instances else unit
    kinds = instances["kind"].astype(str) if "kind" in instances else pd.Series("", index=instances.index)
    sop = instances["SOPClassUID"].astype(str) if "SOPClassUID" in instances else pd.Series("", index=instances.index)
    is_seg = (kinds == "seg") | sop.isin(SEG_SOP_CLASSES)
    seg_rows = instances[is_seg]
    img_rows = instances[~is_seg]
    if seg_rows.empty:          # nothing to inventory or decode in this unit
        return manifest_table(rows)
    sources = source_inventory(img_rows)
    records = seg_inventory(seg_rows, secret, orig_unit)
    case_keys = [value_text(instances[c].iloc[0]).strip() for c in ("orig_subject", "orig_scan", "orig_unit", "unit", "PatientID")
                 if c in instances] + unit.split("/")[2:]
    for problem in select_segmentations(records, seg_cfg, case_keys):
        logger.warning("%s: %s", unit, problem["reason"])
        rows.append(manifest_row(status="skipped", reason=problem["reason"], segmentation=problem.get("segmentation", "")))
    headers: pd.DataFrame | None = None     # read lazily: only when the index cannot tell
    series_ids = dict(zip(img_rows["series_key"], img_rows["series_id"])) if len(img_rows) else {}
    mask_dir = share.masks(unit)
    for rec in records:
        base = dict(series_key=rec["series_key"], series_id=rec.get("series_id"), assessor_id=rec.get("assessor_id", ""),
                    segmentation=rec.get("orig_name", ""))
        if not rec.get("selected"):
            rows.append(manifest_row(**base, status="skipped" if not rec.get("error") else "failed",
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
                rows.append(manifest_row(**base, status="failed", reason=why))
                continue
        rows.extend(_convert_one(rec, candidates, how, img_rows, series_ids, options, seg_cfg, mask_dir,
                                 share, base, logger))
    write_inventories(share.seg_tables(unit), private_dir, sources, records)
    n_ok = sum(r["status"] == "converted" for r in rows)
    logger.info("%s: %d SEG file(s), %d mask(s) written, %d reason row(s)", unit, len(records), n_ok,
                sum(r["status"] != "converted" for r in rows))
    return manifest_table(rows)


def _convert_one(rec, candidates, how, img_rows, series_ids, options, seg_cfg, mask_dir, share, base,
                 logger) -> list[dict]:
    if not candidates:
        reason = ("source series not found: no image series of this unit has the SEG's referenced "
                  "SeriesInstanceUID, SOP Instance UIDs or FrameOfReferenceUID")
        logger.warning("%s: %s", rec["path"], reason)
        return [manifest_row(**base, status="failed", reason=reason)]
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
        return [manifest_row(**base, status="failed", reason=reason)]
    src_id = series_ids.get(best_key, best_key)
    rec["source_series_id"] = src_id
    uneven = uneven_source_reason(best.grid)
    if uneven:
        logger.warning("%s: %s", rec["path"], uneven)
        return [manifest_row(**base, status="failed", reason=uneven, source_series_key=best_key,
                             source_series_id=src_id)]
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
        return [manifest_row(**base, status="failed", reason=reason, source_series_key=best_key, source_series_id=src_id)]
    rel = {p.name: share.rel(p) for p in result.paths}
    shared = [v for k, v in rel.items() if k not in {s["file"] for s in result.segments}]
    unplaced = best.n_frames_unplaced
    note = "; ".join(best.plan.unplaced[:3] + best.plan.notes[:2])
    out = []
    for s in result.segments:
        out.append(manifest_row(**base, status="converted", reason=note, outputs=rel[s["file"]],
                        source_series_key=best_key, source_series_id=src_id,
                        segment_number=int(s["number"]), segment_label=s["label"],
                        n_voxels=s["n_voxels"], volume_ml=s["volume_ml"], placement=s["placement"],
                        frames_unplaced=unplaced))
    if out:
        out[0]["outputs"] = ";".join([out[0]["outputs"], *shared])
    for p in result.problems:
        out.append(manifest_row(**base, status="skipped", reason=p, source_series_key=best_key, source_series_id=src_id))
    return out


def uneven_source_reason(grid) -> str:
    """Why masks cannot be written on ``grid`` (a :class:`~.seg.SourceGrid`), or "": a
    NIfTI places slice k at first position + k × one step, so the slices of the source
    series must be evenly spaced (:data:`geometry.EVEN_STACK_TOL`); a missing slice or
    mixed spacing would put mask slices tens of mm from their source."""
    offset = geometry.unevenly_spaced_mm(grid.frames)
    if not offset:
        return ""
    gaps = np.diff(grid.distances)
    return (f"source series slices are unevenly spaced (gaps {gaps.min():.3g} to {gaps.max():.3g} mm): a NIfTI "
            f"grid would put a mask slice {offset:.3g} mm from its source slice, so no mask is written; the "
            "de-identified SEG itself is shared with the DICOM files")


def manifest_row(**kw) -> dict:
    """One manifest row: ``MANIFEST_COLUMNS`` with defaults, set from ``kw`` (other keys ignored)."""
    row = {c: "" for c in MANIFEST_COLUMNS}
    row.update({"segment_number": -1, "n_voxels": -1, "volume_ml": float("nan"), "frames_unplaced": 0})
    row.update({k: v for k, v in kw.items() if k in row})
    return row


def manifest_table(rows: list[dict]) -> pd.DataFrame:
    """The ``decode_seg`` manifest of ``rows``, with fixed column types."""
    df = pd.DataFrame(rows, columns=MANIFEST_COLUMNS)
    for c in ("series_key", "series_id", "status", "reason", "outputs", "assessor_id", "segmentation",
              "source_series_key", "source_series_id", "segment_label", "placement"):
        df[c] = df[c].astype(str)
    for c in ("segment_number", "n_voxels", "frames_unplaced"):
        df[c] = pd.to_numeric(df[c]).astype("int64")
    df["volume_ml"] = pd.to_numeric(df["volume_ml"]).astype(float)
    return df
