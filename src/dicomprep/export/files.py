"""Exports of one series (or any selection of files) for the CLI and the API.

``export_series(paths, dest, fmt)`` writes, atomically:

* ``nifti``: the geometrically sorted 3-D/4-D volume with its RAS affine
  (:mod:`dicomprep.geometry`), ``.nii.gz`` + a JSON of the dimensions;
* ``npy``: the array sorted by ``sortby`` (``(*key_dims, Rows, Columns)``,
  see :mod:`.arrays`) + a JSON of dimension labels and values;
* ``png``: a montage of the slices (first volume) with window/level from
  WindowCenter/WindowWidth (0028,1050)/(0028,1051) or the one given;
* ``csv``: the metadata of every instance (one row per file, every top-level
  attribute by keyword, sequences and binary values left out);
* ``dicom``: a copy of the files as ``dest/NNNN.dcm`` in acquisition order,
  de-identified by :mod:`dicomprep.deid` (:func:`dicomprep.deid.instance.deidentify_file`) when ``deidentify=True``.

Every function returns the paths it wrote.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Sequence

import nibabel as nib
import numpy as np
import pandas as pd

from ..dicomio import atomic_path, atomic_write, read_dataset, write_dataset
from ..errors import DicomprepError, UnreadableDicom
from ..qc.pictures import apply_window, grid_montage, save_png
from .arrays import acquisition_key, dims_to_json, array_affine, read_frames, series_array

FORMATS = ("nifti", "npy", "png", "csv", "dicom")
SUFFIX = {"nifti": ".nii.gz", "npy": ".npy", "png": ".png", "csv": ".csv"}


def _file_dest(dest: Path, fmt: str) -> Path:
    """``dest`` itself when it ends with the format's suffix, else ``dest/series<suffix>``."""
    dest = Path(dest)
    suffix = SUFFIX[fmt]
    if "".join(dest.suffixes).endswith(suffix) or (fmt == "nifti" and dest.suffix == ".nii"):
        return dest
    return dest / f"series{suffix}"


def _sidecar(path: Path) -> Path:
    name = path.name
    for suffix in (".nii.gz", ".nii", ".npy", ".png"):
        if name.endswith(suffix):
            return path.with_name(name[: -len(suffix)] + ".json")
    return path.with_suffix(".json")


def _write_json(path: Path, payload: dict) -> Path:
    with atomic_write(path, "w") as fh:
        json.dump(payload, fh, indent=1, default=str)
    return path


def export_nifti(paths: Sequence[Path], dest: Path, *, values: str = "rescaled") -> list[Path]:
    """Sorted volume ``[column, row, slice(, volume)]`` with the RAS affine of
    :func:`geometry.volume_affine` (sform and qform code 1, scanner)."""
    array, hgrid, dims = series_array(paths, values=values)
    affine = array_affine(hgrid, dims)
    if affine is None:
        raise DicomprepError("the series has no usable geometry (ImagePositionPatient/ImageOrientationPatient/"
                             "PixelSpacing); export it as npy or png instead of NIfTI.")
    img = nib.Nifti1Image(array.T, affine)
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    out = _file_dest(dest, "nifti")
    with atomic_path(out) as tmp:
        nib.save(img, tmp)
    side = _write_json(_sidecar(out), {"dims": list(reversed(dims_to_json(dims))),
                                       "axes": "column,row,slice(,volume)", "values": values})
    return [out, side]


def export_npy(paths: Sequence[Path], dest: Path, *, sortby: list[str] | None = None,
               values: str = "raw") -> list[Path]:
    """``np.save`` of the sorted array + JSON of dimension labels/values and the affine."""
    array, hgrid, dims = series_array(paths, sortby=sortby, values=values)
    out = _file_dest(dest, "npy")
    with atomic_path(out) as tmp:
        np.save(tmp, array)
    affine = array_affine(hgrid, dims)
    meta = {"shape": list(array.shape), "dtype": str(array.dtype), "values": values,
            "dims": dims_to_json(dims), "sortby": sortby,
            "affine_ras": None if affine is None else affine.tolist(),
            "affine_axes": "array.T index (column, row, slice) -> RAS mm"}
    return [out, _write_json(_sidecar(out), meta)]


def window_from_header(hgrid: np.ndarray) -> tuple[float, float] | None:
    """First WindowCenter/WindowWidth (0028,1050)/(0028,1051) of the first frame
    (also inside FrameVOILUTSequence (0028,9132) of enhanced images)."""
    h = hgrid.ravel()[0]
    c, w = h.get("WindowCenter"), h.get("WindowWidth")
    c = c[0] if isinstance(c, tuple) else c
    w = w[0] if isinstance(w, tuple) else w
    try:
        c, w = float(c), float(w)
    except (TypeError, ValueError):
        return None
    return (c, w) if w > 0 else None


