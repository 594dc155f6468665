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
3. **Processing**: body mask = HU > ``body_threshold_hu``, largest 3-D
   connected component, with every cavity it encloses filled (in 3-D, and
   slice by slice where a partial stack leaves the shell open), computed on
   the source grid (connectivity on 2×2-pixel blocks, outline at full
   resolution); outside → −1000 HU, air around the body stays air.
   The volume is resampled (linear) straight onto the output grid: an
   orthogonal grid whose axes are the slices' row cosine, column cosine and
   normal (so a tilted stack is de-tilted: its slices keep their plane, and
   the stacking direction becomes the normal), ``spacing_mm`` isotropic,
   ``matrix`` in-plane centred on the body mask's centroid, spanning the
   stack along the normal. Interpolation is separable (:func:`resample_planes`):
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

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import nibabel as nib
import numpy as np
import pandas as pd
import SimpleITK as sitk
from scipy import ndimage

from .. import geometry
from ..dicomio import atomic_path, read_dataset, value_text
from ..errors import DicomprepError, UnreadableDicom, is_environment_error
from ..index_exclusions import partial_reason
from ..logs import get_logger

#: Value of everything outside the body and outside the source field of view.
AIR_HU = -1000.0
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
#: A stack is resampled in one SimpleITK pass when every slice lies within
#: this fraction of the target spacing of a uniform, untilted stack.
UNIFORM_TOL = 0.02
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


# --------------------------------------------------------------------------- processing

class _ImageBuffer:
    """Exposes a SimpleITK image's pixel buffer to numpy (``__array_interface__``) while
    holding the image: an array made from it has this object as its base, which numpy
    never collapses away, so the image lives as long as any view of it.
    (``GetArrayViewFromImage`` alone does not keep the image alive.)"""

    def __init__(self, image: sitk.Image):
        self.image = image
        self.__array_interface__ = sitk.GetArrayViewFromImage(image).__array_interface__


def image_array(image: sitk.Image) -> np.ndarray:
    """Read-only ``[z, y, x]`` view of ``image``'s pixels, without copying; keeps the image alive."""
    return np.asarray(_ImageBuffer(image))


def largest_component_image(image: sitk.Image, threshold_hu: float) -> sitk.Image:
    """uint8 image: 1 where HU > threshold and in the largest 3-D connected component
    (26-connectivity; SimpleITK ConnectedComponent + RelabelComponent, which sorts
    components by size so the largest is label 1)."""
    above = sitk.Greater(image, float(threshold_hu))
    labels = sitk.ConnectedComponent(above, True)
    del above
    labels = sitk.RelabelComponent(labels, sortByObjectSize=True)
    return sitk.Equal(labels, 1)


#: The body's connectivity and enclosed cavities are worked out on 2×2-pixel blocks
#: when pixels are at most this size (mm); the body's outline stays at full resolution.
#: Larger blocks bridge air gaps narrower than a block (a 3-pixel crack between a
#: phantom's shell and its insert became "enclosed" on dcm_qa_ct Philips with 3×3).
MASK_BLOCK_MM = 0.75
#: In-plane structuring element (no link between slices): 2-D steps on a [z, y, x] array.
_IN_PLANE_4 = np.zeros((3, 3, 3), dtype=bool)
_IN_PLANE_4[1] = [[0, 1, 0], [1, 1, 1], [0, 1, 0]]


def mask_block(frames: Sequence[geometry.FrameGeometry]) -> int:
    """Block size (pixels per side) of the coarse grid for a stack's body mask: 2 for
    pixels up to :data:`MASK_BLOCK_MM`, else 1 (full resolution)."""
    pixel = min(frames[0].row_spacing, frames[0].column_spacing)
    return 2 if pixel <= MASK_BLOCK_MM + 1e-6 else 1


def _blocks_any(plane: np.ndarray, f: int) -> np.ndarray:
    """Coarse 2-D boolean: a block is True when any of its f×f pixels is."""
    if f == 1:
        return plane
    rows, cols = plane.shape
    pr, pc = -rows % f, -cols % f
    if pr or pc:
        plane = np.pad(plane, ((0, pr), (0, pc)))
    out = plane[0::f, 0::f].copy()
    for dr in range(f):
        for dc in range(f):
            if dr or dc:
                out |= plane[dr::f, dc::f]
    return out


