"""The ONE place for slice ordering, spacing and affines (ARCHITECTURE.md).

Conventions, used by every converter and export:

* DICOM patient coordinates are LPS (PS3.3 C.7.6.2.1.1). NIfTI world
  coordinates are RAS; :data:`LPS_TO_RAS` flips x and y.
* ImageOrientationPatient (0020,0037) holds the row direction cosine (the
  direction of increasing *column* index) then the column direction cosine
  (the direction of increasing *row* index). PixelSpacing (0028,0030) is
  [row spacing (between rows, along the column cosine), column spacing].
* A DICOM frame's pixel array is indexed ``[row, column]``. A volume built by
  :func:`stack_volume` is indexed ``[column, row, slice]`` (NIfTI's i, j, k), so
  that :func:`volume_affine` maps (i, j, k) to world coordinates directly.
* The slice normal is row cosine × column cosine; slices are ordered by their
  position along it (ImagePositionPatient · normal), never by InstanceNumber.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np

#: Multiply an LPS affine on the left to get RAS (x and y flip sign).
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

# --- tolerances: every geometric comparison in the package uses one of these ---

#: Image Orientation (Patient) (0020,0037): two frames have the same
#: orientation when no direction cosine differs by more than this (about
#: 0.006 degrees; the stored cosines are DS strings rounded by the writer).
#: Used where pixels must line up exactly: the index's grouping of a
#: series' instances for its stack report, and a SEG frame laid onto a
#: source pixel grid (convert/seg.py), where 1e-3 would already shift the
#: far edge of a 512-pixel frame by half a pixel.
ORIENTATION_TOL = 1e-4
#: Image Orientation (Patient) (0020,0037) of the slices of one stack that is
#: made into one volume (CT conversion, a SEG's source grid): cosines within
#: this (about 0.06 degrees). Looser than :data:`ORIENTATION_TOL` on purpose
#: and kept: the CT selection and loading always used it, and a stricter value
#: would turn series with cosine jitter between 1e-4 and 1e-3 from converted
#: into skipped.
STACK_ORIENTATION_TOL = 1e-3
#: Two slice normals (row cosine × column cosine of (0020,0037)) are parallel,
#: either way round, when ``1 − |n·n'|`` is at most this (about 0.8 degrees):
#: a SEG frame placed on a source slice by position, and the frames of a
#: series stacked into one array (export/arrays.py).
PARALLEL_TOL = 1e-4
#: Pixel Spacing (0028,0030) of the slices of one stack: equal within this
#: many mm (absolute; CT conversion).
SPACING_TOL_MM = 1e-4
#: Pixel Spacing (0028,0030) of a SEG frame against its source slice: equal
#: within this fraction (SEG writers re-round the spacing they copy).
SPACING_REL_TOL = 1e-3
#: Image Position (Patient) (0020,0032) along the normal: positions closer
#: than this (mm) are the same slice of a stack (duplicates, slice order).
DUPLICATE_TOL_MM = 1e-3
#: Image Position (Patient) (0020,0032) along the normal: frames of a
#: multi-volume series (repeated slices of a 4-D acquisition) closer than
#: this (mm) are one slice position of the exported array. Looser than
#: :data:`DUPLICATE_TOL_MM`, and kept: repeated volumes carry the rounding of
#: each volume's positions, and the array export always grouped at 0.01 mm.
SLICE_GROUP_TOL_MM = 0.01
#: Image Position (Patient) (0020,0032) along the normal: an output plane this
#: close (mm) beyond the first or last slice of a CT stack is still interpolated
#: from it, and a grid whose extent falls short of a whole number of steps by
#: this much still gets its last plane: positions are DS strings rounded by their
#: writer (an oblique stack spanning 134.999994 mm has 271 planes at 0.5 mm).
STACK_EDGE_TOL_MM = 1e-3
#: A stack is evenly spaced when every slice lies within this fraction of the mean
#: step from where an affine (first position + k × mean step) puts it; otherwise
#: no NIfTI affine places its slices (SEG masks on the source grid).
EVEN_STACK_TOL = 0.1
#: Relative deviation of a gap from the median gap tolerated as "regular".
REGULAR_TOL = 0.01
#: Angle (degrees) between the slice stacking direction and the normal above
#: which a stack is called tilted (gantry tilt, PS3.3 C.8.2.1 GantryDetectorTilt).
TILT_TOL_DEG = 0.05
#: Two voxel grids (a shape and a 4×4 affine, mm) are the same when the
#: affines agree element-wise within this (NIfTI stores them as float32).
SAME_GRID_TOL = 1e-3


@dataclass(frozen=True)
class FrameGeometry:
    """Geometry of one 2-D frame: where its first pixel is and how it is laid out."""

    position: np.ndarray          # ImagePositionPatient (0020,0032), LPS mm, centre of first pixel
    row_cosine: np.ndarray        # IOP[0:3]: direction of increasing column index
    column_cosine: np.ndarray     # IOP[3:6]: direction of increasing row index
    row_spacing: float            # PixelSpacing[0]: distance between rows (mm)
    column_spacing: float         # PixelSpacing[1]: distance between columns (mm)
    rows: int
    columns: int

    @property
    def normal(self) -> np.ndarray:
        return slice_normal(np.concatenate([self.row_cosine, self.column_cosine]))


@dataclass
class StackReport:
    """What the positions of a stack of slices say about its regularity."""

    n_slices: int
    spacing: float                # median gap along the normal (mm); nan for < 2 slices
    spacing_min: float
    spacing_max: float
    regular: bool
    n_duplicates: int             # slices at the same position as another
    n_missing: int                # estimated slices missing from gaps > 1.5 × median
    tilt_deg: float               # angle between stacking direction and normal
    notes: list[str] = field(default_factory=list)

    @property
    def tilted(self) -> bool:
        return self.tilt_deg > TILT_TOL_DEG


def as_floats(value, n: int) -> np.ndarray | None:
    """Parse a DS multi-value (list, MultiValue, or backslash string) into n floats."""
    if value is None:
        return None
    if isinstance(value, str):
        value = [v for v in value.replace(",", "\\").split("\\") if v.strip()]
    try:
        arr = np.asarray([float(v) for v in value], dtype=float)
    except (TypeError, ValueError):
        return None
    if arr.size != n or not np.all(np.isfinite(arr)):
        return None
    return arr


def slice_normal(orientation: Sequence[float]) -> np.ndarray:
    """Unit normal of a slice: row cosine × column cosine (ImageOrientationPatient)."""
    iop = np.asarray(orientation, dtype=float)
    n = np.cross(iop[:3], iop[3:6])
    norm = np.linalg.norm(n)
    if norm == 0:
        raise ValueError("ImageOrientationPatient row and column cosines are parallel")
    return n / norm


def orientation_label(orientation: Sequence[float]) -> str:
    """axial / coronal / sagittal by the dominant component of the slice normal
    (|n| ≥ 0.75 on one axis), else oblique."""
    n = np.abs(slice_normal(orientation))
    axis = int(np.argmax(n))
    if n[axis] < 0.75:
        return "oblique"
    return ("sagittal", "coronal", "axial")[axis]


def is_axial(orientation: Sequence[float], min_component: float = 0.75) -> bool:
    """Axial when the normal's z component dominates with |n_z| ≥ ``min_component``."""
    n = np.abs(slice_normal(orientation))
    return bool(n[2] >= min_component and n[2] == n.max())


