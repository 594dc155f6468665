"""Cohort selection: series filters -> the unit table that drives the DAG.

The select checkpoint reads the private index, keeps the series the config's
``select:`` section asks for, groups them into units and gives each unit its
share-safe key ``group/sequence/subject/scan`` (the Snakemake wildcard
``{unit}``; see docs/contracts.md). Per-unit instance and series lists are
written under ``private/units/{unit}/`` only when their content changed, so
Snakemake's own up-to-date logic re-runs exactly the units whose files changed.

Conditions (``select.include`` / ``select.exclude``), per series column:

* a scalar: equality (compared as text, so ``SeriesNumber: 3`` matches 3 and "3")
* a list: membership
* ``{regex: "..."}``: full-text search, case-insensitive
* ``{min: a, max: b}``: numeric range, either bound optional
"""
from __future__ import annotations

import hashlib
import io
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .dicomio import atomic_path, atomic_write
from .errors import ConfigError, DicomprepError
from .logs import get_logger
from .paths import layout
from .workflow_support import stages_for

UNIT_COLUMNS = [
    "unit", "group", "sequence", "subject", "scan", "orig_unit", "orig_subject",
    "orig_scan", "patient_pseudonym", "n_series", "n_instances", "kinds", "stages",
]


def slug(text: Any, fallback: str = "x") -> str:
    """Folder-safe token: letters, digits, ``.``, ``_`` and ``-`` only."""
    s = re.sub(r"[^A-Za-z0-9._-]+", "-", str(text or "")).strip("-._")
    return s or fallback


def index_dir(out_dir: str | Path) -> Path:
    return layout(out_dir).index_dir


def unit_dir(out_dir: str | Path, unit: str) -> Path:
    return layout(out_dir).unit_dir(unit)