def _blocks_up(coarse: np.ndarray, f: int, shape: tuple[int, int]) -> np.ndarray:
    """Full-resolution view of a coarse 2-D array (each block repeated f×f times)."""
    if f == 1:
        return coarse
    return np.repeat(np.repeat(coarse, f, axis=0), f, axis=1)[:shape[0], :shape[1]]


def fill_enclosed(mask: np.ndarray) -> np.ndarray:
    """``mask`` [z, y, x] with every enclosed cavity filled, in 3-D and slice by slice.

    3-D: background not connected (6-connectivity, the complement of the body's
    26-connectivity) to any face of the volume. 2-D: in each slice, background
    not connected (4-connectivity) to that slice's border; this fills what a
    partial stack leaves open at its top or bottom (a skull cut by the first
    slice). Background that reaches the border, the air around the body, stays
    background. The 3-D holes need no pass of their own: a background region
    enclosed in 3-D touches no face, so each of its cross-sections touches no
    slice border, and 4-connected in-plane steps are 6-connected steps, so every
    cross-section is a 2-D hole too (the union of both fills is the 2-D fill;
    tests/test_ncct.py checks this against both fills computed separately).
    """
    mask = np.asarray(mask, dtype=bool)
    labels, n = ndimage.label(~mask, structure=_IN_PLANE_4)
    outside = np.zeros(n + 1, dtype=bool)
    for edge in (labels[:, 0, :], labels[:, -1, :], labels[:, :, 0], labels[:, :, -1]):
        outside[np.unique(edge)] = True
    outside[0] = False                                  # label 0: the body itself
    return ~outside[labels]                             # the body and every enclosed background region


def _interior_in_plane(body: np.ndarray) -> np.ndarray:
    """Voxels of ``body`` [z, y, x] whose 8 in-plane neighbours are all in ``body``
    (binary erosion by a 3×3 square per slice, outside the array counting as not body)."""
    padded = np.pad(body, ((0, 0), (1, 1), (1, 1)))
    rows, cols = body.shape[1:]
    out = body.copy()
    for dr in (0, 1, 2):
        for dc in (0, 1, 2):
            if (dr, dc) != (1, 1):
                out &= padded[:, dr:dr + rows, dc:dc + cols]
    return out


@dataclass
class CoarseBody:
    """The body on a coarse grid of f×f-pixel blocks (one per block, every slice):
    ``body`` the filled largest component, ``interior`` its blocks with no
    exterior block beside them in plane."""

    body: np.ndarray       # [z, y/f, x/f] bool
    interior: np.ndarray   # [z, y/f, x/f] bool
    block: int
    threshold_hu: float

    def slice_mask(self, k: int, hu_slice: np.ndarray) -> np.ndarray:
        """Full-resolution mask of slice ``k``: whole interior blocks (cavities,
        lungs, what the skull encloses, kept at any HU) plus, in the blocks on the
        body's outline, the pixels above the threshold (the outline at full
        resolution)."""
        shape = hu_slice.shape
        edge = _blocks_up(self.body[k] & ~self.interior[k], self.block, shape)
        mask = _blocks_up(self.interior[k], self.block, shape).copy()
        mask |= edge & (hu_slice > self.threshold_hu)
        return mask


def coarse_body(hu: np.ndarray, threshold_hu: float, block: int = 1) -> CoarseBody:
    """HU > threshold on ``block``×``block`` blocks, its largest 3-D connected component
    (26-connectivity; SimpleITK ConnectedComponent + RelabelComponent) with its
    enclosed cavities filled (:func:`fill_enclosed`)."""
    above = np.stack([_blocks_any(hu[k] > threshold_hu, block) for k in range(hu.shape[0])])
    largest = largest_component_image(sitk.GetImageFromArray(above.view(np.uint8)), 0.5)
    body = fill_enclosed(sitk.GetArrayViewFromImage(largest).view(bool))
    return CoarseBody(body, _interior_in_plane(body), int(block), float(threshold_hu))


def body_mask(hu: np.ndarray, threshold_hu: float, block: int = 1) -> np.ndarray:
    """Body mask of a ``[slice, row, column]`` HU stack as a bool array: the largest 3-D
    connected component above the threshold with what it encloses (in 3-D and per
    slice) filled; ``block`` > 1 works out connectivity on coarse blocks (as the
    conversion does) and keeps the outline at full resolution."""
    body = coarse_body(hu, threshold_hu, block)
    return np.stack([body.slice_mask(k, hu[k]) for k in range(hu.shape[0])])