def _cosines(orientation) -> np.ndarray:
    """The six direction cosines of (0020,0037): of a FrameGeometry, or the
    values themselves (one set, or N×6)."""
    if isinstance(orientation, FrameGeometry):
        return np.concatenate([orientation.row_cosine, orientation.column_cosine])
    return np.asarray(orientation, dtype=float)


def same_orientation(a, b, tol: float = ORIENTATION_TOL):
    """Image Orientation (Patient) (0020,0037) of ``a`` equals that of ``b``:
    no direction cosine differs by more than ``tol`` (:data:`ORIENTATION_TOL`,
    or :data:`STACK_ORIENTATION_TOL` for the slices of one stack).

    ``a`` and ``b`` are FrameGeometry objects or six cosines; ``a`` may be an
    N×6 array, answered row by row (a bool array)."""
    close = np.abs(_cosines(a) - _cosines(b)).max(axis=-1) <= tol
    return bool(close) if np.ndim(close) == 0 else close


def parallel(normal_a, normal_b, tol: float = PARALLEL_TOL):
    """Slice normals parallel (either way round): ``|1 − |a·b|| ≤ tol``
    (:data:`PARALLEL_TOL`). ``normal_a`` may be N×3 (a bool array)."""
    dots = np.asarray(normal_a, dtype=float) @ np.asarray(normal_b, dtype=float)
    close = np.abs(np.abs(dots) - 1.0) <= tol
    return bool(close) if np.ndim(close) == 0 else close


