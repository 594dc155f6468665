"""Metadata crawl: every attribute of every file into one wide table
(``private/index/all_tags.parquet`` and ``.csv``; ``dicomprep index --all-tags``,
config ``index.all_tags`` / ``index.all_tags_per``).

Column naming (one column per attribute path):

* public attributes: their keyword (``PatientID``), or ``Tag_ggggeeee`` when
  the dictionary does not know them;
* private attributes (odd group, PS3.5 7.8.1): ``{creator}_{gggg}xx{ee}`` as
  DICOM writes private tags, e.g. (0029,1010) reserved by ``SIEMENS CSA
  HEADER`` -> ``SIEMENS CSA HEADER_0029xx10``, so the name does not depend on
  the block the creator happened to reserve; the creator elements themselves
  are ``PrivateCreator_gggg00ee``; without a creator ``Private_ggggeeee``;
* nested sequences are flattened as ``Parent_Child`` (recursively,
  ``Parent_Child_Grandchild``). A sequence with several items gives one
  column per child attribute whose value lists the items' values in item
  order joined by ``" | "`` (an item without the attribute contributes an
  empty string), so repeated values are kept and stay aligned with their
  items; the item count is in ``Parent__items``.

Values are text: multi-values joined by ``\\``, numbers as pydicom prints
them. Pixel data and binary values over :data:`MAX_BINARY` bytes are not
dumped: the cell says ``<OB, 524288 bytes, not dumped>``; short binary values
are hex.

``per="series"``: one row per series (``series_key`` of the index, else
SeriesInstanceUID + SeriesNumber); an attribute equal in every instance keeps
its value, one that differs lists the distinct values in instance order
joined by ``" || "``; ``n_instances`` counts the rows merged.
"""
from __future__ import annotations

import json
import logging
import os
import warnings
from pathlib import Path
from typing import Iterable, Sequence

import pandas as pd
from pydicom.dataelem import RawDataElement
from pydicom.datadict import keyword_for_tag

from .dicomio import atomic_path, read_dataset
from .errors import DicomprepError
from .parallel import map_chunked
from .paths import layout

#: Binary values longer than this many bytes are summarised, not dumped.
MAX_BINARY = 256
ITEM_SEP = " | "
SERIES_SEP = " || "
_BINARY_VRS = {"OB", "OW", "OD", "OF", "OL", "OV", "UN", "OB or OW", "US or OW"}
FIXED_COLUMNS = ["path", "relpath", "series_key"]


def _creators(ds) -> dict[int, str]:
    """Private creator tag (gggg,00xx) -> its text (PS3.5 7.8.1)."""
    out = {}
    for tag in ds.keys():
        if tag.group % 2 == 1 and 0x0010 <= tag.element <= 0x00FF:
            try:
                value = ds[tag].value
            except Exception:
                continue
            out[int(tag)] = str(value).strip() if value is not None else ""
    return out


def _private_name(creators: dict[int, str], tag) -> str:
    group, elem = tag.group, tag.element
    if elem < 0x0100:
        return f"PrivateCreator_{group:04X}{elem:04X}" if elem >= 0x0010 else f"Private_{group:04X}{elem:04X}"
    creator = creators.get((group << 16) | (elem >> 8))
    if not creator:
        return f"Private_{group:04X}{elem:04X}"
    return f"{creator}_{group:04X}xx{elem & 0xFF:02X}"


def _name(creators: dict[int, str], tag) -> str:
    if tag.is_private:
        return _private_name(creators, tag)
    return keyword_for_tag(tag) or f"Tag_{tag.group:04X}{tag.element:04X}"


def _binary_text(vr: str, value: bytes | None, length: int) -> str:
    if value is None or length > MAX_BINARY:
        return f"<{vr}, {length} bytes, not dumped>"
    return value.hex()


def _value_text(elem) -> str:
    v = elem.value
    if v is None:
        return ""
    if isinstance(v, (bytes, bytearray)):
        return _binary_text(elem.VR, v, len(v))
    if isinstance(v, (list, tuple)) or type(v).__name__ == "MultiValue":
        return "\\".join(str(x) for x in v)
    return str(v)