def mask_centroid_lps(mask: np.ndarray, frames: Sequence[geometry.FrameGeometry]) -> np.ndarray:
    """World (LPS) centroid of a ``[slice, row, column]`` mask, each slice at its own
    position (PS3.3 C.7.6.2.1.1 per slice, so tilt and irregular spacing are exact)."""
    total = np.zeros(3)
    count = 0
    for k, frame in enumerate(frames):
        sl = mask[k]
        n = int(sl.sum())
        if not n:
            continue
        r_sum = float((sl.sum(axis=1) * np.arange(sl.shape[0])).sum())
        c_sum = float((sl.sum(axis=0) * np.arange(sl.shape[1])).sum())
        total += n * frame.position + frame.row_cosine * frame.column_spacing * c_sum \
            + frame.column_cosine * frame.row_spacing * r_sum
        count += n
    if count == 0:
        raise DicomprepError("the body mask is empty")
    return total / count


@dataclass
class OutputGrid:
    """An orthogonal output grid: voxel (i, j, k) at ``origin + axes @ (i, j, k) * spacing`` (LPS)."""

    origin: np.ndarray       # LPS position of voxel (0, 0, 0)
    axes: np.ndarray         # 3×3, columns: unit directions of i, j, k (LPS)
    spacing: float
    size: tuple[int, int, int]   # (nx, ny, nz)

    def affine(self, ras: bool = True) -> np.ndarray:
        return geometry.grid_affine(self.origin, self.axes, [self.spacing] * 3, ras=ras)


def output_grid(frames: Sequence[geometry.FrameGeometry], centre_lps: np.ndarray, spacing: float,
                matrix: Sequence[int]) -> OutputGrid:
    """Grid with axes (row cosine, column cosine, normal) of the first slice, ``matrix``
    voxels in plane centred on ``centre_lps``, spanning first to last slice along the normal."""
    axes = geometry.orthonormal_frame(frames[0].row_cosine, frames[0].column_cosine)
    along, _ = geometry.stack_offsets(frames)
    nx, ny = int(matrix[0]), int(matrix[1])
    extent = float(along[-1] - along[0])
    nz = int(math.floor(extent / spacing + 1e-6)) + 1
    centre = np.asarray(centre_lps, dtype=float)
    # In-plane: centre voxel ((nx-1)/2, (ny-1)/2) on the centroid; along n: first slice.
    origin = centre - axes[:, 0] * spacing * (nx - 1) / 2 - axes[:, 1] * spacing * (ny - 1) / 2
    origin = origin + axes[:, 2] * (along[0] - float(np.dot(origin, axes[:, 2])))
    return OutputGrid(origin, axes, float(spacing), (nx, ny, nz))


def _is_uniform(frames: Sequence[geometry.FrameGeometry], tol_mm: float) -> tuple[bool, float]:
    along, in_plane = geometry.stack_offsets(frames)
    n = len(frames)
    step = float(along[-1] - along[0]) / (n - 1)
    uniform = along[0] + step * np.arange(n)
    ok = bool(np.abs(along - uniform).max() <= tol_mm and np.abs(in_plane).max() <= tol_mm and step > 0)
    return ok, step


def _resampler(grid: OutputGrid, default: float) -> sitk.ResampleImageFilter:
    """Linear resampler onto ``grid`` (set by origin/spacing/size/direction: a
    reference image would allocate a second output-sized buffer)."""
    f = sitk.ResampleImageFilter()
    f.SetSize([int(n) for n in grid.size])
    f.SetOutputOrigin(tuple(float(v) for v in grid.origin))
    f.SetOutputSpacing([grid.spacing] * 3)
    f.SetOutputDirection(tuple(float(v) for v in grid.axes.flatten()))
    f.SetInterpolator(sitk.sitkLinear)
    f.SetDefaultPixelValue(float(default))
    f.SetOutputPixelType(sitk.sitkFloat32)
    return f


