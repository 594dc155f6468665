"""share/tables/: one de-identified row per selected series, across stages.

Only pseudonymous keys and technical attributes reach share/: the unit key,
``series_id``, kind, modality, geometry summary, and each stage's status with
its reason (paths in reasons are replaced, since they may name input folders).
"""
from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .dicomio import atomic_path
from .logs import get_logger
from .paths import layout

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


def _read_tagged(paths: list[tuple[str, Path]]) -> pd.DataFrame | None:
    """Parquet tables of many units as one frame with a ``__unit`` column: each
    file read by pyarrow, one concatenation and one pandas conversion (per-unit
    pandas reads and joins cost far more than the data at 10,000 units)."""
    tables = []
    for unit, path in paths:
        if not path.is_file():
            continue
        t = pq.read_table(path)
        if t.num_rows == 0:
            continue
        t = t.replace_schema_metadata(None)          # no per-file pandas index metadata
        tables.append(t.append_column("__unit", pa.array([unit] * t.num_rows, pa.string())))
    if not tables:
        return None
    return pa.concat_tables(tables, promote_options="permissive").to_pandas()


def _aggregate(frame: pd.DataFrame, prefix: str, *, deid: bool = False) -> pd.DataFrame:
    """Manifest rows → one row per (unit, series_key): the set of statuses
    (``;``-joined, sorted), the share-safe reasons (``; ``-joined, sorted), the
    outputs in manifest order (``;``-joined) or, for ``deid``, the count of
    written instances. One pass over the rows in Python."""
    n = len(frame)
    units, keys = frame["__unit"].tolist(), frame["series_key"].tolist()
    statuses = frame["status"].tolist()
    reasons = frame["reason"].tolist() if "reason" in frame else [""] * n
    outputs = frame["outputs"].tolist() if "outputs" in frame and not deid else None
    safe: dict = {}
    acc: dict[tuple, list] = {}
    for i in range(n):
        a = acc.get((units[i], keys[i]))
        if a is None:
            a = acc[(units[i], keys[i])] = [set(), set(), [], 0]
        status = statuses[i]
        a[0].add(str(status))
        reason = reasons[i]
        if str(reason):
            text = safe.get(reason) if isinstance(reason, str) else None
            if text is None:
                text = share_safe_text(reason)
                if isinstance(reason, str):
                    safe[reason] = text
            a[1].add(text)
        if outputs is not None and str(outputs[i]):
            a[2].append(str(outputs[i]))
        if status == "written":
            a[3] += 1
    index = pd.MultiIndex.from_tuples(list(acc), names=["__unit", "series_key"])
    if deid:
        columns = {"deid_written": [a[3] for a in acc.values()],
                   "deid_status": [";".join(sorted(a[0])) for a in acc.values()],
                   "deid_reason": ["; ".join(sorted(a[1])) for a in acc.values()]}
    else:
        columns = {f"{prefix}status": [";".join(sorted(a[0])) for a in acc.values()],
                   f"{prefix}reason": ["; ".join(sorted(a[1])) for a in acc.values()],
                   f"{prefix}outputs": [";".join(a[2]) for a in acc.values()]}
    return pd.DataFrame(columns, index=index)


def series_share_table(out_dir: str | Path, units: pd.DataFrame) -> pd.DataFrame:
    """The cohort's series table for share/: one row per selected series.

    Columns: ``unit, scan, subject, sequence, group``, the technical series
    columns (:data:`SHARE_SERIES_COLUMNS` present), then ``deid_written /
    deid_status / deid_reason`` and ``<stage>_status / _reason / _outputs``
    for each stage of :data:`STAGES` that has a manifest in some unit.
    All units are read and aggregated at once (linear in the number of rows).
    """
    lay = layout(out_dir)
    names = list(units["unit"]) if len(units) else []
    series = _read_tagged([(u, lay.unit_series(u)) for u in names])
    if series is None:
        return pd.DataFrame(columns=["unit", "group", "sequence", "subject", "scan"] + SHARE_SERIES_COLUMNS)
    cols = [c for c in SHARE_SERIES_COLUMNS if c in series.columns]
    table = series[["__unit", "series_key"] + cols].set_index(["__unit", "series_key"])
    extras = []
    deid = _read_tagged([(u, lay.stage_manifest("deid", u)) for u in names])
    if deid is not None and "series_key" in deid:
        extras.append(_aggregate(deid, "deid_", deid=True))
    for stage in STAGES:
        manifest = _read_tagged([(u, lay.stage_manifest(stage, u)) for u in names])
        if manifest is not None and "series_key" in manifest:
            extras.append(_aggregate(manifest, f"{stage}_"))
    for extra in extras:
        table = table.join(extra, how="left")
    table = table.reset_index().drop(columns="series_key")
    meta = units.set_index("unit")
    unit_col = table.pop("__unit")
    for part in ("group", "sequence", "subject", "scan"):
        table.insert(0, part, unit_col.map(meta[part]).to_numpy())
    table.insert(0, "unit", unit_col.to_numpy())
    return table.sort_values(["unit", "series_id"]).reset_index(drop=True)


def write_share_tables(out_dir: str | Path, log=None) -> pd.DataFrame:
    """Write share/tables/series.csv + .parquet and the CT series index."""
    from .convert.ncct import write_ct_index  # lazy: ncct pulls SimpleITK; share_safe_text users need none

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
