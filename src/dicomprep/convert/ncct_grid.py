"""Output grid and linear resampling of an axial CT stack (step 3 of :mod:`dicomprep.convert.ncct`).

The output grid is orthogonal, its axes the slices' row cosine, column cosine
and normal (ImageOrientationPatient (0020,0037), PS3.3 C.7.6.2.1.1), isotropic,
a fixed matrix in plane centred on the body, spanning the stack along the
normal. Resampling is separable (:func:`resample_planes`: each slice in plane
at its own ImagePositionPatient (0020,0032), then along the normal between the
two nearest true slice positions), restricted to the body's box
(:func:`output_box`); an untilted, evenly spaced stack can also go through one
SimpleITK pass (:func:`resample_to_grid`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import SimpleITK as sitk

from .. import geometry
from .ncct_mask import image_array

#: Value of everything outside the body and outside the source field of view.
AIR_HU = -1000.0
#: A stack is resampled in one SimpleITK pass when every slice lies within
#: this fraction of the target spacing of a uniform, untilted stack.
UNIFORM_TOL = 0.02


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
    nz = int(math.floor((extent + geometry.STACK_EDGE_TOL_MM) / spacing)) + 1  # DS rounding: the last plane stays
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
