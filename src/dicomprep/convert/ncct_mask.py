"""Body mask of an axial CT stack, on the source grid (step 3 of :mod:`dicomprep.convert.ncct`).

HU > ``body_threshold_hu``, the largest 3-D connected component (SimpleITK
ConnectedComponent / RelabelComponent), every cavity it encloses filled (in
3-D, and slice by slice where a partial stack leaves the shell open);
connectivity and cavities are worked out on 2×2-pixel blocks, the outline
stays at full resolution. Positions follow ImagePositionPatient (0020,0032),
ImageOrientationPatient (0020,0037) and PixelSpacing (0028,0030) per slice
(PS3.3 C.7.6.2.1.1).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from .. import geometry
from ..errors import DicomprepError


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