def read_index(out_dir: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The instances and series tables of an output folder's private index."""
    idx = index_dir(out_dir)
    try:
        return pd.read_parquet(idx / "instances.parquet"), pd.read_parquet(idx / "series.parquet")
    except FileNotFoundError:
        raise DicomprepError(
            f"No index in {out_dir}: run `dicomprep index INPUT {out_dir}` or the workflow first."
        ) from None


# --- conditions -------------------------------------------------------------

def _as_text(series: pd.Series) -> pd.Series:
    def one(v):
        if v is None or (isinstance(v, float) and np.isnan(v)):
            return ""
        if isinstance(v, (list, tuple, np.ndarray)):
            return "\\".join(str(x) for x in v)
        if isinstance(v, float) and v.is_integer():
            return str(int(v))
        return str(v)
    return series.map(one)


def condition_mask(table: pd.DataFrame, column: str, cond: Any, *, where: str = "select") -> pd.Series:
    """Rows of ``table`` meeting one condition on ``column`` (see module docstring)."""
    if column not in table.columns:
        raise ConfigError(
            f"config: {where}: there is no series column '{column}'. Available columns: "
            f"{', '.join(sorted(map(str, table.columns)))}."
        )
    col = table[column]
    if isinstance(cond, dict):
        unknown = set(cond) - {"regex", "min", "max"}
        if unknown:
            raise ConfigError(f"config: {where}.{column}: unknown condition {sorted(unknown)}; use regex, min or max.")
        mask = pd.Series(True, index=table.index)
        if "regex" in cond:
            try:
                rx = re.compile(str(cond["regex"]), re.IGNORECASE)
            except re.error as exc:
                raise ConfigError(f"config: {where}.{column}.regex is not a valid regular expression: {exc}") from None
            mask &= _as_text(col).map(lambda s: bool(rx.search(s)))
        if "min" in cond or "max" in cond:
            num = pd.to_numeric(col, errors="coerce")
            if "min" in cond:
                mask &= num >= float(cond["min"])
            if "max" in cond:
                mask &= num <= float(cond["max"])
        return mask.fillna(False).astype(bool)
    text = _as_text(col)
    if isinstance(cond, list):
        wanted = {str(int(v)) if isinstance(v, float) and v.is_integer() else str(v) for v in cond}
        return text.isin(wanted)
    if isinstance(cond, bool):
        return text.str.lower().isin({"true", "1", "yes"}) if cond else text.str.lower().isin({"false", "0", "no", ""})
    return text == (str(int(cond)) if isinstance(cond, float) and cond.is_integer() else str(cond))


def _read_subject_list(path: str) -> set[str]:
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return {ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")}


def select_series(series: pd.DataFrame, select_cfg: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Apply ``select:``; return (kept series, left-out series with a ``reason``)."""
    keep = pd.Series(True, index=series.index)
    reason = pd.Series("", index=series.index, dtype=object)

    def drop(mask: pd.Series, why: str) -> None:
        newly = mask & keep
        reason[newly] = why
        keep[newly] = False

    for column, cond in (select_cfg.get("include") or {}).items():
        drop(~condition_mask(series, column, cond, where="select.include"), f"not included by select.include.{column}")
    for column, cond in (select_cfg.get("exclude") or {}).items():
        drop(condition_mask(series, column, cond, where="select.exclude"), f"excluded by select.exclude.{column}")
    kinds = select_cfg.get("kinds") or []
    if kinds:
        drop(~series["kind"].isin(kinds), "kind not in select.kinds")
    subj_cols = [c for c in ("orig_subject", "PatientID") if c in series.columns]
    if select_cfg.get("subjects_file"):
        wanted = _read_subject_list(select_cfg["subjects_file"])
        hit = pd.Series(False, index=series.index)
        for c in subj_cols:
            hit |= _as_text(series[c]).isin(wanted)
        drop(~hit, "subject not in select.subjects_file")
    if select_cfg.get("exclude_subjects_file"):
        unwanted = _read_subject_list(select_cfg["exclude_subjects_file"])
        hit = pd.Series(False, index=series.index)
        for c in subj_cols:
            hit |= _as_text(series[c]).isin(unwanted)
        drop(hit, "subject in select.exclude_subjects_file")
    left_out = series.loc[~keep].copy()
    left_out["reason"] = reason[~keep]
    return series.loc[keep].copy(), left_out


# --- units ------------------------------------------------------------------

def unit_keys(series: pd.DataFrame, config: dict, secret: bytes | None) -> pd.DataFrame:
    """One row per original unit with its share-safe key (docs/contracts.md)."""
    from .deid.pseudonym import patient_pseudonym, short_id

    keep_names = bool(config.get("deid", {}).get("keep_folder_names")) or secret is None
    rows = []
    for orig_unit, grp in series.groupby("orig_unit", sort=True):
        first = grp.sort_values(["StudyInstanceUID", "SeriesNumber"], na_position="last").iloc[0]
        pid = str(first.get("PatientID") or "")
        issuer = str(first.get("IssuerOfPatientID") or "")
        if secret is not None:
            pseudo = patient_pseudonym(secret, pid, issuer) if pid else "P" + short_id(secret, "subject", str(first["orig_subject"]), length=8)
        else:
            pseudo = ""
        if keep_names:
            subject, scan = slug(first["orig_subject"]), slug(first["orig_scan"])
        else:
            subject, scan = pseudo, "S" + short_id(secret, "scan", str(orig_unit))
        group, sequence = slug(first["orig_group"]), slug(first["orig_sequence"])
        rows.append({
            "unit": f"{group}/{sequence}/{subject}/{scan}",
            "group": group, "sequence": sequence, "subject": subject, "scan": scan,
            "orig_unit": orig_unit, "orig_subject": first["orig_subject"], "orig_scan": first["orig_scan"],
            "patient_pseudonym": pseudo, "n_series": len(grp),
            "n_instances": int(grp["n_instances"].sum()) if "n_instances" in grp else 0,
            "kinds": ";".join(sorted(set(map(str, grp["kind"])))) if "kind" in grp else "",
            "stages": ";".join(stages_for(set(map(str, grp["kind"])) if "kind" in grp else set(), config)),
        })
    units = pd.DataFrame(rows, columns=UNIT_COLUMNS)
    dup = units["unit"].duplicated(keep=False)
    if dup.any():
        # Two original units with the same folder names (keep_folder_names): disambiguate.
        from .deid.pseudonym import disambiguate

        units.loc[dup, "unit"] = units.loc[dup].apply(
            lambda r: disambiguate(secret, r["unit"], "unit", str(r["orig_unit"])) if secret is not None
            else f"{r['unit']}-{hashlib.sha1(str(r['orig_unit']).encode()).hexdigest()[:6]}", axis=1)
    return units


def _parquet_bytes(df: pd.DataFrame) -> bytes:
    buf = io.BytesIO()
    df.reset_index(drop=True).to_parquet(buf, index=False)
    return buf.getvalue()


def same_content(path: Path, df: pd.DataFrame) -> bool:
    """Whether the Parquet file at ``path`` holds ``df``'s values.

    The index types a column from every file it holds (one missing value in
    another unit makes an integer column float; a new attribute adds a column
    that is empty here), so a unit's slice can differ in bytes while its values
    are the same. Such a list is not rewritten: its mtime is what tells
    Snakemake the unit changed.
    """
    try:
        old = pd.read_parquet(path).dropna(axis=1, how="all")
    except Exception:
        return False
    new = df.reset_index(drop=True).dropna(axis=1, how="all")
    if sorted(old.columns) != sorted(new.columns) or len(old) != len(new):
        return False
    try:
        pd.testing.assert_frame_equal(old, new[old.columns], check_dtype=False, check_index_type=False)
    except (AssertionError, TypeError, ValueError):
        return False
    return True


def write_if_changed(df: pd.DataFrame, path: Path) -> bool:
    """Write ``df`` as Parquet unless the file already holds the same bytes."""
    data = _parquet_bytes(df)
    if path.is_file() and (path.read_bytes() == data or same_content(path, df)):
        return False
    with atomic_write(path) as fh:
        fh.write(data)
    return True


def referenced_series_uids(path: str | Path) -> list[str]:
    """SeriesInstanceUIDs a SEG references: Referenced Series Sequence (0008,1115)."""
    from .dicomio import read_dataset
    from .errors import UnreadableDicom

    try:
        ds = read_dataset(path, stop_before_pixels=True)
    except UnreadableDicom:
        return []
    return [str(item.SeriesInstanceUID) for item in getattr(ds, "ReferencedSeriesSequence", None) or []
            if getattr(item, "SeriesInstanceUID", None)]


def segmentations_follow_sources(series: pd.DataFrame, instances: pd.DataFrame, log=None,
                                 secret: bytes | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Move each SEG series into the unit of the image series it references.

    A segmentation is decoded onto its source's grid and must be de-identified
    with it (same keyed UIDs), so both must be in one unit. When the folders put
    them apart (a SEG exported under another study or exam folder), the SEG
    follows its source; a SEG whose source is nowhere in the index stays where
    it is (the SEG stage gives it a reason row).
    """
    if "kind" not in series or not (series["kind"] == "seg").any():
        return series, instances
    images = series[series["kind"] != "seg"]
    unit_of_uid = images.groupby("SeriesInstanceUID")["orig_unit"].agg(lambda u: sorted(set(u)))
    keys = ["orig_unit", "orig_group", "orig_sequence", "orig_subject", "orig_scan"]
    keys = [k for k in keys if k in series.columns]
    series, instances = series.copy(), instances.copy()
    for idx, row in series[series["kind"] == "seg"].iterrows():
        paths = instances.loc[instances["series_key"] == row["series_key"], "path"]
        targets = {u for uid in (referenced_series_uids(paths.iloc[0]) if len(paths) else [])
                   for u in unit_of_uid.get(uid, [])}
        if len(targets) != 1 or row["orig_unit"] in targets:
            continue
        target = targets.pop()
        source_row = images[images["orig_unit"] == target].iloc[0]
        for k in keys:
            series.at[idx, k] = source_row[k]
            instances.loc[instances["series_key"] == row["series_key"], k] = source_row[k]
        if log is not None:
            log.info("segmentation series %s joins the unit of its source series", row.get("series_id"))
        clash = (series["orig_unit"] == target) & (series["series_id"] == row["series_id"])
        if clash.sum() > 1:  # same folder name in its new unit: disambiguate as the index does
            from .deid.pseudonym import disambiguate

            new_id = (disambiguate(secret, str(row["series_id"]), "series", str(row["series_key"])) if secret is not None
                      else f"{row['series_id']}-{str(row['series_key'])[:4]}")
            series.at[idx, "series_id"] = new_id
            if "series_id" in instances:
                instances.loc[instances["series_key"] == row["series_key"], "series_id"] = new_id
    return series, instances


def keyed_series_ids(series: pd.DataFrame, instances: pd.DataFrame, secret: bytes | None
                     ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Series ids that the index told apart with part of the (unkeyed) series key
    (``s003-1a2b``, ``sNA-…``) get a keyed suffix instead: ``series_id`` names
    folders and files in share/ (pseudonym.keyed_name)."""
    if secret is None or series.empty:
        return series, instances
    from .deid.pseudonym import keyed_name

    new_ids = {}
    for key, sid in zip(series["series_key"].astype(str), series["series_id"].astype(str)):
        base, _, suffix = sid.partition("-")
        if suffix and key.startswith(suffix):
            new_ids[key] = f"{base}-{keyed_name(secret, 'series', key, length=len(suffix) if len(suffix) <= 6 else 8)}"
    if not new_ids:
        return series, instances
    series, instances = series.copy(), instances.copy()
    series["series_id"] = [new_ids.get(k, v) for k, v in zip(series["series_key"], series["series_id"])]
    if "series_id" in instances:
        instances["series_id"] = [new_ids.get(k, v) for k, v in zip(instances["series_key"], instances["series_id"])]
    return series, instances


def build_units(out_dir: str | Path, config: dict, *, demo: bool = False, log=None) -> pd.DataFrame:
    """Select series, derive unit keys, write ``private/units.csv`` and per-unit lists."""
    logger = log if log is not None else get_logger("select")
    out_dir = Path(out_dir)
    instances, series = read_index(out_dir)
    from .deid.pseudonym import secret_for_config

    secret = secret_for_config(config, demo=demo)
    series, instances = keyed_series_ids(series, instances, secret)
    series, instances = segmentations_follow_sources(series, instances, logger, secret=secret)
    kept, left_out = select_series(series, config.get("select", {}))
    for _, r in left_out.iterrows():
        logger.info("left out series %s of unit %s: %s", r.get("series_id"), r.get("orig_unit"), r["reason"])
    units = unit_keys(kept, config, secret) if len(kept) else pd.DataFrame(columns=UNIT_COLUMNS)
    unit_of = dict(zip(units["orig_unit"], units["unit"]))
    kept = kept.assign(unit=kept["orig_unit"].map(unit_of))
    inst = instances[instances["series_key"].isin(set(kept["series_key"]))]
    inst = inst.assign(unit=inst["orig_unit"].map(unit_of))
    changed = 0
    for unit, grp in kept.groupby("unit", sort=True):
        d = unit_dir(out_dir, unit)
        changed += write_if_changed(grp.sort_values("series_key"), d / "series.parquet")
        ui = inst[inst["unit"] == unit].sort_values(["series_key", "path"])
        changed += write_if_changed(ui, d / "instances.parquet")
    with atomic_path(layout(out_dir).units_table) as tmp:
        units.to_csv(tmp, index=False)
    with atomic_path(layout(out_dir).left_out_table) as tmp:
        cols = [c for c in ("orig_unit", "series_key", "series_id", "SeriesNumber", "Modality", "kind", "reason") if c in left_out]
        left_out[cols].to_csv(tmp, index=False)
    logger.info("selected %d series in %d units (%d left out); %d per-unit lists changed",
                len(kept), len(units), len(left_out), changed)
    return units


def select_rule(*, out_dir, config, log=None, demo=False, **_):
    """Snakemake checkpoint ``select_units``."""
    build_units(out_dir, config, demo=demo, log=get_logger("select", log))


# --- per-unit API used by every per-unit job -----------------------------------

def load_unit_series(out_dir: str | Path, unit: str) -> pd.DataFrame:
    """The selected series of one unit (index columns + ``unit``)."""
    return pd.read_parquet(unit_dir(out_dir, unit) / "series.parquet")


def load_unit_instances(out_dir: str | Path, unit: str) -> pd.DataFrame:
    """The instances of one unit's selected series, with the series ``kind``."""
    inst = pd.read_parquet(unit_dir(out_dir, unit) / "instances.parquet")
    if "kind" not in inst.columns:
        ser = load_unit_series(out_dir, unit)[["series_key", "kind"]]
        inst = inst.merge(ser, on="series_key", how="left")
    return inst


def deid_manifest_path(out_dir: str | Path, unit: str) -> Path:
    return layout(out_dir).stage_manifest("deid", unit)


def unit_sources(out_dir: str | Path, unit: str, anonymisation: bool) -> pd.DataFrame:
    """Instances a converter must read, with ``source_path``.

    With de-identification on, ``source_path`` is the de-identified copy (in the
    deid stage directory) and instances the de-identification did not write
    (dropped, quarantined) are left out; otherwise it is the original file.
    """
    inst = load_unit_instances(out_dir, unit)
    if not anonymisation:
        return inst.assign(source_path=inst["path"])
    stage = layout(out_dir).stage_dir("deid", unit)
    manifest = pd.read_parquet(deid_manifest_path(out_dir, unit))
    written = manifest[manifest["status"] == "written"][["path", "output_path"]]
    merged = inst.merge(written, on="path", how="inner")
    merged["output_path"] = [str(stage / p) for p in merged["output_path"]]
    return merged.rename(columns={"output_path": "source_path"})
