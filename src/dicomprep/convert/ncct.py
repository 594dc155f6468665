"""Axial non-contrast CT → analysis-ready NIfTI (HU, body mask, isotropic grid, fixed matrix).

Pipeline per series (config ``convert.ncct``):

1. **Selection** (:func:`select_ct_series`): Modality (0008,0060) CT; axial when
   ImageType (0008,0008) holds ``AXIAL`` or the slice normal is axial
   (:func:`geometry.is_axial`); non-contrast when ContrastBolusAgent
   (0018,0010) is empty (``contrast: any`` switches this off); slice spacing
   from positions within ``thickness``; at least ``min_slices`` slices. Every
   series left out gets a reason.
2. **Geometry** (:mod:`dicomprep.geometry`): slices ordered by
   ImagePositionPatient · normal; spacing, duplicates, gaps, irregular spacing
   and gantry tilt from the positions (:func:`geometry.stack_report`).
   Stored values become Hounsfield units per slice (RescaleSlope (0028,1053) /
   RescaleIntercept (0028,1052)).
3. **Processing** (:func:`process_stack`; the body mask in
   :mod:`.ncct_mask`, the output grid and resampling in :mod:`.ncct_grid`):
   body mask = HU > ``body_threshold_hu``, largest 3-D
   connected component, with every cavity it encloses filled (in 3-D, and
   slice by slice where a partial stack leaves the shell open), computed on
   the source grid (connectivity on 2×2-pixel blocks, outline at full
   resolution); outside → −1000 HU, air around the body stays air.
   The volume is resampled (linear) straight onto the output grid: an
   orthogonal grid whose axes are the slices' row cosine, column cosine and
   normal (so a tilted stack is de-tilted: its slices keep their plane, and
   the stacking direction becomes the normal), ``spacing_mm`` isotropic,
   ``matrix`` in-plane centred on the body mask's centroid, spanning the
   stack along the normal. Interpolation is separable (:func:`.ncct_grid.resample_planes`):
   each slice is resampled in plane at its own position (so tilt costs
   nothing extra), then every output plane is interpolated along the normal
   between the two nearest *true* slice positions (irregular spacing); only
   the body's bounding box is computed, and int16 output is rounded plane by
   plane (benchmarks/bench_ncct.py: ~0.13× ``scipy.ndimage.zoom``).
4. **Output**: ``.nii.gz`` (int16 HU or float32) whose affine maps every
   voxel (i along the row cosine, j along the column cosine, k along the
   normal) to its RAS patient position, optional body mask, index row.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import nibabel as nib
import numpy as np
import pandas as pd
import SimpleITK as sitk

from .. import geometry
from ..dicomio import atomic_path, read_dataset, value_text
from ..errors import DicomprepError, UnreadableDicom, is_environment_error
from ..index_exclusions import partial_reason
from ..logs import get_logger
from .ncct_grid import AIR_HU, OutputGrid, output_box, output_grid, resample_planes
from .ncct_mask import coarse_body, mask_block

#: Defaults of config ``convert.ncct`` (config/schema.yaml).
DEFAULTS: dict = {
    "enabled": True,
    "contrast": "exclude",
    "thickness": None,
    "min_slices": 10,
    "tilt": "resample",
    "body_threshold_hu": -200,
    "spacing_mm": 0.5,
    "matrix": [512, 512],
    "dtype": "int16",
    "write_mask": False,
}
#: kinds (series.parquet) that are never CT volumes even when Modality is CT.
NON_VOLUME_KINDS = {"localizer", "dose_report", "secondary_capture", "seg", "presentation_state",
                    "structured_report", "raw"}
#: Columns of share/tables/ct_series_index.csv (seed columns + geometry + reason).
INDEX_COLUMNS = [
    "case", "unit", "series_id", "series_uid", "description", "status",
    "size_x", "size_y", "size_z", "orig_row_spacing", "orig_col_spacing", "orig_slice_spacing",
    "target_spacing", "output_path", "tilt_deg", "spacing_regular", "reason",
]
MANIFEST_COLUMNS = ["series_key", "series_id", "status", "reason", "outputs", "modality"] + [
    c for c in INDEX_COLUMNS if c not in ("series_id", "status", "reason")]


def ncct_options(config: dict | None) -> dict:
    """``convert.ncct`` of a config with defaults filled in."""
    section = ((config or {}).get("convert") or {}).get("ncct") or {}
    opts = dict(DEFAULTS)
    opts.update({k: v for k, v in section.items() if v is not None or k == "thickness"})
    return opts


# --------------------------------------------------------------------------- selection

def _image_type_tokens(value) -> set[str]:
    return {t.strip().upper() for t in value_text(value).replace(",", "\\").split("\\") if t.strip()}


def _flag(value) -> bool:
    """A boolean index cell (None/NaN count as False)."""
    try:
        return bool(value) and value == value
    except (TypeError, ValueError):
        return False


def _instance_frames(rows: pd.DataFrame) -> list[geometry.FrameGeometry | None]:
    """Geometry of each instance row (first frame) from the index columns."""
    frames = []
    for r in rows.to_dict("records"):
        try:
            frames.append(geometry.frame_geometry_from_values(
                r.get("ImagePositionPatient"), r.get("ImageOrientationPatient"), r.get("PixelSpacing"),
                int(r.get("Rows") or 0), int(r.get("Columns") or 0)))
        except (TypeError, ValueError):
            frames.append(None)
    return frames


def assess_series(series_row: dict, inst: pd.DataFrame, options: dict) -> tuple[str, geometry.SortedStack | None]:
    """Why a series is not an axial non-contrast CT volume to convert ('' if it
    is), and its slice geometry derived from the index rows ``inst`` (one per
    instance file, in their order), so conversion need not derive it again.

    The geometry is None when the series is rejected before it is derived, and
    for enhanced multi-frame CT: the index holds one row per file, the frames'
    geometry is read from the file at conversion (:func:`load_ct_stack`).
    """
    modality = value_text(series_row.get("Modality")) or (value_text(inst["Modality"].iloc[0]) if "Modality" in inst and len(inst) else "")
    if modality.upper() != "CT":
        return f"Modality {modality or 'missing'}, not CT", None
    kind = value_text(series_row.get("kind"))
    if kind in NON_VOLUME_KINDS:
        return f"series kind {kind}, not an image volume", None
    tokens = set()
    for value in (inst["ImageType"] if "ImageType" in inst else [series_row.get("ImageType")]):
        tokens |= _image_type_tokens(value)
    if "LOCALIZER" in tokens:
        return "localizer/scout (ImageType LOCALIZER)", None
    if len(inst) == 0:
        return "no readable instances (all dropped by de-identification?)", None
    enhanced = "enhanced" in inst and all(_flag(v) for v in inst["enhanced"])
    if "NumberOfFrames" in inst and pd.to_numeric(inst["NumberOfFrames"], errors="coerce").fillna(1).max() > 1 \
            and not enhanced:
        return "multi-frame instances without per-frame geometry (not enhanced CT) are not supported", None
    frames = _instance_frames(inst)
    if any(f is None for f in frames):
        bad = [i for i, f in enumerate(frames) if f is None]
        numbers = []
        if "InstanceNumber" in inst:
            numbers = [str(v) for v in pd.to_numeric(inst["InstanceNumber"].iloc[bad], errors="coerce").dropna()
                       .astype(int).tolist()]
        which = f" (InstanceNumber {', '.join(numbers[:5])}{' ...' if len(numbers) > 5 else ''})" if numbers else ""
        return (f"{len(bad)} of {len(frames)} slices have no slice geometry (ImagePositionPatient (0020,0032), "
                f"ImageOrientationPatient (0020,0037) or PixelSpacing (0028,0030)){which}: the stack cannot be placed"), None
    if not all(geometry.same_orientation(f, frames[0], geometry.STACK_ORIENTATION_TOL) for f in frames):
        return "slices have different ImageOrientationPatient (more than one stack in the series)", None
    iop = np.concatenate([frames[0].row_cosine, frames[0].column_cosine])
    if "AXIAL" not in tokens and not geometry.is_axial(iop):
        return f"not axial (slice normal is {geometry.orientation_label(iop)})", None
    if options.get("contrast", "exclude") == "exclude" and "ContrastBolusAgent" in inst:
        if any(value_text(v).strip() for v in inst["ContrastBolusAgent"]):
            return "contrast agent recorded in ContrastBolusAgent (convert.ncct.contrast: exclude)", None
    if enhanced:
        return "", None     # checked frame by frame at conversion
    stack = geometry.sort_stack(frames)
    return stack_reason(stack.report, options), stack


def stack_reason(rep: geometry.StackReport, options: dict) -> str:
    """Reasons a stack's geometry rules it out (slice count, duplicates, spacing range, tilt)."""
    n_min = int(options.get("min_slices", 1) or 1)
    if rep.n_slices < n_min:
        return f"{rep.n_slices} slices, fewer than convert.ncct.min_slices = {n_min}"
    if rep.n_duplicates:
        return f"{rep.n_duplicates} duplicated slice position(s): several stacks in one series"
    if not np.isfinite(rep.spacing):
        return "slice spacing cannot be computed from ImagePositionPatient"
    rng = options.get("thickness")
    if rng:
        lo, hi = float(rng[0]), float(rng[1])
        if not lo <= rep.spacing <= hi:
            return f"slice spacing {rep.spacing:.3g} mm (from positions) outside convert.ncct.thickness [{lo:g}, {hi:g}]"
    if rep.tilted and options.get("tilt", "resample") == "reject":
        return f"gantry tilt {rep.tilt_deg:.2f} degrees (convert.ncct.tilt: reject)"
    return ""