def same_spacing(a: FrameGeometry, b: FrameGeometry, tol_mm: float = SPACING_TOL_MM,
                 rel_tol: float = 0.0) -> bool:
    """Pixel Spacing (0028,0030) of ``a`` equals that of ``b`` in both
    directions, within ``tol_mm + rel_tol × (b's spacing)``."""
    return (abs(a.row_spacing - b.row_spacing) <= tol_mm + rel_tol * b.row_spacing
            and abs(a.column_spacing - b.column_spacing) <= tol_mm + rel_tol * b.column_spacing)


def same_stack(a: FrameGeometry, b: FrameGeometry, *, spacing_tol_mm: float | None = SPACING_TOL_MM,
               orientation_tol: float = STACK_ORIENTATION_TOL) -> bool:
    """Two frames can be slices of one stack: the same matrix (Rows (0028,0010),
    Columns (0028,0011)), Pixel Spacing (0028,0030) within ``spacing_tol_mm``
    (None: not compared) and Image Orientation (Patient) (0020,0037) within
    ``orientation_tol``. Their positions are not compared (see :func:`stack_report`)."""
    return ((a.rows, a.columns) == (b.rows, b.columns)
            and (spacing_tol_mm is None or same_spacing(a, b, spacing_tol_mm))
            and same_orientation(a, b, orientation_tol))


def same_grid(affine_a, shape_a, affine_b, shape_b, tol: float = SAME_GRID_TOL) -> bool:
    """Two voxel grids are the same: the same shape (first 3 axes) and 4×4
    affines within ``tol`` element-wise (:data:`SAME_GRID_TOL`)."""
    return (tuple(shape_a[:3]) == tuple(shape_b[:3])
            and bool(np.allclose(np.asarray(affine_a, float), np.asarray(affine_b, float), atol=tol)))


def positions_along_normal(positions: np.ndarray, normal: np.ndarray) -> np.ndarray:
    """Signed distance of each ImagePositionPatient along the slice normal (IPP · n)."""
    return np.asarray(positions, dtype=float).reshape(-1, 3) @ np.asarray(normal, dtype=float)


def slice_order(positions: np.ndarray, normal: np.ndarray, tiebreak: Iterable | None = None) -> np.ndarray:
    """Indices that sort slices by position along the normal (ascending).

    ``tiebreak`` (e.g. InstanceNumber or acquisition time) orders slices that
    share a position; without it, the input order is kept (stable sort).
    """
    d = positions_along_normal(positions, normal)
    d = np.round(d / DUPLICATE_TOL_MM) * DUPLICATE_TOL_MM
    if tiebreak is None:
        return np.argsort(d, kind="stable")
    tb = np.asarray(list(tiebreak))
    return np.lexsort((tb, d))


