"""Resampling between voxel grids in world coordinates.

A grid is a shape plus a 4×4 affine from voxel (i, j, k) to world (RAS, as
:mod:`dicomprep.geometry` builds them). Affines may be sheared (gantry tilt),
so resampling is a general affine map computed with
:func:`scipy.ndimage.affine_transform`: target voxel → world → source voxel.

* images: linear interpolation (``order=1``), outside → ``fill``;
* masks: nearest neighbour (``order=0``), so labels stay labels.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

#: Two affines closer than this (mm, per element) describe the same grid.
SAME_GRID_TOL = 1e-3


def same_grid(affine_a, shape_a, affine_b, shape_b, tol: float = SAME_GRID_TOL) -> bool:
    """True when two grids have the same shape (first 3 axes) and affines within ``tol``."""
    return (tuple(shape_a[:3]) == tuple(shape_b[:3])
            and bool(np.allclose(np.asarray(affine_a, float), np.asarray(affine_b, float), atol=tol)))


def resample(data: np.ndarray, affine: np.ndarray, target_affine: np.ndarray, target_shape,
             *, order: int = 1, fill: float = 0.0) -> np.ndarray:
    """Resample a 3-D array (or 4-D with extra trailing axes) from its grid onto another.

    ``order=0`` is nearest neighbour (masks, labels), ``order=1`` linear. The
    result has ``target_shape`` (+ the trailing axes) and the input's dtype
    (linear results of integer inputs are rounded).
    """
    data = np.asarray(data)
    target_shape = tuple(int(s) for s in target_shape[:3])
    # target voxel -> source voxel: inv(A_src) @ A_tgt
    m = np.linalg.inv(np.asarray(affine, float)) @ np.asarray(target_affine, float)
    if data.ndim == 3:
        return _one(data, m, target_shape, order, fill)
    flat = data.reshape(data.shape[:3] + (-1,))
    out = np.stack([_one(flat[..., t], m, target_shape, order, fill) for t in range(flat.shape[-1])], axis=-1)
    return out.reshape(target_shape + data.shape[3:])


def _one(vol: np.ndarray, m: np.ndarray, shape, order: int, fill: float) -> np.ndarray:
    work = vol if vol.dtype.kind == "f" else vol.astype(np.float32)
    if order == 0:
        # Nearest neighbour with the round-half-up rule SimpleITK and ITK use,
        # so a voxel centre exactly between two source voxels is predictable.
        ijk = np.indices(shape, dtype=np.float64).reshape(3, -1)
        src = m[:3, :3] @ ijk + m[:3, 3:4]
        idx = np.floor(src + 0.5 + 1e-6).astype(np.int64)
        inside = np.all((idx >= 0) & (idx < np.array(vol.shape[:3])[:, None]), axis=0)
        out = np.full(ijk.shape[1], fill, dtype=vol.dtype)
        out[inside] = vol[idx[0, inside], idx[1, inside], idx[2, inside]]
        return out.reshape(shape)
    out = ndimage.affine_transform(work, m[:3, :3], offset=m[:3, 3], output_shape=shape, order=order,
                                   mode="constant", cval=float(fill), prefilter=False)
    if vol.dtype.kind in "iub":
        info = np.iinfo(vol.dtype) if vol.dtype.kind != "b" else None
        out = np.rint(out)
        if info is not None:
            out = np.clip(out, info.min, info.max)
        return out.astype(vol.dtype)
    return out.astype(vol.dtype, copy=False)
