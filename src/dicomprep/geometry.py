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
#: Positions closer than this (mm) along the normal are the same slice.
DUPLICATE_TOL_MM = 1e-3
#: Relative deviation of a gap from the median gap tolerated as "regular".
REGULAR_TOL = 0.01
#: Angle (degrees) between the slice stacking direction and the normal above
#: which a stack is called tilted (gantry tilt, PS3.3 C.8.2.1 GantryDetectorTilt).
TILT_TOL_DEG = 0.05


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


def frame_affine_lps(frame: FrameGeometry, slice_step: np.ndarray | None = None) -> np.ndarray:
    """4×4 affine from voxel (i=column, j=row, k=slice) to LPS mm.

    ``slice_step`` is the world vector from one slice to the next; without it,
    the normal times 1 mm (a single slice).
    """
    step = np.asarray(slice_step, dtype=float) if slice_step is not None else frame.normal
    aff = np.eye(4)
    aff[:3, 0] = frame.row_cosine * frame.column_spacing
    aff[:3, 1] = frame.column_cosine * frame.row_spacing
    aff[:3, 2] = step
    aff[:3, 3] = frame.position
    return aff


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