def stack_report(positions: np.ndarray, normal: np.ndarray) -> StackReport:
    """Spacing regularity, duplicates, gaps and tilt of a stack of slice positions.

    Spacing comes from positions (median of gaps), not from SliceThickness
    (0018,0050) or SpacingBetweenSlices (0018,0088).
    """
    positions = np.asarray(positions, dtype=float).reshape(-1, 3)
    n = len(positions)
    if n < 2:
        return StackReport(n, float("nan"), float("nan"), float("nan"), True, 0, 0, 0.0)
    order = slice_order(positions, normal)
    ordered = positions[order]
    d = positions_along_normal(ordered, normal)
    gaps = np.diff(d)
    dup = int(np.sum(gaps < DUPLICATE_TOL_MM))
    real = gaps[gaps >= DUPLICATE_TOL_MM]
    notes: list[str] = []
    if real.size == 0:
        return StackReport(n, float("nan"), float("nan"), float("nan"), False, dup, 0, 0.0,
                           ["all slices share one position"])
    spacing = float(np.median(real))
    regular = bool(np.all(np.abs(real - spacing) <= REGULAR_TOL * spacing + 1e-4))
    # A gap is a missing slice only when it is (close to) a whole multiple of
    # the spacing; a stack acquired with mixed spacing has no "missing" slices.
    multiples = real / spacing
    gap_is_missing = (multiples > 1.5) & (np.abs(multiples - np.round(multiples)) <= 0.1)
    mixed = bool(np.any((multiples > 1.5) & ~gap_is_missing))
    missing = 0 if mixed else int(np.sum(np.round(multiples[gap_is_missing]) - 1))
    if dup:
        notes.append(f"{dup} duplicated slice position(s)")
    if missing:
        notes.append(f"about {missing} missing slice(s) (gaps over 1.5x the median spacing)")
    if not regular:
        notes.append(f"irregular spacing {real.min():.3g}-{real.max():.3g} mm (median {spacing:.3g})")
    # Tilt: direction of the stack (first to last unique position) versus the normal.
    span = ordered[-1] - ordered[0]
    tilt = 0.0
    if np.linalg.norm(span) > 0:
        cosang = abs(float(np.dot(span / np.linalg.norm(span), normal)))
        tilt = float(np.degrees(np.arccos(min(1.0, cosang))))
    if tilt > TILT_TOL_DEG:
        notes.append(f"slices are stacked {tilt:.2f} degrees off the slice normal (gantry tilt)")
    return StackReport(n, spacing, float(real.min()), float(real.max()), regular, dup, missing, tilt, notes)


@dataclass
class SortedStack:
    """A stack's geometry, derived once: its frames sorted along the normal,
    where each came from, and what their positions say (:func:`sort_stack`)."""

    frames: list[FrameGeometry]   # sorted along the normal (ImagePositionPatient · n)
    order: np.ndarray             # input index of each sorted frame
    report: StackReport


def sort_stack(frames: Sequence[FrameGeometry], tiebreak: Iterable | None = None) -> SortedStack:
    """Order the frames of one stack along the first frame's normal
    (:func:`slice_order`; ``tiebreak`` orders slices sharing a position) and
    report on their positions (:func:`stack_report`)."""
    normal = frames[0].normal
    positions = np.array([f.position for f in frames])
    order = slice_order(positions, normal, tiebreak=tiebreak)
    return SortedStack([frames[i] for i in order], order, stack_report(positions[order], normal))


def frame_affine_lps(frame: FrameGeometry, slice_step: np.ndarray | None = None) -> np.ndarray:
    """4×4 affine from voxel (i=column, j=row, k=slice) to LPS mm.

    ``slice_step`` is the world vector from one slice to the next; without it,
    the normal times 1 mm (a single slice).
    """
    step = np.asarray(slice_step, dtype=float) if slice_step is not None else frame.normal
    axes = np.column_stack([frame.row_cosine, frame.column_cosine, step])
    return grid_affine(frame.position, axes, [frame.column_spacing, frame.row_spacing, 1.0], ras=False)


def volume_affine(frames: Sequence[FrameGeometry], ras: bool = True) -> np.ndarray:
    """Affine of a sorted stack (first frame = slice 0) as an (i, j, k) → world map.

    The slice vector is the mean step between consecutive positions, so a
    tilted stack gets a sheared (non-orthogonal) affine that places every
    voxel exactly; the last column is the first slice's position.
    """
    first = frames[0]
    if len(frames) > 1:
        step = (frames[-1].position - first.position) / (len(frames) - 1)
    else:
        step = first.normal
    aff = frame_affine_lps(first, step)
    return LPS_TO_RAS @ aff if ras else aff