def stack_image(hu: np.ndarray, frames: Sequence[geometry.FrameGeometry], step: float) -> sitk.Image:
    """SimpleITK image of a ``[slice, row, column]`` stack: origin = first ImagePositionPatient,
    direction = (row cosine, column cosine, normal), spacing = (PixelSpacing[1],
    PixelSpacing[0], ``step``). Exact only for an untilted, evenly spaced stack."""
    axes = geometry.orthonormal_frame(frames[0].row_cosine, frames[0].column_cosine)
    img = sitk.GetImageFromArray(hu, isVector=False)        # array [slice, row, col] = (z, y, x)
    img.SetOrigin(tuple(frames[0].position))
    img.SetSpacing((frames[0].column_spacing, frames[0].row_spacing, float(step)))
    img.SetDirection(tuple(axes.flatten()))
    return img


def resample_image(image: sitk.Image, grid: OutputGrid, default: float = AIR_HU) -> np.ndarray:
    """One linear SimpleITK resample of an image with true geometry onto ``grid``;
    ``[k, j, i]`` float32 (a view backed by the resampled image, no copy)."""
    return image_array(_resampler(grid, default).Execute(image))


#: Resample only the body's bounding box when it is smaller than this fraction of the grid.
BOX_FRACTION = 0.6


def body_box(mask: np.ndarray, image: sitk.Image, grid: OutputGrid) -> tuple[np.ndarray, np.ndarray]:
    """Inclusive output index range ``(lo, hi)`` as ``[i, j, k]`` outside which every output
    voxel is exactly the background: the mask's bounding box in ``image`` widened by one
    source voxel (the reach of linear interpolation), mapped onto ``grid``."""
    spans = []
    for axis in (2, 1, 0):                                     # x, y, z of the [z, y, x] mask
        hit = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
        spans.append((hit[0] - 1.0, hit[-1] + 1.0))
    corners = np.array([image.TransformContinuousIndexToPhysicalPoint((x, y, z))
                        for x in spans[0] for y in spans[1] for z in spans[2]])
    ijk = (corners - grid.origin) @ grid.axes / grid.spacing
    size = np.array(grid.size)
    lo = np.clip(np.floor(ijk.min(axis=0) - 1e-6).astype(int), 0, size - 1)
    hi = np.clip(np.ceil(ijk.max(axis=0) + 1e-6).astype(int), 0, size - 1)
    return lo, hi


def resample_box(image: sitk.Image, grid: OutputGrid, lo: np.ndarray, hi: np.ndarray,
                 default: float = AIR_HU) -> np.ndarray:
    """Resample only the output voxels ``lo..hi`` (inclusive ``[i, j, k]``) and fill the rest
    of the ``[k, j, i]`` grid with ``default``; the whole grid when the box is most of it."""
    size = np.array(grid.size)
    box = hi - lo + 1
    if np.any(box <= 0):
        return np.full(tuple(size[::-1]), default, dtype=np.float32)
    if np.prod(box) > BOX_FRACTION * np.prod(size):
        return resample_image(image, grid, default)
    sub = OutputGrid(grid.origin + grid.axes @ (lo * grid.spacing), grid.axes, grid.spacing, tuple(int(n) for n in box))
    out = np.full(tuple(size[::-1]), default, dtype=np.float32)
    out[lo[2]:hi[2] + 1, lo[1]:hi[1] + 1, lo[0]:hi[0] + 1] = resample_image(image, sub, default)
    return out


def resample_uniform(hu: np.ndarray, frames: Sequence[geometry.FrameGeometry], step: float,
                     grid: OutputGrid, default: float = AIR_HU) -> np.ndarray:
    """One linear SimpleITK resample of an untilted, evenly spaced stack onto ``grid``.
    Returns ``[k, j, i]`` float32."""
    return resample_image(stack_image(hu, frames, step), grid, default)


def resample_stack(hu: np.ndarray, frames: Sequence[geometry.FrameGeometry], grid: OutputGrid,
                   default: float = AIR_HU) -> np.ndarray:
    """Linear resampling of any parallel-slice stack (tilted, irregular, gaps) onto ``grid``
    (:func:`resample_planes` over the whole grid). Returns ``[k, j, i]`` float32."""
    return resample_planes(lambda k: np.asarray(hu[k], dtype=np.float32), frames, grid, default)


