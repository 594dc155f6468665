"""HDF5 store: one file per unit (``share/hdf5/<unit>.h5``) and a cohort file.

Layout of a unit file::

    /<series_id>/            group per series, keyed by the pseudonymous series id
        data                 the pixels, chunked one frame (slice) per chunk
        attrs: dim_labels, dims (JSON: labels, values, per-volume attributes),
               affine_ras, spacing, values (raw|rescaled), mode (3d|2d) and a
               small set of de-identified metadata (Modality, Manufacturer, ...)

``data`` has shape ``(*sort_dims, Rows, Columns)``; in ``3d`` mode that is
``(slice,)`` or ``(volume, slice)`` followed by ``(row, column)``, so
``data[()].T`` is ``[column, row, slice(, volume)]`` — NIfTI voxel order —
and ``affine_ras`` maps those indices to RAS millimetres (the same affine
:mod:`dicomprep.geometry` gives the NIfTI conversion). ``2d`` mode stores the
frames in acquisition order (``(frame, row, column)``).

``share/hdf5/cohort.h5`` holds an HDF5 external link per unit at the unit's
key (``/<group>/<sequence>/<subject>/<scan>``), with paths relative to the
cohort file, and ``share/tables/hdf5_index.csv`` lists every array: ``unit,
series_id, h5_file, h5_path, cohort_path, shape, dtype, dims, Modality``.
Compression (config ``export.hdf5.compression``) trades size for CPU:
``lzf`` (+ byte shuffle; the default) stores CT at about 0.41 of its raw
size, ``gzip`` (level 1 + shuffle) at about 0.35, ``none`` at 1.0 but reads a
volume at ``numpy.load`` speed from a warm cache (benchmarks/bench_hdf5.py).
Chunks are one frame each, so reading a slice decodes one chunk.

From a row to its array in one line::

    arr = h5py.File(OUT / "share" / row.h5_file)[row.h5_path][()]
    # or, through the cohort file:
    arr = h5py.File(OUT / "share/hdf5/cohort.h5")[row.cohort_path][()]
"""
from __future__ import annotations

import contextlib
import json
import os
import threading
from pathlib import Path
from typing import Any, Iterable, Sequence

os.environ.setdefault("BLOSC_NTHREADS", str(min(4, os.cpu_count() or 1)))
import hdf5plugin  # noqa: E402,F401  (registers the Blosc filter for reading and writing)
import h5py
import numpy as np
import pandas as pd

from .. import geometry
from ..dicomio import atomic_path, atomic_write
from ..errors import DicomprepError
from ..index_exclusions import partial_reason
from ..logs import get_logger
from ..version import __version__
from .arrays import (Dim, RaggedSortError, acquisition_frames, dims_to_json, array_affine, series_array)

#: Series kinds (series.parquet ``kind``) that hold images worth an array.
IMAGE_KINDS = {"dwi", "ct_axial", "ct_other", "mr", "pt", "nm", "localizer", "secondary_capture",
               "other_image"}
#: Header attributes copied into the group attributes: acquisition description
#: only — no names, IDs, dates, times, UIDs, institution or device serials.
METADATA_KEYWORDS = ("Modality", "SeriesDescription", "Manufacturer", "ManufacturerModelName",
                     "BodyPartExamined", "ImageType", "Rows", "Columns", "BitsStored",
                     "PhotometricInterpretation", "SliceThickness", "SpacingBetweenSlices",
                     "MagneticFieldStrength", "RepetitionTime", "EchoTime", "FlipAngle",
                     "ScanningSequence", "SequenceVariant", "KVP", "ConvolutionKernel",
                     "RescaleType", "PatientPosition")
INDEX_COLUMNS = ["unit", "series_id", "h5_file", "h5_path", "cohort_path", "shape", "dtype", "dims", "Modality"]


def compression_options(compression: str) -> dict:
    """h5py dataset keywords for a ``export.hdf5.compression`` value.

    ``blosc-lz4`` (the default; Blosc with LZ4 and byte shuffle, HDF5 filter
    32001 from ``hdf5plugin``) reads a 512×512×300 CT about 6× faster than lzf
    at the same size (benchmarks/bench_hdf5.py); readers need
    ``import hdf5plugin``. ``gzip`` (level 1) is readable by any HDF5 library;
    ``lzf`` by h5py. All use the byte shuffle filter, which roughly halves the
    size of 16-bit images at little cost.
    """
    if compression == "blosc-lz4":
        return dict(hdf5plugin.Blosc(cname="lz4", clevel=5, shuffle=hdf5plugin.Blosc.SHUFFLE))
    if compression == "lzf":
        return {"compression": "lzf", "shuffle": True}
    if compression == "gzip":
        return {"compression": "gzip", "compression_opts": 1, "shuffle": True}
    if compression in ("none", None, False):
        return {}
    raise DicomprepError(f"export.hdf5.compression: {compression!r} is not one of blosc-lz4, gzip, lzf, none")


