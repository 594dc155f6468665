"""A unit's private lists (``private/units/{unit}/``): written by select, read by every per-unit job.

``series.parquet`` and ``instances.parquet`` hold the unit's selected series and
their instances (index columns + ``unit``); they are rewritten only when their
values change, so their mtimes tell Snakemake which units changed.
:func:`unit_sources` gives a converter the files it must read.
"""
from __future__ import annotations

import io
from pathlib import Path

import pandas as pd

from .dicomio import atomic_write
from .paths import layout


def unit_dir(out_dir: str | Path, unit: str) -> Path:
    """``private/units/{unit}/`` of an output folder."""
    return layout(out_dir).unit_dir(unit)


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
    """The unit's de-identification manifest (which copy each instance became)."""
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