def uneven_offset_mm(frames: Sequence[FrameGeometry]) -> float:
    """The largest distance (mm) between a sorted stack's slice position (0020,0032) and
    where :func:`volume_affine` (first position + k × mean step) puts that slice: 0 for
    an evenly spaced stack, large when slices are missing or unevenly spaced."""
    if len(frames) < 3:
        return 0.0
    positions = np.array([f.position for f in frames], dtype=float)
    step = (positions[-1] - positions[0]) / (len(frames) - 1)
    even = positions[0] + np.outer(np.arange(len(frames)), step)
    return float(np.linalg.norm(positions - even, axis=1).max())


def unevenly_spaced_mm(frames: Sequence[FrameGeometry]) -> float:
    """:func:`uneven_offset_mm` when a sorted stack is not evenly spaced (a slice more
    than :data:`EVEN_STACK_TOL` of the mean step from the even grid), else 0.0."""
    if len(frames) < 3:
        return 0.0
    offset = uneven_offset_mm(frames)
    step = float(np.linalg.norm(frames[-1].position - frames[0].position)) / (len(frames) - 1)
    return offset if offset > EVEN_STACK_TOL * max(step, 1e-6) else 0.0


def voxel_to_world(affine: np.ndarray, ijk: np.ndarray) -> np.ndarray:
    """World coordinates of voxel indices (N×3) under a 4×4 affine."""
    ijk = np.atleast_2d(np.asarray(ijk, dtype=float))
    return ijk @ affine[:3, :3].T + affine[:3, 3]


def world_to_voxel(affine: np.ndarray, xyz: np.ndarray) -> np.ndarray:
    """Voxel indices (float) of world coordinates (N×3) under a 4×4 affine."""
    xyz = np.atleast_2d(np.asarray(xyz, dtype=float))
    inv = np.linalg.inv(affine)
    return xyz @ inv[:3, :3].T + inv[:3, 3]


def pixel_to_patient_lps(frame: FrameGeometry, row: float, column: float) -> np.ndarray:
    """PS3.3 C.7.6.2.1.1 equation: patient (LPS) position of pixel (row, column)."""
    return (frame.position
            + frame.row_cosine * frame.column_spacing * column
            + frame.column_cosine * frame.row_spacing * row)


def frame_geometry_from_values(ipp, iop, pixel_spacing, rows: int, columns: int) -> FrameGeometry | None:
    """Build a FrameGeometry from raw attribute values; None if any is missing/invalid."""
    pos = as_floats(ipp, 3)
    ori = as_floats(iop, 6)
    ps = as_floats(pixel_spacing, 2)
    if pos is None or ori is None or ps is None or not rows or not columns:
        return None
    return FrameGeometry(pos, ori[:3], ori[3:6], float(ps[0]), float(ps[1]), int(rows), int(columns))


def _first(seq_owner, name: str):
    seq = getattr(seq_owner, name, None)
    if seq:
        return seq[0]
    return None