_BLOSC_ENV_LOCK = threading.Lock()


@contextlib.contextmanager
def deterministic_compression():
    """Blosc compresses with one thread while this is active.

    With several threads, c-blosc writes each compressed block where the
    thread that finished it reserved room, so block order (and the file's
    bytes) change from run to run and with the thread count. c-blosc reads
    ``BLOSC_NTHREADS`` at every call, so setting it for the duration of a write
    makes the output byte-identical; reading keeps the module default.
    """
    with _BLOSC_ENV_LOCK:
        old = os.environ.get("BLOSC_NTHREADS")
        os.environ["BLOSC_NTHREADS"] = "1"
        try:
            yield
        finally:
            if old is None:
                os.environ.pop("BLOSC_NTHREADS", None)
            else:
                os.environ["BLOSC_NTHREADS"] = old


def frame_chunks(shape: Sequence[int]) -> tuple[int, ...]:
    """One chunk per 2-D frame (slice): ``(1, ..., 1, Rows, Columns)``."""
    return tuple([1] * (len(shape) - 2) + list(shape[-2:]))


def _metadata(dataset) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in METADATA_KEYWORDS:
        value = dataset.get(key)
        if value is None or value == "":
            continue
        if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
            value = "\\".join(str(v) for v in value)
        elif isinstance(value, (int, float, np.integer, np.floating)) or type(value).__name__ in ("DSfloat", "IS"):
            value = float(value) if "." in str(value) or type(value).__name__ == "DSfloat" else int(value)
        else:
            value = str(value)
        out[key] = value
    return out


def _spacing(affine: np.ndarray | None) -> list[float]:
    if affine is None:
        return []
    return [float(np.linalg.norm(affine[:3, i])) for i in range(3)]


def write_series_group(h5: h5py.File, series_id: str, array: np.ndarray, hgrid: np.ndarray,
                       dims: list[Dim], *, mode: str, values: str, compression: str) -> h5py.Dataset:
    """Write one series group (dataset ``data`` + attributes); returns the dataset."""
    grp = h5.create_group(series_id)
    dset = grp.create_dataset("data", data=array, chunks=frame_chunks(array.shape), track_times=False,
                              **compression_options(compression))
    affine = array_affine(hgrid, dims) if mode == "3d" else None
    grp.attrs["mode"] = mode
    grp.attrs["values"] = values
    grp.attrs["dim_labels"] = json.dumps([d.label for d in dims] + ["row", "column"])
    grp.attrs["dims"] = json.dumps(dims_to_json(dims))
    if affine is not None:
        grp.attrs["affine_ras"] = affine
        grp.attrs["spacing"] = np.asarray(_spacing(affine))
        grp.attrs["affine_axes"] = "data[()].T index (column, row, slice) -> RAS mm"
        frames = [h.geometry for h in hgrid.reshape(-1, hgrid.shape[-1])[0]]
        report = geometry.stack_report(np.array([f.position for f in frames]), frames[0].normal)
        grp.attrs["spacing_regular"] = bool(report.regular)
        grp.attrs["stack_notes"] = "; ".join(report.notes)
    first = hgrid.ravel()[0].dataset
    for key, value in _metadata(first).items():
        grp.attrs[key] = value
    if values == "raw":
        slope = first.get("RescaleSlope")
        if slope is not None:
            grp.attrs["RescaleSlope"] = float(slope)
            grp.attrs["RescaleIntercept"] = float(first.get("RescaleIntercept", 0) or 0)
    return dset


