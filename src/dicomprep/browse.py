"""A DICOM folder as a database: patients / studies / series / instances.

``dicomprep.open_index(OUT)`` opens the private index an output folder holds
(``dicomprep index INPUT OUT`` or the workflow writes it) and answers queries:

>>> idx = dicomprep.open_index("results")
>>> idx.series(Modality="CT")                     # DataFrame of CT series
>>> idx.instances(SeriesNumber=3)
>>> arr, headers, dims = idx.array(series_key, sortby=["SliceLocation"])

Keyword conditions take the forms of the config's ``select:`` conditions
(value, list, ``{"regex": ...}``, ``{"min": .., "max": ..}``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydicom.multival import MultiValue

from .convert.seg import source_grid
from .dicomio import read_dataset
from .errors import DicomprepError
from .export.arrays import array_affine, series_array
from .export.dicom_series import write_series
from .paths import layout
from .select import condition_mask, read_index, read_index_table

# nibabel and scipy (export.resample) are imported where volumes are read,
# written or resampled: browsing the index (`dicomprep ls`) does not need them.

PATIENT_COLUMNS = ["PatientID", "IssuerOfPatientID", "PatientName", "PatientBirthDate", "PatientSex"]
STUDY_COLUMNS = ["StudyInstanceUID", "StudyDate", "StudyTime", "StudyDescription", "AccessionNumber", "StudyID"]
LEVELS = ("patients", "studies", "series", "instances")


def parse_where(items: list[str] | None) -> dict[str, Any]:
    """``["Modality=CT", "SeriesNumber=3"]`` → ``{"Modality": "CT", ...}``; ``~`` means regex."""
    out: dict[str, Any] = {}
    for item in items or []:
        if "~" in item and ("=" not in item or item.index("~") < item.index("=")):
            key, value = item.split("~", 1)
            out[key.strip()] = {"regex": value}
        elif "=" in item:
            key, value = item.split("=", 1)
            out[key.strip()] = value
        else:
            raise DicomprepError(f"--where {item!r}: write KEY=VALUE (equality) or KEY~REGEX.")
    return out


class CohortIndex:
    """Query the index of a dicomprep output folder.

    ``output_dir=None`` gives an index-less object whose volume methods
    (``volume``, ``subseries``, ``new_series``, ``map_to``, ``map_mask_to``)
    take folders or lists of files instead of series keys.
    """

    def __init__(self, output_dir: str | Path | None):
        self.output_dir = Path(output_dir) if output_dir is not None else None
        if output_dir is None:
            self._instances = pd.DataFrame(columns=["series_key", "SeriesInstanceUID", "path"])
            self._series = pd.DataFrame()
        else:
            self._instances, self._series = read_index(self.output_dir)

    def _filter(self, table: pd.DataFrame, where: dict[str, Any]) -> pd.DataFrame:
        """Rows of ``table`` (instances or series) meeting every condition. A key that is
        not a column of the index is looked up in the all-tags crawl
        (``private/index/all_tags.parquet``, one row per instance, every attribute): an
        instance meets it when its crawled value does; a series when one of its
        instances does."""
        mask = pd.Series(True, index=table.index)
        crawled = {k: c for k, c in where.items() if k not in table.columns}
        for key, cond in where.items():
            if key not in crawled:
                mask &= condition_mask(table, key, cond, where="query")
        if crawled:
            matches = self._crawl_matches(crawled)
            if matches is None:   # no crawl, or not these columns: say what the index has
                for key, cond in crawled.items():
                    condition_mask(table, key, cond, where="query")
            elif "path" in table.columns and "n_instances" not in table.columns:
                mask &= table["path"].astype(str).isin(matches["path"])
            else:
                mask &= table["series_key"].astype(str).isin(matches["series_key"])
        return table.loc[mask].reset_index(drop=True)

    def _crawl_matches(self, where: dict[str, Any]) -> pd.DataFrame | None:
        """``path`` and ``series_key`` of the crawled instances meeting ``where``, or None
        when there is no per-instance crawl holding every one of its columns."""
        if self.output_dir is None:
            return None
        crawl_path = layout(self.output_dir).all_tags_parquet
        if not crawl_path.is_file():
            return None
        import pyarrow.parquet as pq

        try:
            columns = set(pq.read_schema(crawl_path).names)
        except (OSError, ValueError):
            columns = set()
            read_index_table(crawl_path)   # says what is wrong with the file, and the fix
        if "n_instances" in columns or not set(where) <= columns:   # a per-series crawl, or other columns
            return None
        table = read_index_table(crawl_path, columns=["path", "series_key", *where])
        mask = pd.Series(True, index=table.index)
        for key, cond in where.items():
            mask &= condition_mask(table, key, cond, where="query")
        return table.loc[mask, ["path", "series_key"]].astype(str)

    def instances(self, **where: Any) -> pd.DataFrame:
        """One row per instance (file/frame set)."""
        return self._filter(self._instances, where)

    def series(self, **where: Any) -> pd.DataFrame:
        """One row per series, with ``kind`` and geometry summary."""
        return self._filter(self._series, where)

    def studies(self, **where: Any) -> pd.DataFrame:
        """One row per study, with counts of series and instances."""
        inst = self._filter(self._instances, where)
        cols = [c for c in PATIENT_COLUMNS[:2] + STUDY_COLUMNS if c in inst]
        g = inst.groupby("StudyInstanceUID", dropna=False)
        out = g[cols].first().drop(columns=["StudyInstanceUID"], errors="ignore").reset_index()
        out["n_series"] = g["series_key"].nunique().values
        out["n_instances"] = g.size().values
        return out

    def patients(self, **where: Any) -> pd.DataFrame:
        """One row per patient (PatientID + issuer), with counts."""
        inst = self._filter(self._instances, where)
        keys = [c for c in ("PatientID", "IssuerOfPatientID") if c in inst]
        g = inst.groupby(keys, dropna=False)
        cols = [c for c in PATIENT_COLUMNS if c in inst and c not in keys]
        out = g[cols].first().reset_index()
        out["n_studies"] = g["StudyInstanceUID"].nunique().values
        out["n_series"] = g["series_key"].nunique().values
        out["n_instances"] = g.size().values
        return out

    def table(self, level: str, **where: Any) -> pd.DataFrame:
        if level not in LEVELS:
            raise DicomprepError(f"unknown level {level!r}; choose one of {', '.join(LEVELS)}.")
        return getattr(self, level)(**where)

    def series_paths(self, series: str) -> list[Path]:
        """Files of a series given its ``series_key``, SeriesInstanceUID or ``unit:series_id``."""
        inst = self._instances
        sel = inst[(inst["series_key"] == series) | (inst["SeriesInstanceUID"] == series)]
        if sel.empty:
            raise DicomprepError(
                f"no series {series!r} in the index of {self.output_dir}; list them with "
                f"`dicomprep ls {self.output_dir} series`.")
        if sel["series_key"].nunique() > 1:
            raise DicomprepError(
                f"{series!r} names {sel['series_key'].nunique()} series (one SeriesInstanceUID, several "
                "SeriesNumbers); give the series_key instead.")
        return [Path(p) for p in sel["path"]]

    def array(self, series: str, sortby: list[str] | None = None):
        """N-D pixel array of a series sorted by attributes, with the header grid.

        See :func:`dicomprep.export.arrays.series_array`.
        """
        return series_array(self.series_paths(series), sortby=sortby)

    # --- series as volumes: derive, split, resample --------------------------------

    def _paths(self, series) -> list[Path]:
        if isinstance(series, (list, tuple)):
            return [Path(p) for p in series]
        if isinstance(series, Path) or (isinstance(series, str) and Path(series).exists()):
            p = Path(series)
            return sorted(f for f in p.iterdir() if f.is_file()) if p.is_dir() else [p]
        return self.series_paths(series)

    def volume(self, series) -> "Volume":
        """A series as a :class:`Volume` (``[i, j, k(, t)]`` rescaled values + RAS affine)."""
        return series_volume(self._paths(series))

    def subseries(self, series, by: str | list[str] | None = None, **filters: Any):
        """Instances of one series that meet ``filters``, split by the values of ``by``.

        Conditions take the ``select:`` forms (value, list, ``{"regex": ..}``,
        ``{"min": .., "max": ..}``); a plain value also matches one value of a
        multi-valued attribute, so ``ImageType="P"`` picks phase images.
        Attributes are read from the files' headers (any keyword, not only the
        index columns). Returns the list of files without ``by``; with it, a
        dict ``{value: [files]}`` (a tuple of values when ``by`` is a list),
        e.g. ``idx.subseries(key, by="FlipAngle")`` → ``{5.0: [...], 30.0: [...]}``.
        """
        return subseries(self._paths(series), by=by, **filters)

    def new_series(self, array, affine, template, out_dir, *, secret: bytes, name: str = "", **kwargs):
        """Write ``array`` (``[i, j, k]`` on RAS ``affine``) as a new series in ``out_dir``
        with the patient/study of ``template`` (a series key, UID, folder or files).

        See :func:`dicomprep.export.dicom_series.write_series` (keyword options,
        keyed UIDs from ``secret`` and ``name``).
        """
        return write_series(array, affine, self._paths(template), out_dir, secret=secret, name=name, **kwargs)

    def map_to(self, series, target, *, order: int = 1, fill: float | None = None) -> "Volume":
        """Resample ``series`` onto the grid of ``target`` (series key/UID, folder, files,
        a NIfTI file or image, or a :class:`Volume`)
        in world coordinates: linear by default (``order=0``: nearest neighbour).
        Outside the source: ``fill`` (default the source's minimum, e.g. air in CT)."""
        return map_to(self.volume(series), self._grid(target), order=order, fill=fill)

    def map_mask_to(self, mask, target) -> "Volume":
        """Resample a mask (NIfTI path, nibabel image, :class:`Volume` or ``(array, affine)``)
        onto the grid of ``target`` by nearest neighbour; labels stay labels."""
        return map_mask_to(mask, self._grid(target))

    def _grid(self, target) -> "Volume":
        if isinstance(target, Volume):
            return target
        if hasattr(target, "affine") and hasattr(target, "shape"):         # a nibabel image
            return _as_volume(target)
        if isinstance(target, (str, Path)) and str(target).endswith((".nii", ".nii.gz")):
            return _as_volume(target)
        return series_grid(self._paths(target))


class Volume:
    """An array on a world grid: ``data`` indexed ``[i, j, k(, ...)]``, ``affine`` RAS (NIfTI)."""

    def __init__(self, data, affine, paths=None):
        self.data = data
        self.affine = np.asarray(affine, dtype=float)
        self.paths = list(paths or [])

    @property
    def shape(self) -> tuple:
        return tuple(self.data.shape) if self.data is not None else tuple(self._shape)

    def to_nifti(self, path) -> Path:
        """Write as NIfTI-1 (sform = qform = the affine)."""
        import nibabel as nib  # lazy: see the note at the imports

        img = nib.Nifti1Image(self.data, self.affine)
        img.set_sform(self.affine, code=1)
        img.set_qform(self.affine, code=1)
        nib.save(img, str(path))
        return Path(path)

    def __repr__(self) -> str:
        return f"Volume(shape={self.shape}, dtype={getattr(self.data, 'dtype', None)})"


def series_volume(paths) -> Volume:
    """The pixels of one series as a :class:`Volume`: rescaled values (modality LUT),
    slices sorted along the normal (:func:`dicomprep.export.arrays.series_array`)."""
    arr, hgrid, dims = series_array(list(paths), values="rescaled")
    affine = array_affine(hgrid, dims)
    if affine is None:
        raise DicomprepError("this series has no slice geometry (ImagePositionPatient / ImageOrientationPatient / "
                             "PixelSpacing) or several frames per position; it cannot be placed in the world.")
    return Volume(arr.T, affine, paths)


def series_grid(paths) -> Volume:
    """The grid (shape + affine, no pixels) of one series, from headers only."""
    g = source_grid(list(paths))
    vol = Volume(None, g.affine, paths)
    vol._shape = g.shape
    return vol


def _as_volume(mask) -> Volume:
    import nibabel as nib  # lazy: see the note at the imports

    if isinstance(mask, Volume):
        return mask
    if isinstance(mask, tuple) and len(mask) == 2:
        return Volume(np.asarray(mask[0]), mask[1])
    img = nib.load(str(mask)) if isinstance(mask, (str, Path)) else mask
    return Volume(np.asarray(img.dataobj), img.affine)


def map_to(source: Volume, target: Volume, *, order: int = 1, fill: float | None = None) -> Volume:
    """``source`` resampled onto ``target``'s grid (world coordinates, shear allowed)."""
    from .export.resample import resample  # lazy: see the note at the imports

    if fill is None:
        fill = float(np.min(source.data)) if source.data.size else 0.0
    data = resample(source.data, source.affine, target.affine, target.shape[:3], order=order, fill=fill)
    return Volume(data, target.affine)


def map_mask_to(mask, target: Volume) -> Volume:
    """A mask resampled by nearest neighbour onto ``target``'s grid (0 outside the mask's grid)."""
    from .export.resample import resample  # lazy: see the note at the imports

    m = _as_volume(mask)
    return Volume(resample(m.data, m.affine, target.affine, target.shape[:3], order=0, fill=0), target.affine)


def _header_value(ds, keyword: str):
    v = getattr(ds, keyword, None)
    if isinstance(v, MultiValue):
        return tuple(str(x) for x in v)
    if v is None:
        return None
    try:
        f = float(v)
        return f if not str(v).strip().isdigit() else int(v)
    except (TypeError, ValueError):
        return str(v)


def subseries(paths, by: str | list[str] | None = None, **filters: Any):
    """See :meth:`CohortIndex.subseries`; ``paths`` are the files of one series."""
    keys = list(filters) + ([by] if isinstance(by, str) else list(by or []))
    rows = []
    for p in paths:
        ds = read_dataset(p, stop_before_pixels=True)
        rows.append({"path": Path(p), **{k: _header_value(ds, k) for k in keys}})
    table = pd.DataFrame(rows, columns=["path", *dict.fromkeys(keys)])
    mask = pd.Series(True, index=table.index)
    for key, cond in filters.items():
        if isinstance(cond, (str, int, float)) and not isinstance(cond, bool):
            want = str(int(cond)) if isinstance(cond, float) and cond.is_integer() else str(cond)
            multi = table[key].map(lambda v: isinstance(v, tuple) and want in v)
            mask &= condition_mask(table, key, cond, where="subseries") | multi
        else:
            mask &= condition_mask(table, key, cond, where="subseries")
    sel = table.loc[mask]
    if by is None:
        return list(sel["path"])
    cols = [by] if isinstance(by, str) else list(by)
    out: dict = {}
    for _, row in sel.iterrows():
        key = row[cols[0]] if isinstance(by, str) else tuple(row[c] for c in cols)
        out.setdefault(key, []).append(row["path"])
    return dict(sorted(out.items(), key=lambda kv: str(kv[0])))
