"""Discovery and the series index: ``private/index/{instances,series}.parquet``
and ``unreadable.csv`` (columns: docs/contracts.md, "private/index/").

* **Discovery** (:mod:`dicomprep.index_discover`) walks ``input_dir``; clutter
  and DICOMDIR media directories (PS3.10 section 8) get a reason row in
  ``unreadable.csv`` and are not parsed as images.
* **Reading** one file into a record (:mod:`dicomprep.index_read`): the lean
  tag walker, with pydicom for enhanced multi-frame files (PS3.3 C.7.6.16),
  deflated transfer syntaxes and ISO 2022 character sets.
* **Bad input** (zero-length, truncated, not DICOM, no read permission,
  image attributes without Pixel Data) gets a reason row and a log line; the
  run continues. A series whose instances disagree on Rows/Columns gets
  ``matrix_consistent = False`` and a note; files a series cannot use are
  listed with it (:mod:`dicomprep.index_exclusions`).
* **Series** are keyed by (orig_unit, SeriesInstanceUID (0020,000E),
  SeriesNumber (0020,0011)): one UID shared by several series numbers
  (dcm_qa_ts) gives several series, several UIDs in one folder give several.
* **Incremental**: ``private/index/cache.parquet`` keeps every parsed file's
  row keyed by (path, size, mtime_ns); an unchanged file is never parsed
  again, new files are parsed, removed files dropped. Files that could not be
  opened for lack of permission are retried every run. All tables are first
  written to temporary names and renamed at the end, so a run killed half-way
  leaves the previous tables intact.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from . import geometry
from .dicomio import GZIP_MAGIC, atomic_path, write_text
from .errors import DicomprepError
from .index_discover import clutter_reason, discover
from .index_exclusions import add_exclusions, split_duplicates
from .index_read import (
    DOSE_SR_CLASSES, FIELD_TYPES, PR_PREFIX, RAW_DATA_CLASS, SC_PREFIX, SEG_CLASSES, SR_PREFIX, STANDARD_PREFIX,
    empty_record, is_image_sop_class, is_na as _na, read_instance,
)
from .layout import LAYOUTS, assign_units, detect_layout_from_relpaths
from .logs import get_logger
from .parallel import map_chunked

FILE_COLUMNS = ["path", "relpath", "size", "mtime_ns", "gzip"]
UNIT_COLUMNS = ["orig_group", "orig_sequence", "orig_subject", "orig_scan", "orig_unit"]
#: Columns beyond the header fields: enhanced/is_dicomdir (contract) and
#: frame_positions / frame_bvalues (enhanced files: every frame's
#: ImagePositionPatient flattened x,y,z,x,y,z..., and DiffusionBValue per frame).
EXTRA_COLUMNS = ["enhanced", "is_dicomdir", "frame_positions", "frame_bvalues", "reader"]
INSTANCE_COLUMNS = (FILE_COLUMNS + UNIT_COLUMNS + ["series_key", "series_id"]
                    + list(FIELD_TYPES) + EXTRA_COLUMNS)
CACHE_COLUMNS = FILE_COLUMNS + list(FIELD_TYPES) + EXTRA_COLUMNS + ["reason", "retry"]
SERIES_COLUMNS = [
    "orig_group", "orig_sequence", "orig_subject", "orig_scan", "orig_unit", "series_key", "series_id",
    "SeriesInstanceUID", "SeriesNumber", "SeriesDescription", "Modality", "SOPClassUID", "PatientID",
    "IssuerOfPatientID", "StudyInstanceUID", "StudyDate", "Manufacturer", "ImageType", "n_instances",
    "n_frames", "enhanced", "Rows", "Columns", "matrix_consistent", "orientation", "slice_spacing",
    "spacing_regular", "spacing_min", "spacing_max", "n_duplicates", "n_missing", "tilt_deg",
    "n_bvalues", "kind", "notes",
]
KINDS = ("dwi", "ct_axial", "ct_other", "mr", "pt", "nm", "seg", "localizer", "dose_report",
         "secondary_capture", "presentation_state", "structured_report", "raw", "other_image", "other")
_INT_COLUMNS = [kw for kw, typ in FIELD_TYPES.items() if typ == "int"]
_FLOAT_COLUMNS = [kw for kw, typ in FIELD_TYPES.items() if typ == "float"]


def index_dir(out_dir: str | os.PathLike) -> Path:
    return Path(out_dir) / "private" / "index"


# --------------------------------------------------------------------------- result

@dataclass
class IndexResult:
    input_dir: str
    out_dir: str
    layout: str
    n_files: int = 0
    n_instances: int = 0
    n_series: int = 0
    n_unreadable: int = 0
    n_parsed: int = 0
    n_cached: int = 0
    seconds: float = 0.0
    paths: dict = field(default_factory=dict)

    def summary(self) -> str:
        return (f"indexed {self.n_files} files in {self.seconds:.1f} s (layout {self.layout}): "
                f"{self.n_instances} instances in {self.n_series} series, {self.n_unreadable} "
                f"unreadable/skipped; parsed {self.n_parsed}, {self.n_cached} unchanged from cache "
                f"-> {index_dir(self.out_dir)}")


def _logger(log) -> logging.Logger:
    if isinstance(log, logging.Logger):
        return log
    return get_logger("index", log, stderr=log is None)


# --------------------------------------------------------------------------- build

def _load_cache(path: Path) -> pd.DataFrame | None:
    if not path.is_file():
        return None
    try:
        cache = pd.read_parquet(path)
    except Exception:
        return None
    if not set(CACHE_COLUMNS) <= set(cache.columns) or "cache_version" not in cache.columns:
        return None  # written by another version: rebuild
    if len(cache) and int(cache["cache_version"].iloc[0]) != READER_VERSION:
        return None
    cache = cache.drop(columns=["cache_version"])
    return cache


def _parse_all(paths: list[str], workers: int) -> list[dict]:
    """:func:`read_instance` of ``paths``, in order; ``workers`` processes."""
    return map_chunked(read_instance, paths, workers, serial_below=64, chunk=(16, 256))


def build_index(
    input_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    layout: str = "auto",
    workers: int = 1,
    log=None,
) -> IndexResult:
    """Discover and index ``input_dir`` into ``out_dir/private/index/``.

    Writes ``instances.parquet``, ``series.parquet``, ``unreadable.csv`` and the
    cache ``cache.parquet``; returns counts. Unchanged files (path, size,
    mtime_ns) come from the cache without being parsed.
    """
    t0 = time.perf_counter()
    logger = _logger(log)
    if layout not in LAYOUTS:
        raise DicomprepError(f"layout: {layout!r} is not one of {', '.join(LAYOUTS)}; set config key `layout`.")
    root = Path(input_dir)
    if not root.is_dir():
        raise DicomprepError(f"input_dir {root} is not a folder; set `input_dir` to the folder of DICOM files.")
    root_abs = os.path.abspath(str(root))
    idx = index_dir(out_dir)
    idx.mkdir(parents=True, exist_ok=True)
    found, walk_errors = discover(root_abs)
    for err in walk_errors:
        logger.warning("skipped %s: %s", err.relpath, err.reason)

    walked = pd.DataFrame({
        "path": [f.path for f in found], "relpath": [f.relpath for f in found],
        "size": np.fromiter((f.size for f in found), dtype=np.int64, count=len(found)),
        "mtime_ns": np.fromiter((f.mtime_ns for f in found), dtype=np.int64, count=len(found)),
    })
    cache = _load_cache(idx / "cache.parquet")
    same = np.zeros(len(walked), dtype=bool)
    reused = None
    n_cache = 0
    if cache is not None and len(cache):
        n_cache = len(cache)
        retry = cache["retry"].to_numpy(dtype=bool)
        known = {p: (sz, mt, i) for i, (p, sz, mt, r) in enumerate(zip(
            cache["path"].tolist(), cache["size"].tolist(), cache["mtime_ns"].tolist(), retry)) if not r}
        rows = []
        for k, f in enumerate(found):
            hit = known.get(f.path)
            if hit is not None and hit[0] == f.size and hit[1] == f.mtime_ns:
                same[k] = True
                rows.append(hit[2])
        if rows:
            reused = cache.iloc[rows].reset_index(drop=True)
            reused["relpath"] = [found[k].relpath for k in np.flatnonzero(same)]

    state = _state(root_abs, layout)
    old_state = _state_matches(idx, state) if same.all() and n_cache == len(walked) else None
    if old_state is not None:
        state = old_state
        res = IndexResult(str(root_abs), str(out_dir), state["layout_used"], n_files=len(walked),
                          n_instances=state["n_instances"], n_series=state["n_series"],
                          n_unreadable=state["n_unreadable"], n_parsed=0, n_cached=len(walked),
                          seconds=time.perf_counter() - t0, paths=_paths(idx))
        logger.info("input unchanged since the last index (%d files): tables kept as they are", len(walked))
        return res

    todo = walked[~same]
    clutter = [clutter_reason(r) for r in todo["relpath"]]
    parse_paths = [p for p, c in zip(todo["path"], clutter) if c is None]
    logger.info("found %d files under %s: %d unchanged (cached), %d to read", len(walked), root_abs,
                int(same.sum()), len(parse_paths))
    n_clutter = sum(c is not None for c in clutter)
    if n_clutter:
        logger.info("%d non-DICOM file(s) (README, XML, JSON, NIfTI ...) listed in unreadable.csv, not parsed",
                    n_clutter)
    parsed = _parse_all(parse_paths, workers)
    by_path = dict(zip(parse_paths, parsed))
    new_rows = []
    for (path, rel, size, mtime), reason in zip(todo[["path", "relpath", "size", "mtime_ns"]].itertuples(index=False), clutter):
        rec = by_path.get(path)
        if rec is None:
            rec = empty_record()
            rec["reason"] = reason
        rec.update(path=path, relpath=rel, size=int(size), mtime_ns=int(mtime))
        if rec.get("gzip") is None:
            rec["gzip"] = _is_gzip_quiet(path) if reason is None and rec["reason"] is None else False
        new_rows.append(rec)
        if rec["reason"] is not None and reason is None:
            logger.warning("skipped %s: %s", rel, rec["reason"])
    # cached rows come typed from Parquet; only new rows need typing
    new = _typed(pd.DataFrame(new_rows, columns=CACHE_COLUMNS)) if new_rows else None
    frames = [f for f in (reused, new) if f is not None and len(f)]
    if not frames:
        allrows = _typed(pd.DataFrame(columns=CACHE_COLUMNS))
    elif len(frames) == 1:
        allrows = frames[0][CACHE_COLUMNS]
    else:
        allrows = pd.concat(frames, ignore_index=True)[CACHE_COLUMNS]
    allrows = allrows.sort_values("relpath", kind="stable").reset_index(drop=True)

    ok = allrows["reason"].isna()
    instances = allrows[ok].drop(columns=["reason", "retry"]).reset_index(drop=True)
    unreadable = allrows.loc[~ok, ["path", "relpath", "reason"]].reset_index(drop=True)

    used_layout = layout
    if layout == "auto":
        used_layout = detect_layout_from_relpaths(list(instances["relpath"]), list(instances["StudyInstanceUID"]))
    instances = add_units(instances, layout, root_abs)
    instances["series_key"] = series_keys(instances)
    instances, duplicates = split_duplicates(instances)
    for r in duplicates.itertuples(index=False):
        logger.warning("skipped %s: %s", r.relpath, r.reason)
    series = build_series(instances)
    series = add_exclusions(series, instances, allrows.loc[~ok])
    instances = instances.merge(series[["series_key", "series_id"]], on="series_key", how="left")
    instances = instances[INSTANCE_COLUMNS]
    walk_rows = pd.DataFrame([(e.path, e.relpath, e.reason) for e in walk_errors], columns=["path", "relpath", "reason"])
    unreadable = pd.concat([f for f in (unreadable, duplicates, walk_rows) if len(f)] or [unreadable],
                           ignore_index=True).sort_values("relpath", kind="stable").reset_index(drop=True)

    state.update(layout_used=used_layout, n_instances=len(instances), n_series=len(series),
                 n_unreadable=len(unreadable))
    (idx / STATE_FILE).unlink(missing_ok=True)
    with atomic_path(idx / "cache.parquet") as t_cache, \
            atomic_path(idx / "instances.parquet") as t_inst, \
            atomic_path(idx / "series.parquet") as t_series, \
            atomic_path(idx / "unreadable.csv") as t_unr:
        allrows.assign(cache_version=READER_VERSION).to_parquet(t_cache, index=False)
        instances.to_parquet(t_inst, index=False)
        series.to_parquet(t_series, index=False)
        unreadable.to_csv(t_unr, index=False)
    write_text(idx / STATE_FILE, json.dumps(state, indent=1))

    res = IndexResult(str(root_abs), str(out_dir), used_layout, n_files=len(walked),
                      n_instances=len(instances), n_series=len(series), n_unreadable=len(unreadable),
                      n_parsed=len(parse_paths), n_cached=int(same.sum()),
                      seconds=time.perf_counter() - t0, paths=_paths(idx))
    for note_row in series.loc[series["notes"].fillna("") != "", ["orig_unit", "series_id", "notes"]].itertuples(index=False):
        if "Rows/Columns" in note_row.notes:
            logger.warning("series %s/%s: %s", note_row.orig_unit, note_row.series_id, note_row.notes)
    logger.info(res.summary())
    return res


STATE_FILE = "index_state.json"
#: Bump when the tables' content rules change: an unchanged tree is re-indexed then.
INDEX_VERSION = 3
#: Bump when what a file's row holds changes (reader fixes): every file is read again.
READER_VERSION = 3  # 3: files cut short inside a value are truncated, not header-only


def _code_fingerprint() -> str:
    """sha1 of the modules that shape the tables: new code rebuilds them."""
    h = hashlib.sha1()
    here = Path(__file__).resolve().parent
    for name in ("index.py", "index_read.py", "index_discover.py", "index_exclusions.py", "layout.py",
                 "dicomio.py", "geometry.py"):
        try:
            h.update((here / name).read_bytes())
        except OSError:
            pass
    return h.hexdigest()[:16]


def _state(root_abs: str, layout: str) -> dict:
    return {"version": INDEX_VERSION, "code": _code_fingerprint(), "input_dir": root_abs, "layout": layout}


def _state_matches(idx: Path, state: dict) -> dict | None:
    """True when the tables were written for the same input, layout and code
    version and are all present (then an unchanged tree needs no rewrite):
    the recorded state, else None."""
    try:
        old = json.loads((idx / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None
    if any(old.get(k) != v for k, v in state.items()):
        return None
    if not all((idx / n).is_file() for n in ("instances.parquet", "series.parquet", "unreadable.csv")):
        return None
    return old


def _paths(idx: Path) -> dict:
    return {k: str(idx / v) for k, v in (("instances", "instances.parquet"), ("series", "series.parquet"),
                                         ("unreadable", "unreadable.csv"), ("cache", "cache.parquet"))}


def _is_gzip_quiet(path: str) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(2) == GZIP_MAGIC
    except OSError:
        return False


def _typed(df: pd.DataFrame) -> pd.DataFrame:
    """Stable column dtypes (nullable ints, floats, bools) for Parquet."""
    df = df.copy()
    for c in _INT_COLUMNS:
        if df[c].dtype != "Int64":
            df[c] = pd.array([None if _na(v) else int(v) for v in df[c]], dtype="Int64")
    for c in _FLOAT_COLUMNS:
        df[c] = pd.to_numeric(df[c], errors="coerce").astype("float64")
    for c in ("size", "mtime_ns"):
        df[c] = df[c].astype("int64")
    for c in ("gzip", "enhanced", "is_dicomdir", "retry"):
        df[c] = df[c].fillna(False).astype(bool)
    for c in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing",
              "DiffusionGradientOrientation", "frame_positions", "frame_bvalues"):
        df[c] = [v if isinstance(v, list) else None if _na(v) else list(map(float, v)) for v in df[c]]
    return df


def add_units(instances: pd.DataFrame, layout: str, input_dir: str) -> pd.DataFrame:
    """Add orig_group/sequence/subject/scan/unit (layout.py) to instance rows."""
    instances = instances.copy()
    cols = ["PatientID", "IssuerOfPatientID", "StudyInstanceUID"]
    headers = [dict(zip(cols, vals)) for vals in zip(*(instances[c].tolist() for c in cols))]
    keys = assign_units(list(instances["relpath"]), headers, layout, input_dir)
    arr = np.array(keys, dtype=object).reshape(-1, 4) if keys else np.empty((0, 4), dtype=object)
    for i, c in enumerate(UNIT_COLUMNS[:4]):
        instances[c] = arr[:, i] if len(arr) else pd.Series([], dtype=object)
    instances["orig_unit"] = ["/".join(k) for k in keys]
    return instances


def series_keys(instances: pd.DataFrame) -> list[str]:
    """:func:`series_key` of every instance row (memoised per distinct triple)."""
    cache: dict = {}
    keys = []
    for u, s, n, sop in zip(instances["orig_unit"].tolist(), instances["SeriesInstanceUID"].tolist(),
                            instances["SeriesNumber"].tolist(), instances["SOPClassUID"].tolist()):
        apart = None if _na(sop) or is_image_sop_class(sop) else sop
        k = (u, s, n, apart)
        v = cache.get(k)
        if v is None:
            v = cache[k] = series_key(u, None if _na(s) else s, None if _na(n) else n, apart)
        keys.append(v)
    return keys


def series_key(orig_unit: str, series_uid, series_number, apart_sop_class: str | None = None) -> str:
    """sha1 of (orig_unit, SeriesInstanceUID, SeriesNumber), 12 hex digits.

    Non-image objects (private SOP classes, presentation states, SR, raw
    data) that share an image series' UID and number (Philips writes them so)
    get their own series: their SOP class UID is hashed too
    (``apart_sop_class``)."""
    sn = "" if series_number is None or pd.isna(series_number) else str(int(series_number))
    parts = [orig_unit, "" if series_uid is None or pd.isna(series_uid) else str(series_uid), sn]
    if apart_sop_class:
        parts.append(apart_sop_class)
    text = "\n".join(parts)
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:12]


# --------------------------------------------------------------------------- series

#: ImageType (0008,0008) values of scanner-derived diffusion maps.
DERIVED_DIFFUSION_MAPS = {"ADC", "EADC", "FA", "TRACEW", "TRACE", "EXP", "CALC_BVALUE", "ISOTROPIC"}


def classify_series(*, modality: str | None, sop_class: str | None, image_type: str | None,
                    description: str | None, n_images: int, orientation: str,
                    bvalues: Sequence[float], sequence_name: str | None, has_rows: bool) -> str:
    """``kind`` of a series (docs/contracts.md), first rule that holds:

    seg (SOP classes Segmentation / Label Map Segmentation, or Modality SEG);
    presentation_state (SOP 1.2.840.10008.5.1.4.1.1.11.*, Modality PR);
    dose_report (Radiation Dose SR SOP classes, or SR / secondary capture
    whose ImageType (0008,0008) or SeriesDescription says DOSE); structured_report
    (other SR SOP classes, Modality SR); raw (Raw Data SOP class, or a private
    SOP class outside 1.2.840.10008); localizer (ImageType LOCALIZER/SCOUT,
    or CT with 1-3 images not axial); secondary_capture (SOP 1.2.840.10008.5.1.4.1.1.7*);
    mr for scanner-derived diffusion maps (ImageType DERIVED with ADC, FA,
    TRACEW ...); dwi (MR with a non-zero DiffusionBValue (0018,9087), more than one b-value,
    ImageType DIFFUSION, or a Siemens ``*ep_b<n>`` SequenceName); mr; ct_axial
    (CT whose slice normal is axial, geometry.is_axial) / ct_other; pt; nm;
    other_image (has Rows); other.
    """
    mod = (modality or "").upper()
    sop = sop_class or ""
    itype = (image_type or "").upper().split("\\")
    desc = (description or "").upper()
    if sop in SEG_CLASSES or mod == "SEG":
        return "seg"
    if sop.startswith(PR_PREFIX) or mod == "PR":
        return "presentation_state"
    is_sc = sop.startswith(SC_PREFIX)
    if sop in DOSE_SR_CLASSES or ((sop.startswith(SR_PREFIX) or mod == "SR" or is_sc)
                                  and ("DOSE" in desc or any("DOSE" in t for t in itype))):
        return "dose_report"
    if sop.startswith(SR_PREFIX) or mod == "SR":
        return "structured_report"
    if sop == RAW_DATA_CLASS or (sop and not sop.startswith(STANDARD_PREFIX)):
        return "raw"
    if "LOCALIZER" in itype or "SCOUT" in itype or (mod == "CT" and 1 <= n_images <= 3 and orientation not in ("axial", "none")):
        return "localizer"
    if is_sc:
        return "secondary_capture"
    if mod == "MR":
        if "DERIVED" in itype and any(t in DERIVED_DIFFUSION_MAPS for t in itype):
            return "mr"   # scanner-computed ADC / FA / trace map: an image, not a diffusion series
        b = [x for x in bvalues if x is not None and not np.isnan(x)]
        if (b and max(b) > 0) or len(set(np.round(b, 3))) > 1 or "DIFFUSION" in itype or \
                re.search(r"ep_b\d", sequence_name or ""):
            return "dwi"
        return "mr"
    if mod == "CT":
        return "ct_axial" if orientation == "axial" else "ct_other"
    if mod == "PT":
        return "pt"
    if mod == "NM":
        return "nm"
    return "other_image" if has_rows else "other"


def _floats(v) -> np.ndarray | None:
    if v is None or (not isinstance(v, (list, np.ndarray)) and pd.isna(v)):
        return None
    a = np.asarray(v, dtype=float)
    return a if a.size else None


def build_series(instances: pd.DataFrame) -> pd.DataFrame:
    """One row per series (columns SERIES_COLUMNS) from the instance rows,
    which must carry the unit columns. Adds ``series_key`` to nothing; the
    key is computed here from (orig_unit, SeriesInstanceUID, SeriesNumber)."""
    if not len(instances):
        return pd.DataFrame(columns=SERIES_COLUMNS)
    inst = instances
    keys = inst["series_key"] if "series_key" in inst else series_keys(inst)
    key_arr = np.asarray(keys, dtype=object)
    col = {c: inst[c].to_numpy(dtype=object) for c in (
        "orig_group", "orig_sequence", "orig_subject", "orig_scan", "orig_unit", "SeriesInstanceUID",
        "SeriesNumber", "SeriesDescription", "Modality", "SOPClassUID", "PatientID", "IssuerOfPatientID",
        "StudyInstanceUID", "StudyDate", "Manufacturer", "ImageType", "NumberOfFrames", "enhanced", "Rows",
        "Columns", "ImageOrientationPatient", "ImagePositionPatient", "DiffusionBValue", "frame_positions",
        "frame_bvalues", "SequenceName", "InstanceNumber", "relpath", "PrivateBValue")}
    order = np.lexsort((col["relpath"].astype(str),
                        np.array([np.inf if v is None or v is pd.NA else v for v in col["InstanceNumber"]], dtype=float),
                        key_arr.astype(str)))
    rows = []
    sorted_keys = key_arr[order]
    bounds = np.flatnonzero(sorted_keys[1:] != sorted_keys[:-1]) + 1
    for idx in np.split(order, bounds):
        rows.append(_series_row(key_arr[idx[0]], idx, col))
    series = pd.DataFrame(rows, columns=SERIES_COLUMNS)
    series = _series_ids(series)
    series["SeriesNumber"] = series["SeriesNumber"].astype("Int64")
    for c in ("n_instances", "n_frames", "n_duplicates", "n_missing", "n_bvalues"):
        series[c] = series[c].astype("int64")
    for c in ("Rows", "Columns"):
        series[c] = series[c].astype("Int64")
    for c in ("slice_spacing", "spacing_min", "spacing_max", "tilt_deg"):
        series[c] = series[c].astype("float64")
    return series.sort_values(["orig_unit", "series_id"], kind="stable").reset_index(drop=True)


def _series_row(key: str, idx: np.ndarray, col: dict) -> dict:
    first = idx[0]
    notes: list[str] = []
    n_inst = len(idx)
    frames = [1 if _na(col["NumberOfFrames"][i]) else int(col["NumberOfFrames"][i]) for i in idx]
    enhanced = bool(any(col["enhanced"][i] for i in idx))
    rows = [None if _na(col["Rows"][i]) else int(col["Rows"][i]) for i in idx]
    cols_ = [None if _na(col["Columns"][i]) else int(col["Columns"][i]) for i in idx]
    matrices = {(r, c) for r, c in zip(rows, cols_) if r is not None or c is not None}
    consistent = len(matrices) <= 1
    if not consistent:
        shown = ", ".join(f"{r}x{c}" for r, c in sorted(matrices, key=str))
        notes.append(f"instances disagree on Rows/Columns (0028,0010/0011): {shown}")
    main_matrix = max(matrices, key=lambda m: sum(1 for r, c in zip(rows, cols_) if (r, c) == m)) if matrices else (None, None)
    # Geometry: positions along the normal of the first oriented instance.
    iops = [(i, _floats(col["ImageOrientationPatient"][i])) for i in idx]
    iops = [(i, o) for i, o in iops if o is not None and o.size == 6]
    orientation = "none"
    report = None
    if iops:
        iop0 = iops[0][1]
        try:
            normal = geometry.slice_normal(iop0)
            orientation = geometry.orientation_label(iop0)
        except ValueError:
            normal = None
            notes.append("ImageOrientationPatient (0020,0037) row and column cosines are parallel")
        if normal is not None:
            arr = np.stack([o for _i, o in iops])
            close = geometry.same_orientation(arr, iop0, geometry.ORIENTATION_TOL)
            same = [i for (i, _o), c in zip(iops, close) if c]
            if len(same) < len(iops):
                notes.append(f"{len(iops) - len(same)} instance(s) with another orientation")
            positions = []
            for i in same:
                fp = _floats(col["frame_positions"][i])
                if fp is not None and fp.size >= 3:
                    positions.extend(fp.reshape(-1, 3))
                else:
                    p = _floats(col["ImagePositionPatient"][i])
                    if p is not None and p.size == 3:
                        positions.append(p)
            if positions:
                report = geometry.stack_report(np.array(positions), normal)
                notes.extend(report.notes)
    elif any(r for r in rows):
        notes.append("no geometry (ImageOrientationPatient missing)")
    bvals: list[float] = []
    for i in idx:
        fb = _floats(col["frame_bvalues"][i])
        if fb is not None:
            bvals.extend(float(x) for x in fb if not np.isnan(x))
        elif not _na(col["DiffusionBValue"][i]):
            bvals.append(float(col["DiffusionBValue"][i]))
        elif not _na(col["PrivateBValue"][i]):
            bvals.append(float(col["PrivateBValue"][i]))
    n_bvalues = len(set(np.round(bvals, 3))) if bvals else 0

    def first_of(name):
        v = col[name][first]
        return None if _na(v) else v

    kind = classify_series(
        modality=first_of("Modality"), sop_class=first_of("SOPClassUID"), image_type=first_of("ImageType"),
        description=first_of("SeriesDescription"), n_images=sum(frames), orientation=orientation,
        bvalues=bvals, sequence_name=first_of("SequenceName"), has_rows=any(r for r in rows))
    itype0 = (first_of("ImageType") or "").upper().split("\\")
    if kind == "mr" and "DERIVED" in itype0 and any(t in DERIVED_DIFFUSION_MAPS for t in itype0):
        notes.append("scanner-derived diffusion map (ImageType " + "\\".join(itype0) + ")")
    sop_set = {col["SOPClassUID"][i] for i in idx}
    if len(sop_set) > 1:
        notes.append(f"{len(sop_set)} SOP classes in one series")
    nan = float("nan")
    return {
        "orig_group": first_of("orig_group"), "orig_sequence": first_of("orig_sequence"),
        "orig_subject": first_of("orig_subject"), "orig_scan": first_of("orig_scan"),
        "orig_unit": first_of("orig_unit"), "series_key": key, "series_id": None,
        "SeriesInstanceUID": first_of("SeriesInstanceUID"), "SeriesNumber": first_of("SeriesNumber"),
        "SeriesDescription": first_of("SeriesDescription"), "Modality": first_of("Modality"),
        "SOPClassUID": first_of("SOPClassUID"), "PatientID": first_of("PatientID"),
        "IssuerOfPatientID": first_of("IssuerOfPatientID"), "StudyInstanceUID": first_of("StudyInstanceUID"),
        "StudyDate": first_of("StudyDate"), "Manufacturer": first_of("Manufacturer"),
        "ImageType": first_of("ImageType"), "n_instances": n_inst, "n_frames": int(sum(frames)),
        "enhanced": enhanced, "Rows": main_matrix[0], "Columns": main_matrix[1],
        "matrix_consistent": consistent, "orientation": orientation,
        "slice_spacing": report.spacing if report else nan,
        "spacing_regular": bool(report.regular) if report else None,
        "spacing_min": report.spacing_min if report else nan,
        "spacing_max": report.spacing_max if report else nan,
        "n_duplicates": report.n_duplicates if report else 0,
        "n_missing": report.n_missing if report else 0,
        "tilt_deg": report.tilt_deg if report else nan,
        "n_bvalues": n_bvalues, "kind": kind, "notes": "; ".join(notes),
    }


def _series_ids(series: pd.DataFrame) -> pd.DataFrame:
    """``s{SeriesNumber:03d}``, with ``-{series_key[:4]}`` when two series of a
    unit share it; ``sNA-{key[:4]}`` without a SeriesNumber."""
    base = [f"s{int(n):03d}" if not _na(n) else "sNA" for n in series["SeriesNumber"]]
    series = series.copy()
    series["_base"] = base
    dup = series.duplicated(["orig_unit", "_base"], keep=False) | (series["_base"] == "sNA")
    series["series_id"] = [f"{b}-{k[:4]}" if d else b for b, k, d in zip(base, series["series_key"], dup)]
    # 4 hex digits could still collide within a unit: fall back to the full key
    dup2 = series.duplicated(["orig_unit", "series_id"], keep=False)
    series.loc[dup2, "series_id"] = [f"{b}-{k}" for b, k in zip(series.loc[dup2, "_base"], series.loc[dup2, "series_key"])]
    return series.drop(columns=["_base"])