def write_unit_hdf5(out_path: str | Path, series: Iterable[tuple[str, Sequence[str | Path], dict]], *,
                    mode: str = "3d", compression: str = "lzf", values: str = "rescaled",
                    unit: str | None = None, log=None) -> list[dict]:
    """Write one unit's HDF5 file atomically; one row per series with status and reason.

    ``series`` yields ``(series_id, paths, meta)``; ``meta`` may carry
    ``series_key`` and ``kind`` (series of kinds outside :data:`IMAGE_KINDS`
    are skipped with a reason). In ``3d`` mode a series whose frames do not
    form complete volumes is stored as 2-D frames, and the reason says so.
    A series whose pixels cannot be read gets a ``failed`` row; the others
    continue. The file appears under ``out_path`` only when complete.
    """
    if mode not in ("3d", "2d"):
        raise DicomprepError(f"export.hdf5.mode: {mode!r} is not one of 3d, 2d")
    compression_options(compression)
    rows: list[dict] = []
    with atomic_path(out_path) as tmp, deterministic_compression():
        with h5py.File(tmp, "w", track_order=False) as h5:
            h5.attrs["dicomprep_version"] = __version__
            if unit:
                h5.attrs["unit"] = unit
            for series_id, paths, meta in series:
                row = {"series_key": meta.get("series_key", ""), "series_id": series_id,
                       "kind": meta.get("kind", ""), "status": "converted", "reason": "",
                       "h5_path": "", "shape": "", "dtype": "", "dims": "", "mode": ""}
                rows.append(row)
                kind = meta.get("kind")
                if kind and kind not in IMAGE_KINDS:
                    row.update(status="skipped", reason=f"series kind {kind!r} holds no image volume")
                    continue
                try:
                    series_mode = mode
                    try:
                        if mode == "3d":
                            array, hgrid, dims = series_array(paths, values=values)
                        else:
                            array, hgrid, dims = acquisition_frames(paths, values=values)
                    except RaggedSortError as exc:
                        array, hgrid, dims = acquisition_frames(paths, values=values)
                        series_mode = "2d"
                        row["reason"] = f"stored as 2-D frames: {exc}"
                    dset = write_series_group(h5, series_id, array, hgrid, dims, mode=series_mode,
                                              values=values, compression=compression)
                except DicomprepError as exc:
                    if series_id in h5:
                        del h5[series_id]
                    row.update(status="failed", reason=str(exc))
                    if log:
                        log.warning("%s: %s", series_id, exc)
                    continue
                row.update(h5_path=dset.name, shape="x".join(str(s) for s in dset.shape),
                           dtype=str(dset.dtype), dims=",".join(json.loads(dset.parent.attrs["dim_labels"])),
                           mode=series_mode)
                if series_mode == "3d" and "affine_ras" not in dset.parent.attrs and not row["reason"]:
                    row["reason"] = ("no slice geometry (ImagePositionPatient (0020,0032), ImageOrientationPatient "
                                     "(0020,0037)): frames stored in acquisition order, without an affine")
                partial = partial_reason(len(paths), meta.get("excluded_files"))
                if partial:
                    dset.parent.attrs["partial"] = partial
                    row.update(status="partial", reason="; ".join(r for r in (partial, row["reason"]) if r))
                if log:
                    log.info("%s: %s %s %s", series_id, series_mode, row["shape"], row["dtype"])
    return rows


def read_hdf5_series(h5_file: str | Path, series_id: str) -> tuple[np.ndarray, list[Dim], dict]:
    """Array, dims and attributes of one series from a unit file (the store as a source)."""
    with h5py.File(h5_file, "r") as h5:
        if series_id not in h5:
            raise DicomprepError(f"{h5_file} has no series {series_id!r}; it holds {', '.join(h5.keys()) or 'none'}")
        grp = h5[series_id]
        array = grp["data"][()]
        attrs = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in grp.attrs.items()}
    dims = [Dim(d["label"], d["values"], d.get("extra", {})) for d in json.loads(attrs["dims"])
            if d["label"] not in ("row", "column")]
    return array, dims, attrs


# --- workflow wrappers ------------------------------------------------------------

def _unit_series(series: pd.DataFrame, sources: pd.DataFrame):
    """(series_id, source paths, meta) per series with instances, and the series without any."""
    kinds = dict(zip(series["series_key"], series.get("kind", pd.Series([""] * len(series)))))
    # index column (issue 12.4): files of the series that could not be used
    excluded = dict(zip(series["series_key"], series.get("excluded_files", pd.Series([""] * len(series))).fillna("")))
    out = []
    for series_key, group in sources.groupby("series_key", sort=False):
        sid = str(group["series_id"].iloc[0])
        out.append((sid, [str(p) for p in group["source_path"]],
                    {"series_key": series_key, "kind": kinds.get(series_key, ""),
                     "excluded_files": excluded.get(series_key, "")}))
    # Series with no source left (all dropped by de-identification) still get a row.
    present = {m["series_key"] for _, _, m in out}
    missing = [(str(r.series_id), r.series_key, getattr(r, "kind", "")) for r in series.itertuples()
               if r.series_key not in present]
    return sorted(out, key=lambda t: t[0]), missing


