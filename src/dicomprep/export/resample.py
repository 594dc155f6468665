"""Resampling between voxel grids in world coordinates.

A grid is a shape plus a 4×4 affine from voxel (i, j, k) to world (RAS, as
:mod:`dicomprep.geometry` builds them). Affines may be sheared (gantry tilt),
so resampling is a general affine map (whether two grids are the same at
all is :func:`dicomprep.geometry.same_grid`) computed with
:func:`scipy.ndimage.affine_transform`: target voxel → world → source voxel.

* images: linear interpolation (``order=1``), outside → ``fill``;
* masks: nearest neighbour (``order=0``), so labels stay labels.
"""
from __future__ import annotations

import numpy as np

#: Source coordinates this close (in voxels) to a whole voxel are taken as that voxel.
SNAP_VOXELS = 1e-3


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
    """One 3-D volume, one target slice at a time (memory: one slice of coordinates).

    Source coordinates within :data:`SNAP_VOXELS` of a whole voxel are snapped
    to it, so grids that coincide up to float32 rounding of an affine (NIfTI
    stores float32) give the source voxels exactly, not a blend of neighbours.
    """
    out = np.empty(shape, dtype=vol.dtype)
    work = vol if (order == 0 or vol.dtype.kind == "f") else vol.astype(np.float32)
    lim = np.array(vol.shape[:3], dtype=np.float64)[:, None]
    ii, jj = np.meshgrid(np.arange(shape[0], dtype=np.float64), np.arange(shape[1], dtype=np.float64),
                         indexing="ij")
    ij = np.stack([ii.ravel(), jj.ravel()])
    for k in range(shape[2]):
        src = m[:3, :2] @ ij + (m[:3, 2] * k + m[:3, 3])[:, None]
        near = np.rint(src)
        snap = np.abs(src - near) < SNAP_VOXELS
        src[snap] = near[snap]
        if order == 0:
            idx = np.floor(src + 0.5).astype(np.int64)     # round half up, like ITK
            inside = np.all((idx >= 0) & (idx < lim), axis=0)
            plane = np.full(src.shape[1], fill, dtype=vol.dtype)
            plane[inside] = vol[idx[0, inside], idx[1, inside], idx[2, inside]]
        else:
            inside = np.all((src >= 0) & (src <= lim - 1), axis=0)
            from scipy import ndimage  # lazy: a SEG job that never resamples skips 0.3-0.6 s of import

            vals = ndimage.map_coordinates(work, src[:, inside], order=order, mode="nearest", prefilter=False)
            plane = np.full(src.shape[1], fill, dtype=np.float64)
            plane[inside] = vals
            if vol.dtype.kind in "iub":
                plane = np.rint(plane)
                if vol.dtype.kind != "b":
                    info = np.iinfo(vol.dtype)
                    plane = np.clip(plane, info.min, info.max)
            plane = plane.astype(vol.dtype)
        out[:, :, k] = plane.reshape(shape[:2])
    return out