def _axis_weights(coords: np.ndarray, n: int):
    """Linear interpolation along one axis at continuous source indices ``coords``:
    ``(i0, i1, w, inside)`` with value ``(1 - w)·a[i0] + w·a[i1]``. As ITK's linear
    interpolator: a point within half a pixel beyond the first/last sample takes the
    edge value, a point farther out is outside."""
    inside = (coords >= -0.5 - 1e-6) & (coords <= n - 0.5 + 1e-6)
    c = np.clip(coords, 0.0, n - 1.0)
    i0 = np.minimum(np.floor(c).astype(np.intp), max(n - 2, 0))
    i1 = np.minimum(i0 + 1, n - 1)
    return i0, i1, (c - i0).astype(np.float32), inside


def resample_planes(source, frames: Sequence[geometry.FrameGeometry], grid: OutputGrid,
                    default: float = AIR_HU, box: tuple[np.ndarray, np.ndarray] | None = None,
                    dtype=np.float32) -> np.ndarray:
    """Linear resampling of a parallel-slice stack onto ``grid``, separably.

    ``source(k)`` gives slice ``k`` (``[row, column]`` float32, sorted like
    ``frames``). The grid's i and j axes are the slices' row and column
    directions, so in plane each output row/column is a linear mix of two source
    rows/columns (the in-plane offset of each slice, gantry tilt, taken into
    account); along the normal, each output plane mixes the two source slices
    whose *true* positions bracket it (irregular spacing). Only the output box
    ``(lo, hi)`` (inclusive ``[i, j, k]``) is computed; the rest is ``default``.
    Same values as trilinear interpolation (SimpleITK sitkLinear) of an untilted,
    evenly spaced stack. Returns ``[k, j, i]`` float32, or ``dtype`` int16:
    rounded to the nearest integer plane by plane, so no float copy of the output
    is ever made (fresh memory is slow to touch: the output is the largest array).
    """
    axes = grid.axes
    along, in_plane = geometry.stack_offsets(frames)
    nx, ny, nz = grid.size
    lo, hi = box if box is not None else (np.zeros(3, int), np.array(grid.size) - 1)
    dtype = np.dtype(dtype)
    out = np.empty((nz, ny, nx), dtype=dtype)        # each voxel written once: first touch is not free
    integer = dtype.kind in "iu"
    if integer:
        info = np.iinfo(dtype)
        scratch = np.empty((int(hi[1] - lo[1] + 1), int(hi[0] - lo[0] + 1)), dtype=np.float32)
    out[:lo[2]] = default
    out[hi[2] + 1:] = default
    a0 = float(np.dot(grid.origin - frames[0].position, axes[:, 0]))
    b0 = float(np.dot(grid.origin - frames[0].position, axes[:, 1]))
    u = a0 + grid.spacing * np.arange(lo[0], hi[0] + 1)          # mm along the row cosine
    v = b0 + grid.spacing * np.arange(lo[1], hi[1] + 1)          # mm along the column cosine
    t = float(np.dot(grid.origin, axes[:, 2])) + grid.spacing * np.arange(nz)
    planes: dict[int, np.ndarray] = {}

    def plane(k: int) -> np.ndarray:
        if k not in planes:
            frame = frames[k]
            src = source(k)
            rows, cols = src.shape
            c0, c1, wc, in_c = _axis_weights((u - in_plane[k, 0]) / frame.column_spacing, cols)
            r0, r1, wr, in_r = _axis_weights((v - in_plane[k, 1]) / frame.row_spacing, rows)
            first, last = int(c0.min()), int(c1.max())
            sub = src[:, first:last + 1]
            top = sub[r0]
            step = sub[r1]
            step -= top
            step *= wr[:, None]
            top += step                                  # rows interpolated: [j, source column]
            left = top[:, c0 - first]
            right = top[:, c1 - first]
            right -= left
            right *= wc
            left += right
            if not in_r.all():
                left[~in_r] = default
            if not in_c.all():
                left[:, ~in_c] = default
            planes[k] = left
        return planes[k]

    tol = geometry.STACK_EDGE_TOL_MM
    upper = np.searchsorted(along, t, side="left")
    rows_out, cols_out = slice(lo[1], hi[1] + 1), slice(lo[0], hi[0] + 1)
    steps: dict[int, np.ndarray] = {}            # plane(k + 1) - plane(k), once per bracket

    def step(k: int) -> np.ndarray:
        if k not in steps:
            steps.clear()
            steps[k] = np.subtract(plane(k + 1), plane(k))
        return steps[k]
    for m in range(int(lo[2]), int(hi[2]) + 1):            # t ascends: slices are needed in order
        if lo[1] > 0:
            out[m, :lo[1]] = default
        if hi[1] + 1 < ny:
            out[m, hi[1] + 1:] = default
        if lo[0] > 0:
            out[m, rows_out, :lo[0]] = default
        if hi[0] + 1 < nx:
            out[m, rows_out, hi[0] + 1:] = default
        if t[m] < along[0] - tol or t[m] > along[-1] + tol:
            out[m, rows_out, cols_out] = default
            continue
        k_hi = int(min(max(upper[m], 1), len(along) - 1))
        k_lo = k_hi - 1
        for done in [k for k in planes if k < k_lo]:
            del planes[done]
        w = float(np.clip((t[m] - along[k_lo]) / (along[k_hi] - along[k_lo]), 0.0, 1.0)) \
            if len(along) > 1 else 0.0
        target = scratch if integer else out[m, rows_out, cols_out]
        if w == 0.0:
            target[...] = plane(k_lo)
        elif w == 1.0:
            target[...] = plane(k_hi)
        else:                                    # plane(lo) + w·(plane(hi) − plane(lo))
            np.multiply(step(k_lo), np.float32(w), out=target)
            target += plane(k_lo)
        if integer:
            np.rint(scratch, out=scratch)
            np.clip(scratch, info.min, info.max, out=scratch)
            out[m, rows_out, cols_out] = scratch
    return out