def export_png(paths: Sequence[Path], dest: Path, *, window: tuple[float, float] | None = None,
               sortby: list[str] | None = None) -> list[Path]:
    """Montage of the slices of the first volume, rescaled values, windowed
    by ``window`` (center, width), else the header window, else the 1-99th percentiles."""
    array, hgrid, _ = series_array(paths, sortby=sortby, values="rescaled")
    slices = array.reshape((-1,) + array.shape[-2:])
    if array.ndim > 3:
        slices = array.reshape((-1,) + array.shape[-3:])[0]
    window = window or window_from_header(hgrid)
    if window is None:
        lo, hi = np.percentile(slices, [1, 99])
        window = ((lo + hi) / 2, max(hi - lo, 1))
    # Montage rows go top to bottom in display order (frame rows as stored).
    out = _file_dest(dest, "png")
    save_png(out, grid_montage(apply_window(slices, *window)))
    return [out]


def instance_metadata(paths: Iterable[Path]) -> pd.DataFrame:
    """One row per file: every top-level attribute with a keyword (no sequences,
    no binary values, no pixel data)."""
    rows = []
    for p in paths:
        try:
            ds = read_dataset(p, stop_before_pixels=True)
        except UnreadableDicom as exc:
            rows.append({"path": str(p), "reason": str(exc)})
            continue
        row: dict = {"path": str(p)}
        for elem in ds:
            if not elem.keyword or elem.VR in ("SQ", "OB", "OW", "OF", "OD", "OL", "OV", "UN"):
                continue
            value = elem.value
            if value is None:
                continue
            if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
                value = "\\".join(str(v) for v in value)
            elif not isinstance(value, (int, float)):
                value = str(value)
            row[elem.keyword] = value
        rows.append(row)
    return pd.DataFrame(rows)


def export_csv(paths: Sequence[Path], dest: Path) -> list[Path]:
    out = _file_dest(dest, "csv")
    table = instance_metadata(paths)
    with atomic_write(out, "w") as fh:
        table.to_csv(fh, index=False)
    return [out]


def export_dicom(paths: Sequence[Path], dest: Path, *, deidentify: bool = False, config: dict | None = None,
                 secret: bytes | None = None) -> list[Path]:
    """Copy the files to ``dest/NNNN.dcm`` in acquisition order; with
    ``deidentify`` each goes through :func:`dicomprep.deid.instance.deidentify_file`
    (profile from ``config['deid']``, secret from ``secret`` or
    :func:`dicomprep.deid.pseudonym.load_secret`)."""
    headers, _ = read_frames(paths, decode=False)
    first_of_file: dict[Path, object] = {}
    for h in headers:
        first_of_file.setdefault(h.path, h)
    ordered = sorted(first_of_file.values(), key=acquisition_key)
    ordered_paths = [h.path for h in ordered] + sorted(set(map(Path, paths)) - set(first_of_file))
    dest = Path(dest)
    deid = None
    if deidentify:
        from ..deid import dataset, instance, pseudonym  # noqa: PLC0415

        config = config or {}
        if secret is None:
            secret = pseudonym.load_secret((config.get("deid") or {}).get("secret_file"))
        deid = dataset.make_deidentifier(config, secret)
    written = []
    for i, src in enumerate(ordered_paths, start=1):
        out = dest / f"{i:04d}.dcm"
        if deid is not None:
            instance.deidentify_file(deid, src, out)
        else:
            ds = read_dataset(src)          # un-gzips wrapped files; the bytes stay as read
            write_dataset(ds, out, enforce_file_format=False)
        written.append(out)
    return written


def export_series(paths: Iterable[str | Path], dest: str | Path, fmt: str, *, sortby: list[str] | None = None,
                  values: str | None = None, window: tuple[float, float] | None = None,
                  deidentify: bool = False, config: dict | None = None,
                  secret: bytes | None = None) -> list[Path]:
    """Export a series in ``fmt`` (nifti, npy, png, csv, dicom) to ``dest``.

    ``dest`` is the output file (``.nii.gz``, ``.npy``, ``.png``, ``.csv``) or a
    folder (``series.<ext>`` inside it; for ``dicom`` always a folder).
    ``sortby`` applies to npy and png; ``values`` is ``raw`` or ``rescaled``.
    Returns the written paths.
    """
    paths = [Path(p) for p in paths]
    if not paths:
        raise DicomprepError("nothing to export: the selection holds no file")
    fmt = fmt.lower()
    if fmt in ("nii", "nii.gz"):
        fmt = "nifti"
    if fmt == "nifti":
        return export_nifti(paths, Path(dest), values=values or "rescaled")
    if fmt == "npy":
        return export_npy(paths, Path(dest), sortby=sortby, values=values or "raw")
    if fmt == "png":
        return export_png(paths, Path(dest), window=window, sortby=sortby)
    if fmt == "csv":
        return export_csv(paths, Path(dest))
    if fmt == "dicom":
        return export_dicom(paths, Path(dest), deidentify=deidentify, config=config, secret=secret)
    raise DicomprepError(f"export format {fmt!r}: choose one of {', '.join(FORMATS)}")


__all__ = ["export_series", "export_nifti", "export_npy", "export_png", "export_csv", "export_dicom",
           "instance_metadata", "window_from_header"]