def export_unit(*, unit: str, series: pd.DataFrame, sources: pd.DataFrame, share, config: dict,
                log=None) -> pd.DataFrame:
    """Write the unit's HDF5 file ``share.hdf5(unit)``; return the manifest
    (status/reason per series, ``h5_file`` relative to share/)."""
    logger = get_logger("export_hdf5", log)
    cfg = (config.get("export") or {}).get("hdf5") or {}
    todo, missing = _unit_series(series, sources)
    h5_out = share.hdf5(unit)
    rows = write_unit_hdf5(h5_out, todo, mode=cfg.get("mode", "3d"),
                           compression=cfg.get("compression", "lzf"),
                           values=cfg.get("values", "rescaled"), unit=unit, log=logger)
    for sid, key, kind in missing:
        rows.append({"series_key": key, "series_id": sid, "kind": kind, "status": "skipped",
                     "reason": "no instance left after de-identification", "h5_path": "", "shape": "",
                     "dtype": "", "dims": "", "mode": ""})
    rel = os.path.relpath(h5_out, share.root)
    table = pd.DataFrame(rows)
    table.insert(0, "unit", unit)
    table["h5_file"] = [rel if r["status"] in ("converted", "partial") else "" for r in rows]
    table["outputs"] = table["h5_file"].map(lambda p: f"share/{p}" if p else "")
    n_ok = int(table["status"].isin(["converted", "partial"]).sum()) if len(table) else 0
    logger.info("unit %s: %d series in %s, %d skipped/failed", unit, n_ok, rel, len(table) - n_ok)
    return table


def unit_index_rows(h5_file: Path, unit: str, share_dir: Path) -> list[dict]:
    """Rows of ``hdf5_index.csv`` for one unit file (read from the share file itself)."""
    rows = []
    rel = os.path.relpath(h5_file, share_dir)
    with h5py.File(h5_file, "r") as h5:
        for sid, grp in h5.items():
            if not isinstance(grp, h5py.Group) or "data" not in grp:
                continue
            d = grp["data"]
            rows.append({"unit": unit, "series_id": sid, "h5_file": rel, "h5_path": d.name,
                         "cohort_path": f"/{unit}{d.name}", "shape": "x".join(map(str, d.shape)),
                         "dtype": str(d.dtype), "dims": ",".join(json.loads(grp.attrs["dim_labels"])),
                         "Modality": str(grp.attrs.get("Modality", ""))})
    return rows


def write_cohort(cohort_path: str | Path, unit_files: Iterable[str | Path], share_dir: str | Path) -> pd.DataFrame:
    """Write ``cohort.h5`` (an external link per unit, relative path, group = unit
    key) and return the index rows of every array."""
    cohort_path, share_dir = Path(cohort_path), Path(share_dir)
    hdf5_dir = cohort_path.parent
    rows: list[dict] = []
    with atomic_path(cohort_path) as tmp:
        with h5py.File(tmp, "w") as h5:
            h5.attrs["dicomprep_version"] = __version__
            for f in sorted(Path(p) for p in unit_files):
                unit = os.path.relpath(f, hdf5_dir)[: -len(".h5")]
                h5[unit] = h5py.ExternalLink(os.path.relpath(f, hdf5_dir), "/")
                rows.extend(unit_index_rows(f, unit, share_dir))
    return pd.DataFrame(rows, columns=INDEX_COLUMNS)


def write_cohort_files(cohort_path: str | Path, index_csv: str | Path, unit_files: Iterable[str | Path],
                       share_dir: str | Path, log=None) -> pd.DataFrame:
    """``share/hdf5/cohort.h5`` (external links to the unit files) and
    ``share/tables/hdf5_index.csv`` (one row per array)."""
    logger = get_logger("hdf5_cohort", log)
    units = [Path(u) for u in unit_files if Path(u).is_file()]
    index = write_cohort(cohort_path, units, share_dir)
    with atomic_write(Path(index_csv), "w") as fh:
        index.to_csv(fh, index=False)
    logger.info("cohort.h5 links %d unit file(s), %d array(s)", len(units), len(index))
    return index