def flatten_dataset(ds, prefix: str = "") -> dict[str, str]:
    """Attribute path -> text of one dataset (module docstring for the rules)."""
    out: dict[str, str] = {}
    creators = _creators(ds)
    for tag in ds.keys():
        if tag.group == 0xFFFE:
            continue
        name = prefix + _name(creators, tag)
        raw = ds.get_item(tag)
        if isinstance(raw, RawDataElement) and raw.VR in _BINARY_VRS and raw.length > MAX_BINARY:
            out[name] = _binary_text(raw.VR, None, raw.length)
            continue
        if isinstance(raw, RawDataElement) and raw.value is None and raw.length > 0 and raw.VR != "SQ":
            out[name] = f"<{raw.VR}, {raw.length} bytes, not dumped>"
            continue
        try:
            elem = ds[tag]
        except Exception as exc:  # undecodable value: say so, keep going
            out[name] = f"<unreadable value: {type(exc).__name__}>"
            continue
        if elem.VR == "SQ":
            items = list(elem.value or [])
            out[name + "__items"] = str(len(items))
            flat_items = [flatten_dataset(item, name + "_") for item in items]
            keys: list[str] = []
            seen = set()
            for fi in flat_items:
                for k in fi:
                    if k not in seen:
                        seen.add(k)
                        keys.append(k)
            for k in keys:
                vals = [fi.get(k, "") for fi in flat_items]
                out[k] = vals[0] if len(vals) == 1 else ITEM_SEP.join(vals)
            continue
        if elem.VR in _BINARY_VRS and isinstance(elem.value, (bytes, bytearray)):
            out[name] = _binary_text(elem.VR, elem.value, len(elem.value))
            continue
        out[name] = _value_text(elem)
    return out


def crawl_file(path: str | os.PathLike) -> dict[str, str]:
    """Every attribute of one file (file meta included), flattened."""
    with warnings.catch_warnings():   # value-length/VR warnings of real files: not for the user
        warnings.simplefilter("ignore")
        ds = read_dataset(path, defer_size=MAX_BINARY + 1)
    meta = getattr(ds, "file_meta", None)
    if "SOPClassUID" not in ds and (meta is None or "MediaStorageSOPClassUID" not in meta):
        raise DicomprepError(f"{path} is not a DICOM file (no SOP Class UID)")
    row = {}
    if meta is not None:
        row.update(flatten_dataset(meta))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        row.update(flatten_dataset(ds))
    return row


def _crawl_one(path: str) -> dict | str:
    try:
        return crawl_file(path)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"


def _crawl_all(paths: list[str], workers: int) -> list:
    """Rows (or error strings) of ``paths``, in order; ``workers`` processes."""
    return map_chunked(_crawl_one, paths, workers, serial_below=16, chunk=(8, 128))


def crawl(paths: Sequence[str | os.PathLike], per: str = "instance", *,
          series_keys: Sequence[str] | None = None, relpaths: Sequence[str] | None = None,
          log: logging.Logger | None = None, workers: int = 1) -> pd.DataFrame:
    """One row per file (``per="instance"``) or per series (``per="series"``).

    ``series_keys`` (same order as ``paths``) groups series; without it the
    files' SeriesInstanceUID + SeriesNumber do. Unreadable files are logged
    and left out.
    """
    _check_per(per)
    return _frame(paths, _crawl_all([str(p) for p in paths], workers), per, series_keys=series_keys,
                  relpaths=relpaths, log=log)


def _check_per(per: str) -> None:
    """``index.all_tags_per`` must be ``instance`` or ``series``."""
    if per not in ("instance", "series"):
        raise DicomprepError(f"index.all_tags_per: {per!r} is not 'instance' or 'series'.")


def _frame(paths: Sequence[str | os.PathLike], crawled: Sequence[dict | str], per: str, *,
           series_keys: Sequence[str] | None, relpaths: Sequence[str] | None,
           log: logging.Logger | None) -> pd.DataFrame:
    """The crawl's table from each path's row (or error string), in ``paths`` order."""
    rows = []
    for i, (p, row) in enumerate(zip(paths, crawled)):
        if isinstance(row, str):
            if log:
                log.warning("all-tags crawl skipped %s: %s", p, row)
            continue
        head = {"path": str(p), "relpath": relpaths[i] if relpaths is not None else str(p),
                "series_key": series_keys[i] if series_keys is not None
                else f"{row.get('SeriesInstanceUID', '')}#{row.get('SeriesNumber', '')}"}
        head.update(row)
        rows.append(head)
    df = pd.DataFrame(rows)
    if df.empty:
        return pd.DataFrame(columns=FIXED_COLUMNS)
    df = df.astype(object).where(df.notna(), None)
    if per == "series":
        df = _per_series(df)
    return df


def _merge_values(values: Iterable) -> str | None:
    distinct: list = []
    for v in values:
        if v is not None and v not in distinct:
            distinct.append(v)
    if not distinct:
        return None
    return distinct[0] if len(distinct) == 1 else SERIES_SEP.join(map(str, distinct))


def _per_series(df: pd.DataFrame) -> pd.DataFrame:
    out = []
    for key, group in df.groupby("series_key", sort=False):
        row = {"series_key": key, "n_instances": len(group), "path": group["path"].iloc[0],
               "relpath": group["relpath"].iloc[0]}
        for col in df.columns:
            if col in row or col in ("path", "relpath"):
                continue
            row[col] = _merge_values(group[col])
        out.append(row)
    return pd.DataFrame(out)