def select_ct_series(series_rows: pd.DataFrame, instances: pd.DataFrame, options: dict
                     ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Axial (non-contrast) CT series to convert, and a reason for every other series.

    ``series_rows``: one row per series (``units.load_unit_series``);
    ``instances``: instance rows with ``series_key`` and the index columns
    (Modality, ImageType, ImagePositionPatient, ImageOrientationPatient,
    PixelSpacing, Rows, Columns, ContrastBolusAgent). Returns ``(selected,
    reasons)``: the selected series rows, with ``stack`` (the series'
    :class:`geometry.SortedStack` derived from its instance rows, in their
    order, or None: :func:`assess_series`), and ``series_key, series_id,
    reason`` for the rest.
    """
    options = {**DEFAULTS, **(options or {})}
    keep: dict = {}
    reasons = []
    groups = {k: g for k, g in instances.groupby("series_key", sort=False)} if len(instances) else {}
    for row in series_rows.to_dict("records"):
        inst = groups.get(row["series_key"], instances.iloc[0:0])
        reason, stack = assess_series(row, inst, options)
        if reason:
            reasons.append({"series_key": row["series_key"], "series_id": row.get("series_id", ""), "reason": reason})
        else:
            keep[row["series_key"]] = stack
    selected = series_rows[series_rows["series_key"].isin(list(keep))].reset_index(drop=True)
    selected["stack"] = [keep[k] for k in selected["series_key"]]
    return selected, pd.DataFrame(reasons, columns=["series_key", "series_id", "reason"])


# --------------------------------------------------------------------------- loading

@dataclass
class CtStack:
    """A sorted stack of CT slices in Hounsfield units with its geometry."""

    hu: np.ndarray                          # [slice, row, column] float32, sorted along the normal
    frames: list[geometry.FrameGeometry]    # sorted like ``hu``
    report: geometry.StackReport
    series_uid: str = ""
    description: str = ""


def _frame_rescale(ds, item) -> tuple[float | None, float | None]:
    """RescaleSlope/Intercept of a frame: per-frame/shared PixelValueTransformationSequence
    (0028,9145) for enhanced CT, else the top-level attributes."""
    for owner in (item, geometry._first(ds, "SharedFunctionalGroupsSequence")):
        if owner is None:
            continue
        pvt = geometry._first(owner, "PixelValueTransformationSequence")
        if pvt is not None and "RescaleSlope" in pvt:
            return pvt.RescaleSlope, pvt.get("RescaleIntercept", 0)
    return ds.get("RescaleSlope"), ds.get("RescaleIntercept")


def load_ct_stack(paths: Sequence[str | Path], stack: geometry.SortedStack | None = None) -> CtStack:
    """Read a CT series (single-frame files, or one enhanced multi-frame file),
    order its slices along the normal and rescale each to HU.

    ``stack``: the series' geometry already derived from the index
    (:func:`select_ct_series`), one frame per file of ``paths`` in that order;
    without it the geometry is derived here from the headers (enhanced
    multi-frame files, a series converted outside the workflow)."""
    given = None
    if stack is not None:
        if len(stack.frames) != len(paths):
            raise DicomprepError(f"{len(paths)} files for a stack of {len(stack.frames)} slices")
        given = [None] * len(paths)
        for frame, i in zip(stack.frames, stack.order):
            given[int(i)] = frame
    slices: list[tuple] = []   # (geometry, (stored frame, slope, intercept), InstanceNumber)
    series_uid = description = ""
    for file_index, path in enumerate(paths):
        ds = read_dataset(path)
        series_uid = series_uid or str(ds.get("SeriesInstanceUID", "") or "")
        description = description or str(ds.get("SeriesDescription", "") or "")
        try:
            pixels = ds.pixel_array
        except Exception as exc:  # decoder missing or corrupt pixel data
            raise DicomprepError(f"cannot decode the pixel data of {Path(path).name}: {exc}") from None
        geos = geometry.dataset_frame_geometries(ds) if given is None else [given[file_index]]
        per_frame = getattr(ds, "PerFrameFunctionalGroupsSequence", None) or [None] * len(geos)
        if pixels.ndim == 2:
            pixels = pixels[None]
        if pixels.ndim != 3 or len(geos) != pixels.shape[0]:
            raise DicomprepError(f"{Path(path).name}: pixel data is not grey-scale frames matching its geometry")
        number = int(ds.get("InstanceNumber", 0) or 0)
        for geo, frame, item in zip(geos, pixels, per_frame):
            if geo is None:
                raise DicomprepError(f"{Path(path).name} has no slice geometry (ImagePositionPatient (0020,0032), "
                                     "ImageOrientationPatient (0020,0037) or PixelSpacing (0028,0030))")
            slices.append((geo, (frame, *_frame_rescale(ds, item)), number))   # stored values, rescaled below
    if len(slices) < 2:
        raise DicomprepError("a CT volume needs at least two slices")
    first = slices[0][0]
    if not all(geometry.same_stack(geo, first) for geo, _, _ in slices):
        raise DicomprepError("slices differ in matrix, PixelSpacing or ImageOrientationPatient; not one stack")
    if stack is None:
        stack = geometry.sort_stack([s[0] for s in slices], tiebreak=[s[2] for s in slices])
    hu = np.empty((len(stack.order), first.rows, first.columns), dtype=np.float32)
    for out_index, i in enumerate(stack.order):
        stored, slope, intercept = slices[i][1]
        hu[out_index] = geometry.rescale(stored, slope, intercept)      # per slice: (0028,1053)/(0028,1052)
        slices[i] = (slices[i][0], None, slices[i][2])
    return CtStack(hu, list(stack.frames), stack.report, series_uid, description)


def process_stack(stack: CtStack, options: dict, *, with_mask: bool = False
                  ) -> tuple[np.ndarray, OutputGrid, np.ndarray | None]:
    """Mask (on the source grid), centre and resample a stack.

    The body (:func:`.ncct_mask.coarse_body`: largest component above
    ``body_threshold_hu`` with its enclosed cavities filled, connectivity on
    2×2-pixel blocks, outline at full resolution) is applied slice by slice in
    place (outside → −1000 HU) while its world centroid and bounding box are
    summed; the grid is centred on the centroid, and only the box is resampled
    (:func:`.ncct_grid.resample_planes`). Returns ``([k, j, i] HU, grid, [k, j, i] bool
    mask or None)``: HU rounded to int16 when ``options["dtype"]`` is int16 (the
    default), else float32; the output mask is the linearly resampled body mask
    ≥ 0.5. Consumes ``stack.hu`` (set to None): it is masked in place, and the
    only other full-size array is the output.
    """
    frames = stack.frames
    hu = stack.hu
    stack.hu = None
    if hu.dtype != np.float32:
        hu = hu.astype(np.float32)
    threshold = float(options["body_threshold_hu"])
    body = coarse_body(hu, threshold, mask_block(frames))
    n, rows, cols = hu.shape
    keep = np.zeros((n, rows, cols), dtype=bool) if with_mask else None
    row_index, col_index = np.arange(rows, dtype=float), np.arange(cols, dtype=float)
    total, count = np.zeros(3), 0
    r_span, c_span, k_span = [rows, -1], [cols, -1], [n, -1]
    for k in range(n):
        if not body.body[k].any():
            hu[k] = AIR_HU
            continue
        m = body.slice_mask(k, hu[k])
        np.copyto(hu[k], np.float32(AIR_HU), where=~m)
        per_row, per_col = np.count_nonzero(m, axis=1), np.count_nonzero(m, axis=0)
        c = int(per_row.sum())
        if not c:
            continue
        frame = frames[k]      # PS3.3 C.7.6.2.1.1 per slice: tilt and irregular spacing are exact
        total += c * frame.position + frame.row_cosine * frame.column_spacing * float(per_col @ col_index) \
            + frame.column_cosine * frame.row_spacing * float(per_row @ row_index)
        count += c
        hit_r, hit_c = np.flatnonzero(per_row), np.flatnonzero(per_col)
        r_span = [min(r_span[0], hit_r[0]), max(r_span[1], hit_r[-1])]
        c_span = [min(c_span[0], hit_c[0]), max(c_span[1], hit_c[-1])]
        k_span = [min(k_span[0], k), k]
        if keep is not None:
            keep[k] = m
    if count == 0:
        raise DicomprepError(f"no voxel above convert.ncct.body_threshold_hu = {options['body_threshold_hu']}; "
                             "not a CT in HU or an empty scan")
    grid = output_grid(frames, total / count, float(options["spacing_mm"]), options["matrix"])
    box = output_box(frames, grid, tuple(r_span), tuple(c_span), tuple(k_span))
    dtype = np.int16 if str(options.get("dtype", "int16")) == "int16" else np.float32
    out = resample_planes(lambda k: hu[k], frames, grid, AIR_HU, box, dtype=dtype)
    out_mask = None
    if keep is not None:
        out_mask = resample_planes(lambda k: keep[k].astype(np.float32), frames, grid, 0.0, box) >= 0.5
    return out, grid, out_mask


# --------------------------------------------------------------------------- conversion

@dataclass
class CtResult:
    """Outcome of one series: the ct_series_index row plus manifest fields."""

    status: str = "converted"              # converted | skipped | failed
    reason: str = ""
    case: str = ""
    unit: str = ""
    series_key: str = ""
    series_id: str = ""
    series_uid: str = ""                   # SeriesInstanceUID of the file read (de-identified copy)
    description: str = ""
    size_x: int | None = None
    size_y: int | None = None
    size_z: int | None = None
    orig_row_spacing: float | None = None  # PixelSpacing[0] (mm)
    orig_col_spacing: float | None = None  # PixelSpacing[1] (mm)
    orig_slice_spacing: float | None = None  # median gap of positions along the normal (mm)
    target_spacing: float | None = None
    output_path: str = ""
    mask_path: str = ""
    tilt_deg: float | None = None
    spacing_regular: bool | None = None
    n_slices: int | None = None
    notes: list[str] = field(default_factory=list)
    affine: list | None = None             # RAS affine written

    def row(self) -> dict:
        d = asdict(self)
        d["notes"] = "; ".join(self.notes)
        d.pop("affine")
        return d


def _as_int16(volume: np.ndarray) -> np.ndarray:
    """Round to int16 HU plane by plane (no full-size float temporaries)."""
    out = np.empty(volume.shape, dtype=np.int16)
    plane = np.empty(volume.shape[1:], dtype=np.float32)
    for k in range(volume.shape[0]):
        np.rint(volume[k], out=plane)
        np.clip(plane, -32768, 32767, out=plane)
        out[k] = plane
    return out


def write_nifti(volume_kji: np.ndarray, affine_ras: np.ndarray, path: Path, dtype: str) -> None:
    """Write a ``[k, j, i]`` array as NIfTI-1 (i, j, k) with sform = qform = ``affine_ras``
    (NIFTI_XFORM_SCANNER_ANAT), atomically (dicomio.atomic_path)."""
    if dtype == "int16":
        data = volume_kji if volume_kji.dtype == np.int16 else _as_int16(volume_kji)
    elif dtype == "uint8":
        data = np.asarray(volume_kji).astype(np.uint8)
    else:
        data = np.asarray(volume_kji, dtype=np.float32)
    img = nib.Nifti1Image(data.transpose(2, 1, 0), affine_ras)
    img.header.set_xyzt_units("mm", "sec")
    img.set_sform(affine_ras, code=1)
    img.set_qform(affine_ras, code=1)
    if dtype != "float32":
        img.header.set_slope_inter(1.0, 0.0)
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))


def convert_ct_series(paths: list[Path], out_path: Path, options: dict, *, mask_path: Path | None = None,
                      excluded_files: str | None = None, stack: geometry.SortedStack | None = None) -> CtResult:
    """Convert one CT series (its instance files) to an analysis-ready NIfTI at ``out_path``.

    Raises :class:`DicomprepError` when the series cannot be converted, with
    the reason; a tilted series with ``tilt: reject`` is returned as
    ``status='skipped'`` with the reason instead. ``excluded_files`` (the
    series' index column: files of the series that could not be used) makes a
    converted result ``status='partial'`` with a reason naming them. ``stack``:
    the series' geometry from the index (:func:`load_ct_stack`).
    """
    options = {**DEFAULTS, **(options or {})}
    stack = load_ct_stack(paths, stack)
    rep = stack.report
    first = stack.frames[0]
    result = CtResult(
        series_uid=stack.series_uid, description=stack.description,
        orig_row_spacing=first.row_spacing, orig_col_spacing=first.column_spacing,
        orig_slice_spacing=rep.spacing, target_spacing=float(options["spacing_mm"]),
        tilt_deg=round(rep.tilt_deg, 3), spacing_regular=bool(rep.regular), n_slices=rep.n_slices,
        notes=list(rep.notes))
    reason = stack_reason(rep, options)
    if reason:
        result.status, result.reason = "skipped", reason
        return result
    volume, grid, out_mask = process_stack(stack, options, with_mask=mask_path is not None)
    del stack
    affine = grid.affine(ras=True)
    write_nifti(volume, affine, Path(out_path), str(options.get("dtype", "int16")))
    if mask_path is not None:
        write_nifti(out_mask, affine, Path(mask_path), "uint8")
    result.size_x, result.size_y, result.size_z = grid.size
    result.output_path = str(out_path)
    result.mask_path = str(mask_path) if mask_path is not None else ""
    result.affine = affine.tolist()
    if rep.tilted:
        result.notes.append("de-tilted: resampled onto an orthogonal grid along the slice normal")
    partial = partial_reason(len(paths), excluded_files)
    if partial:
        result.status, result.reason = "partial", partial
    # what the stack's positions said (missing slices interpolated, irregular spacing, tilt):
    # shared with the row, not only logged (identifier-free: counts, mm and degrees)
    result.reason = "; ".join([r for r in (result.reason,) if r] + result.notes)
    return result


# --------------------------------------------------------------------------- workflow

def _unit_parts(unit: str) -> tuple[str, str]:
    parts = str(unit).strip("/").split("/")
    if len(parts) != 4:
        raise DicomprepError(f"unit {unit!r} is not group/sequence/subject/scan")
    return parts[2], parts[3]


def _header_text(path, keyword: str) -> str:
    try:
        return str(read_dataset(path, stop_before_pixels=True).get(keyword, "") or "")
    except UnreadableDicom:
        return ""


def convert_unit(*, unit: str, series: pd.DataFrame, sources: pd.DataFrame, share, config: dict,
                 log=None, threads: int = 1) -> pd.DataFrame:
    """Every axial non-contrast CT series of one unit; returns the manifest.

    Writes ``share.nifti(unit)/<subject>_<scan>_<series_id>_ct.nii.gz`` (and
    ``_ctmask.nii.gz`` with ``write_mask``) and one log line per series.
    ``series``/``sources``: the unit's series rows and instances with
    ``source_path``; ``share``: a :class:`dicomprep.paths.ShareTree`.
    """
    logger = get_logger("convert.ncct", log)
    sitk.ProcessObject_SetGlobalDefaultNumberOfThreads(max(1, int(threads or 1)))
    options = ncct_options(config)
    subject, scan = _unit_parts(unit)
    rows: list[dict] = []
    if not options["enabled"]:
        selected = series.iloc[0:0]
        reasons = pd.DataFrame({"series_key": series["series_key"], "series_id": series["series_id"],
                                "reason": "convert.ncct.enabled is false"})
    else:
        selected, reasons = select_ct_series(series, sources, options)
    modality = dict(zip(series["series_key"], series.get("Modality", pd.Series([""] * len(series))).map(value_text)))
    for r in reasons.to_dict("records"):
        res = CtResult(status="skipped", reason=r["reason"], series_key=r["series_key"], series_id=r["series_id"])
        files = sources.loc[sources["series_key"] == r["series_key"], "source_path"].tolist()
        if modality.get(r["series_key"], "").upper() == "CT" and files:
            res.series_uid = _header_text(files[0], "SeriesInstanceUID")
            res.description = _header_text(files[0], "SeriesDescription")
        rows.append(_manifest_row(res, share, unit, subject, modality.get(r["series_key"], "")))
        logger.info("%s %s: skipped (%s)", unit, r["series_id"], r["reason"])
    nifti_dir = share.nifti(unit)
    for s in selected.to_dict("records"):
        key, sid = s["series_key"], s["series_id"]
        files = [Path(p) for p in sources.loc[sources["series_key"] == key, "source_path"]]
        out_path = nifti_dir / f"{subject}_{scan}_{sid}_ct.nii.gz"
        mask_path = nifti_dir / f"{subject}_{scan}_{sid}_ctmask.nii.gz" if options["write_mask"] else None
        try:
            res = convert_ct_series(files, out_path, options, mask_path=mask_path,
                                    excluded_files=str(s.get("excluded_files") or "") or None, stack=s.get("stack"))
        except DicomprepError as exc:
            res = CtResult(status="failed", reason=str(exc))
        except Exception as exc:  # one bad series must not stop the unit
            if is_environment_error(exc):
                raise
            res = CtResult(status="failed", reason=f"{type(exc).__name__}: {exc}")
        res.series_key, res.series_id = key, sid
        rows.append(_manifest_row(res, share, unit, subject, "CT"))
        if res.status in ("converted", "partial"):
            logger.info("%s %s: converted %d slices (spacing %.3g mm, %s, tilt %.2f deg) -> %s %dx%dx%d @ %g mm%s",
                        unit, sid, res.n_slices or 0, res.orig_slice_spacing or float("nan"),
                        "regular" if res.spacing_regular else "irregular", res.tilt_deg or 0.0,
                        Path(res.output_path).name, res.size_x, res.size_y, res.size_z,
                        res.target_spacing, f"; {'; '.join(res.notes)}" if res.notes else "")
        else:
            logger.warning("%s %s: %s (%s)", unit, sid, res.status, res.reason)
    return pd.DataFrame(rows, columns=MANIFEST_COLUMNS)


def _manifest_row(res: CtResult, share, unit: str, subject: str, modality: str) -> dict:
    def rel(p: str) -> str:
        return share.rel(p) if p else ""
    out_rel, mask_rel = rel(res.output_path), rel(res.mask_path)
    row = res.row()
    row.update(case=subject, unit=unit, modality=modality, output_path=out_rel,
               outputs=";".join(p for p in (out_rel, mask_rel) if p))
    return {c: row.get(c) for c in MANIFEST_COLUMNS}


def write_ct_index(path, manifests: Iterable) -> Path:
    """Write ``share/tables/ct_series_index.csv`` (at ``path``) from per-unit ncct
    manifests (paths or DataFrames): one row per CT series, converted or not,
    with its reason. Returns the CSV path."""
    frames = []
    for m in manifests:
        df = m if isinstance(m, pd.DataFrame) else pd.read_parquet(m)
        frames.append(df)
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=MANIFEST_COLUMNS)
    if "modality" in table:
        table = table[(table["modality"].fillna("").str.upper() == "CT") | (table["status"] == "converted")]
    for c in INDEX_COLUMNS:
        if c not in table:
            table[c] = None
    table = table[INDEX_COLUMNS].sort_values(["unit", "series_id"], kind="stable")
    path = Path(path)
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False)
    return path