def resample_to_grid(hu: np.ndarray, frames: Sequence[geometry.FrameGeometry], grid: OutputGrid,
                     default: float = AIR_HU) -> np.ndarray:
    """Linear resampling onto ``grid``: one SimpleITK pass when the stack is untilted and
    evenly spaced (within UNIFORM_TOL of the target spacing), else :func:`resample_stack`."""
    uniform, step = _is_uniform(frames, UNIFORM_TOL * grid.spacing)
    if uniform:
        return resample_uniform(hu, frames, step, grid, default)
    return resample_stack(hu, frames, grid, default)


def output_box(frames: Sequence[geometry.FrameGeometry], grid: OutputGrid, rows: tuple[int, int],
               cols: tuple[int, int], slices: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Inclusive output index range ``(lo, hi)`` (``[i, j, k]``) outside which every output
    voxel is background: source rows/columns/slices holding the body, widened by one
    source sample (the reach of linear interpolation), every slice's in-plane offset
    (tilt) included."""
    along, in_plane = geometry.stack_offsets(frames)
    first = frames[0]
    rel = grid.origin - first.position
    a0, b0 = float(np.dot(rel, grid.axes[:, 0])), float(np.dot(rel, grid.axes[:, 1]))
    t0 = float(np.dot(grid.origin, grid.axes[:, 2]))
    n = len(frames)
    u = np.array([(cols[0] - 1) * first.column_spacing + in_plane[:, 0].min(),
                  (cols[1] + 1) * first.column_spacing + in_plane[:, 0].max()]) - a0
    v = np.array([(rows[0] - 1) * first.row_spacing + in_plane[:, 1].min(),
                  (rows[1] + 1) * first.row_spacing + in_plane[:, 1].max()]) - b0
    w = np.array([along[max(slices[0] - 1, 0)], along[min(slices[1] + 1, n - 1)]]) - t0
    spans = np.array([u, v, w]) / grid.spacing
    size = np.array(grid.size)
    lo = np.clip(np.floor(spans[:, 0] - 1e-6).astype(int), 0, size - 1)
    hi = np.clip(np.ceil(spans[:, 1] + 1e-6).astype(int), 0, size - 1)
    return lo, hi


def process_stack(stack: CtStack, options: dict, *, with_mask: bool = False
                  ) -> tuple[np.ndarray, OutputGrid, np.ndarray | None]:
    """Mask (on the source grid), centre and resample a stack.

    The body (:func:`coarse_body`: largest component above
    ``body_threshold_hu`` with its enclosed cavities filled, connectivity on
    2×2-pixel blocks, outline at full resolution) is applied slice by slice in
    place (outside → −1000 HU) while its world centroid and bounding box are
    summed; the grid is centred on the centroid, and only the box is resampled
    (:func:`resample_planes`). Returns ``([k, j, i] HU, grid, [k, j, i] bool
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