#: Per-file rows of earlier crawls (``paths.OutputLayout.all_tags_cache``, ``part-*.parquet``:
#: path, size, mtime_ns and the row as JSON) are written every CACHE_CHUNK files: a crawl
#: that is stopped resumes where it was, and an unchanged file is not read again.
CACHE_CHUNK = 256


def _load_crawl_cache(cache: Path) -> dict[str, tuple[int, int, str]]:
    """path -> (size, mtime_ns, row JSON) of the cache's parts, later parts winning."""
    out: dict[str, tuple[int, int, str]] = {}
    for part in sorted(cache.glob("part-*.parquet")) if cache.is_dir() else []:
        try:
            table = pd.read_parquet(part)
        except Exception:  # noqa: BLE001 - a part cut short by a kill: its files are crawled again
            continue
        for path, size, mtime, row in zip(table["path"], table["size"], table["mtime_ns"], table["row"]):
            out[str(path)] = (int(size), int(mtime), str(row))
    return out


def _write_cache_part(cache: Path, name: str, paths, sizes, mtimes, rows) -> None:
    cache.mkdir(parents=True, exist_ok=True)
    table = pd.DataFrame({"path": [str(p) for p in paths], "size": [int(x) for x in sizes],
                          "mtime_ns": [int(x) for x in mtimes],
                          "row": [json.dumps(r, sort_keys=True, default=str) for r in rows]})
    with atomic_path(cache / name) as tmp:
        table.to_parquet(tmp, index=False)


def _crawl_resumable(cache: Path, paths: list[str], sizes: list, mtimes: list, workers: int,
                     log: logging.Logger) -> list[dict | str]:
    """Each path's crawl row (or error string): from the cache when the file's size and
    mtime are those it was crawled with, else read now, in chunks saved as they finish."""
    known = _load_crawl_cache(cache)
    rows: list[dict | str | None] = [None] * len(paths)
    todo = []
    for i, (p, size, mtime) in enumerate(zip(paths, sizes, mtimes)):
        hit = known.get(str(p))
        if hit is not None and hit[0] == int(size) and hit[1] == int(mtime):
            rows[i] = json.loads(hit[2])
        else:
            todo.append(i)
    log.info("all-tags crawl: %d files from earlier crawls, %d to read", len(paths) - len(todo), len(todo))
    first_part = len(list(cache.glob("part-*.parquet"))) if cache.is_dir() else 0
    for n, start in enumerate(range(0, len(todo), CACHE_CHUNK)):
        chunk = todo[start:start + CACHE_CHUNK]
        got = _crawl_all([str(paths[i]) for i in chunk], workers)
        for i, row in zip(chunk, got):
            rows[i] = row
        _write_cache_part(cache, f"part-{first_part + n:06d}.parquet", [paths[i] for i in chunk],
                          [sizes[i] for i in chunk], [mtimes[i] for i in chunk], got)
    if todo or len(known) != len(paths):  # one part holding exactly the current files
        _write_cache_part(cache, "part-compact.parquet.new", paths, sizes, mtimes, rows)
        for part in cache.glob("part-*.parquet"):
            part.unlink()
        (cache / "part-compact.parquet.new").rename(cache / "part-000000.parquet")
    return rows


def write_crawl(out_dir: str | os.PathLike, per: str = "instance", log=None,
                paths: Sequence[str] | None = None, workers: int = 1) -> Path:
    """Crawl every instance of the index of ``out_dir`` (or ``paths``) into
    ``private/index/all_tags.parquet`` and ``all_tags.csv``; returns the Parquet path."""
    lay = layout(out_dir)
    logger = log if isinstance(log, logging.Logger) else logging.getLogger("dicomprep.crawl")
    if paths is None:
        if not lay.instances_table.is_file():
            raise DicomprepError(f"No index in {out_dir}: run `dicomprep index INPUT {out_dir}` before the crawl.")
        inst = pd.read_parquet(lay.instances_table, columns=["path", "relpath", "series_key", "size", "mtime_ns"])
        _check_per(per)
        crawled = _crawl_resumable(lay.all_tags_cache, list(inst["path"]), list(inst["size"]),
                                   list(inst["mtime_ns"]), workers, logger)
        df = _frame(list(inst["path"]), crawled, per, series_keys=list(inst["series_key"]),
                    relpaths=list(inst["relpath"]), log=logger)
    else:
        df = crawl(list(paths), per, log=logger, workers=workers)
    df = df.astype(object).where(df.notna(), None)
    for col in df.columns:
        if col != "n_instances":
            df[col] = df[col].map(lambda v: None if v is None else str(v))
    with atomic_path(lay.all_tags_parquet) as tp, atomic_path(lay.all_tags_csv) as tc:
        df.to_parquet(tp, index=False)
        df.to_csv(tc, index=False)
    logger.info("all-tags crawl: %d rows x %d columns (per %s) -> %s", len(df), len(df.columns), per,
                lay.all_tags_parquet)
    return lay.all_tags_parquet