def dataset_frame_geometries(ds) -> list[FrameGeometry | None]:
    """Geometry of every frame of a dataset, classic or enhanced multi-frame.

    Enhanced IODs keep it in the Per-Frame / Shared Functional Groups
    (PS3.3 C.7.6.16): PlanePositionSequence (0020,9113), PlaneOrientationSequence
    (0020,9116), PixelMeasuresSequence (0028,9110).
    """
    rows, cols = int(getattr(ds, "Rows", 0) or 0), int(getattr(ds, "Columns", 0) or 0)
    per_frame = getattr(ds, "PerFrameFunctionalGroupsSequence", None)
    if per_frame:
        shared = _first(ds, "SharedFunctionalGroupsSequence")
        out = []
        for item in per_frame:
            def pick(name):
                v = _first(item, name)
                if v is None and shared is not None:
                    v = _first(shared, name)
                return v
            pos = pick("PlanePositionSequence")
            ori = pick("PlaneOrientationSequence")
            meas = pick("PixelMeasuresSequence")
            out.append(frame_geometry_from_values(
                getattr(pos, "ImagePositionPatient", None) if pos is not None else None,
                getattr(ori, "ImageOrientationPatient", None) if ori is not None else None,
                getattr(meas, "PixelSpacing", None) if meas is not None else None,
                rows, cols))
        return out
    n = int(getattr(ds, "NumberOfFrames", 1) or 1)
    geo = frame_geometry_from_values(
        getattr(ds, "ImagePositionPatient", None), getattr(ds, "ImageOrientationPatient", None),
        getattr(ds, "PixelSpacing", None) or getattr(ds, "ImagerPixelSpacing", None), rows, cols)
    if n > 1 and geo is not None:
        # Classic multi-frame (e.g. NM/US) without per-frame positions: use
        # SpacingBetweenSlices along the normal when given.
        step = float(getattr(ds, "SpacingBetweenSlices", 0) or 0)
        return [FrameGeometry(geo.position + geo.normal * step * i, geo.row_cosine, geo.column_cosine,
                              geo.row_spacing, geo.column_spacing, rows, cols) for i in range(n)]
    return [geo] * n


def stack_volume(frames_rc: Sequence[np.ndarray]) -> np.ndarray:
    """Stack sorted 2-D frames (each ``[row, column]``) into a ``[column, row, slice]`` volume."""
    vol = np.stack(frames_rc, axis=-1)        # [row, column, slice]
    return np.ascontiguousarray(np.swapaxes(vol, 0, 1))


def rescale(pixels: np.ndarray, slope: float | None, intercept: float | None) -> np.ndarray:
    """Modality LUT: stored value × RescaleSlope (0028,1053) + RescaleIntercept (0028,1052)."""
    s = 1.0 if slope in (None, "") else float(slope)
    b = 0.0 if intercept in (None, "") else float(intercept)
    return pixels.astype(np.float32) * np.float32(s) + np.float32(b)


def orthonormal_frame(row_cosine: Sequence[float], column_cosine: Sequence[float]) -> np.ndarray:
    """3×3 matrix whose columns are the slice's row cosine, column cosine and
    normal (ImageOrientationPatient (0020,0037)), made exactly orthonormal
    (Gram–Schmidt on the column cosine; stored IOP values are rounded)."""
    u = np.asarray(row_cosine, dtype=float)
    u = u / np.linalg.norm(u)
    v = np.asarray(column_cosine, dtype=float)
    v = v - np.dot(v, u) * u
    v = v / np.linalg.norm(v)
    return np.column_stack([u, v, np.cross(u, v)])


def stack_offsets(frames: Sequence[FrameGeometry]) -> tuple[np.ndarray, np.ndarray]:
    """Where each frame of a stack lies in the first frame's orthonormal frame.

    Returns ``(along_normal, in_plane)``: the signed distance of every
    ImagePositionPatient along the slice normal (IPP · n, mm) and its in-plane
    offset from the first frame's position, ``[along row cosine, along column
    cosine]`` in mm (N×2). An untilted stack has zero in-plane offsets; gantry
    tilt shows as offsets growing linearly with the slice position.
    """
    first = frames[0]
    frame = orthonormal_frame(first.row_cosine, first.column_cosine)
    pos = np.array([f.position for f in frames], dtype=float)
    local = (pos - first.position) @ frame          # [u, v, n] components
    return pos @ frame[:, 2], local[:, :2]


def grid_affine(origin_lps: Sequence[float], axes: np.ndarray, spacing: Sequence[float],
                ras: bool = True) -> np.ndarray:
    """Affine of a regular grid: voxel (i, j, k) → world, given the LPS position
    of voxel (0, 0, 0), the unit axis directions (columns of ``axes``, LPS)
    and the spacing along each axis (mm)."""
    aff = np.eye(4)
    aff[:3, :3] = np.asarray(axes, dtype=float) * np.asarray(spacing, dtype=float)[None, :]
    aff[:3, 3] = np.asarray(origin_lps, dtype=float)
    return LPS_TO_RAS @ aff if ras else aff
