"""share/tables/: one de-identified row per selected series, across stages.

Only pseudonymous keys and technical attributes reach share/: the unit key,
``series_id``, kind, modality, geometry summary, and each stage's status with
its reason (paths in reasons are replaced, since they may name input folders).
"""
from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from .dicomio import atomic_path
from .logs import get_logger
from .paths import layout
from .select import load_unit_series

#: Series columns that are technical and safe to share.
SHARE_SERIES_COLUMNS = [
    "series_id", "kind", "Modality", "n_instances", "n_frames", "enhanced", "Rows", "Columns",
    "matrix_consistent", "orientation", "slice_spacing", "spacing_regular", "spacing_min",
    "spacing_max", "n_duplicates", "tilt_deg", "n_bvalues",
]
#: Stages whose manifests give the table's ``<stage>_status/_reason/_outputs`` columns.
STAGES = ("dcm2niix", "ncct", "seg", "hdf5")
#: A file path: absolute (``/…``, ``~/…``, ``C:\…``) or with two or more separators.
_PATH_RX = re.compile(
    r"(?:(?<![^\s'\"(=])(?:[A-Za-z]:|~)?[\\/](?:[^\s\\/:'\"]+[\\/]?)+)"   # absolute
    r"|(?:[^\s\\/:'\"]+[\\/]){2,}[^\s\\/:'\"]*"                 # relative, 2+ separators
)


def share_safe_text(text: object) -> str:
    """A reason sentence with any file path replaced by ``<path>``."""
    if text is None or (isinstance(text, float) and pd.isna(text)):
        return ""
    return _PATH_RX.sub("<path>", str(text))


def _stage_table(out_dir: Path, unit: str, stage: str) -> pd.DataFrame | None:
    path = layout(out_dir).stage_manifest(stage, unit)
    if not path.is_file():
        return None
    table = pd.read_parquet(path)
    if "series_key" not in table.columns or table.empty:
        return None
    agg = table.groupby("series_key").agg(
        status=("status", lambda s: ";".join(sorted(set(map(str, s))))),
        reason=("reason", lambda s: "; ".join(sorted({share_safe_text(x) for x in s if str(x)}))),
        outputs=("outputs", lambda s: ";".join(str(x) for x in s if str(x))) if "outputs" in table else ("status", lambda s: ""),
    )
    return agg.add_prefix(f"{stage}_")


def _deid_table(out_dir: Path, unit: str) -> pd.DataFrame | None:
    path = layout(out_dir).stage_manifest("deid", unit)
    if not path.is_file():
        return None
    m = pd.read_parquet(path)
    if m.empty:
        return None
    return m.groupby("series_key").agg(
        deid_written=("status", lambda s: int((s == "written").sum())),
        deid_status=("status", lambda s: ";".join(sorted(set(map(str, s))))),
        deid_reason=("reason", lambda s: "; ".join(sorted({share_safe_text(x) for x in s if str(x)}))),
    )


def series_share_table(out_dir: str | Path, units: pd.DataFrame) -> pd.DataFrame:
    """The cohort's series table for share/: one row per selected series."""
    out_dir = Path(out_dir)
    frames = []
    for _, u in units.iterrows():
        unit = u["unit"]
        ser = load_unit_series(out_dir, unit).set_index("series_key")
        cols = [c for c in SHARE_SERIES_COLUMNS if c in ser.columns]
        row = ser[cols].copy()
        for part in ("group", "sequence", "subject", "scan"):
            row.insert(0, part, u[part])
        row.insert(0, "unit", unit)
        for extra in [_deid_table(out_dir, unit)] + [_stage_table(out_dir, unit, s) for s in STAGES]:
            if extra is not None:
                row = row.join(extra, how="left")
        frames.append(row.reset_index(drop=True))
    if not frames:
        return pd.DataFrame(columns=["unit", "group", "sequence", "subject", "scan"] + SHARE_SERIES_COLUMNS)
    table = pd.concat(frames, ignore_index=True)
    return table.sort_values(["unit", "series_id"]).reset_index(drop=True)


def write_share_tables(out_dir: str | Path, log=None) -> pd.DataFrame:
    """Write share/tables/series.csv + .parquet and the CT series index."""
    from .convert.ncct import write_ct_index

    logger = log or get_logger("tables")
    lay = layout(out_dir)
    units = pd.read_csv(lay.units_table, dtype=str, keep_default_na=False)
    table = series_share_table(out_dir, units)
    with atomic_path(lay.series_parquet) as tmp:
        table.to_parquet(tmp, index=False)
    with atomic_path(lay.series_csv) as tmp:
        table.to_csv(tmp, index=False)
    manifests = [lay.stage_manifest("ncct", u) for u in units["unit"]]
    write_ct_index(lay.ct_index, [m for m in manifests if m.is_file()])
    logger.info("share tables: %d series in %d units", len(table), len(units))
    return table
