"""Cohort selection: series filters -> the unit table that drives the DAG.

The select checkpoint reads the private index, keeps the series the config's
``select:`` section asks for, groups them into units and gives each unit its
share-safe key ``group/sequence/subject/scan`` (the Snakemake wildcard
``{unit}``; see docs/contracts.md, made by :mod:`dicomprep.unit_keys`).
Per-unit instance and series lists are written under ``private/units/{unit}/``
only when their content changed (:mod:`dicomprep.units`), so Snakemake's own
up-to-date logic re-runs exactly the units whose files changed.

Conditions (``select.include`` / ``select.exclude``), per series column:

* a scalar: equality (compared as text, so ``SeriesNumber: 3`` matches 3 and "3")
* a list: membership
* ``{regex: "..."}``: full-text search, case-insensitive
* ``{min: a, max: b}``: numeric range, either bound optional
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .deid.pseudonym import disambiguate, secret_for_config
from .dicomio import atomic_path, read_dataset
from .errors import ConfigError, DicomprepError, UnreadableDicom
from .logs import get_logger
from .paths import layout
from .unit_keys import UNIT_COLUMNS, keyed_series_ids, unit_keys
from .units import unit_dir, write_if_changed

def index_dir(out_dir: str | Path) -> Path:
    return layout(out_dir).index_dir


def read_index(out_dir: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The instances and series tables of an output folder's private index."""
    idx = index_dir(out_dir)
    try:
        return read_index_table(idx / "instances.parquet"), read_index_table(idx / "series.parquet")
    except FileNotFoundError:
        raise DicomprepError(
            f"No index in {out_dir}: run `dicomprep index INPUT {out_dir}` or the workflow first."
        ) from None


def read_index_table(path: Path, **kwargs: Any) -> pd.DataFrame:
    """One Parquet table of the private index; a file that is not readable Parquet (cut
    short by a full disk, edited by hand) is a :class:`DicomprepError` naming it and the
    fix, not a traceback. A missing file raises :class:`FileNotFoundError`."""
    try:
        return pd.read_parquet(path, **kwargs)
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as exc:   # pyarrow's ArrowInvalid is a ValueError
        raise DicomprepError(
            f"{path} is not a readable Parquet table ({type(exc).__name__}: {str(exc)[:200]}). Remove it and "
            "index again (`dicomprep index INPUT OUT`, or run the workflow) to rebuild it.") from None


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
        if where == "query":  # dicomprep ls --where / CohortIndex queries: no config involved
            raise ConfigError(
                f"query: there is no column '{column}' in this table, nor in an all-tags crawl of the index "
                f"(`dicomprep index INPUT OUT --all-tags` crawls every attribute). Available columns: "
                f"{', '.join(sorted(map(str, table.columns)))}."
            )
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

def referenced_series_uids(path: str | Path) -> list[str]:
    """SeriesInstanceUIDs a SEG references: Referenced Series Sequence (0008,1115)."""
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
            new_id = (disambiguate(secret, str(row["series_id"]), "series", str(row["series_key"])) if secret is not None
                      else f"{row['series_id']}-{str(row['series_key'])[:4]}")
            series.at[idx, "series_id"] = new_id
            if "series_id" in instances:
                instances.loc[instances["series_key"] == row["series_key"], "series_id"] = new_id
    return series, instances


def build_units(out_dir: str | Path, config: dict, *, demo: bool = False, log=None) -> pd.DataFrame:
    """Select series, derive unit keys, write ``private/units.csv`` and per-unit lists."""
    logger = log if log is not None else get_logger("select")
    out_dir = Path(out_dir)
    instances, series = read_index(out_dir)
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
