"""QC pictures: orthogonal mid-planes, windowing, outlines, PNG writing.

Pictures are drawn from share/ outputs only (de-identified data), carry no
text at all (no burned-in labels, no PNG text chunks): captions live in the
report, next to the picture.

They are cheap by construction: a picture needs three planes of a volume, so
only those planes are taken (as views, in the array's own dtype), each is
downsampled by strided slicing to about the tile size *before* windowing, the
window comes from those few pixels, one PIL resize makes the tile and one PNG
pass (zlib level 1, no optimisation) writes the file. The ``*_array``
functions take arrays a stage already holds in memory (no NIfTI re-read);
the file functions load the NIfTI once and call them.
"""
from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import Image

from ..dicomio import atomic_path

#: (centre, width) display windows, in HU for CT.
CT_WINDOWS = {"brain": (40.0, 80.0), "body": (40.0, 400.0)}
THUMB_SIZE = 160
#: zlib level of QC PNGs: 1 is several times faster than the default 6 and the
#: files stay small (a 480×160 montage is a few tens of kB).
PNG_COMPRESS_LEVEL = 1
OUTLINE_COLOUR = (255, 64, 64)


def auto_window(values: np.ndarray) -> tuple[float, float]:
    """A window from the 1st–99.5th percentiles of the finite values."""
    v = np.asarray(values)
    if v.dtype.kind == "f":
        v = v[np.isfinite(v)]
    if v.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(v, [1, 99.5])
    if hi <= lo:
        hi = lo + 1
    return float((lo + hi) / 2), float(hi - lo)


def apply_window(img: np.ndarray, centre: float, width: float) -> np.ndarray:
    """PS3.3 C.11.2.1.2.1 linear VOI LUT (WindowCenter/WindowWidth) to 8 bits; NaN → black."""
    lo = centre - 0.5 - (width - 1) / 2
    scaled = (np.nan_to_num(img.astype(np.float32), nan=lo) - lo) / max(width - 1, 1e-6) * 255.0
    return np.clip(scaled, 0, 255).astype(np.uint8)


def grid_montage(slices: np.ndarray, columns: int | None = None) -> np.ndarray:
    """Tile ``(n, rows, cols)`` images on a near-square grid (row-major, blank padding)."""
    n, r, c = slices.shape
    ncol = columns or int(np.ceil(np.sqrt(n)))
    nrow = int(np.ceil(n / ncol))
    out = np.zeros((nrow * r, ncol * c), dtype=slices.dtype)
    for i in range(n):
        y, x = divmod(i, ncol)
        out[y * r:(y + 1) * r, x * c:(x + 1) * c] = slices[i]
    return out


def ras_view(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``data`` (3-D or more; extra axes follow) reoriented to the closest RAS+
    axes, as a view (flips and transposes only), with the voxel sizes in that order."""
    ornt = nib.orientations.io_orientation(affine)
    zooms = np.sqrt((np.asarray(affine, float)[:3, :3] ** 2).sum(axis=0))
    ras_zooms = np.empty(3)
    for old_axis, (new_axis, _) in enumerate(ornt):
        ras_zooms[int(new_axis)] = zooms[old_axis]
    return nib.orientations.apply_orientation(data, ornt), ras_zooms


def canonical(img: nib.Nifti1Image) -> tuple[np.ndarray, np.ndarray]:
    """Volume (first 3 dims, first volume of 4-D) in RAS+ orientation, with voxel sizes."""
    data = np.asanyarray(img.dataobj)
    while data.ndim > 3:
        data = data[..., 0]
    if data.ndim == 2:
        data = data[..., None]
    vol, zooms = ras_view(data, img.affine)
    return np.asarray(vol, dtype=np.float32), zooms


def plane_views(vol: np.ndarray, zooms: np.ndarray, point: tuple[int, int, int] | None = None) -> list[tuple]:
    """Axial, coronal, sagittal planes through ``point`` of a RAS+ array (views,
    any dtype; extra trailing axes are kept), each with its (row, column)
    pixel size in mm. Display rows run anterior→posterior (axial) or
    superior→inferior (coronal, sagittal); no radiological flip."""
    i, j, k = point or tuple(s // 2 for s in vol.shape[:3])
    return [
        (np.swapaxes(vol[:, :, k], 0, 1)[::-1], zooms[1], zooms[0]),   # axial: rows = A→P
        (np.swapaxes(vol[:, j, :], 0, 1)[::-1], zooms[2], zooms[0]),   # coronal: rows = S→I
        (np.swapaxes(vol[i, :, :], 0, 1)[::-1], zooms[2], zooms[1]),   # sagittal: rows = S→I, cols = P→A
    ]


def mid_planes(vol: np.ndarray, zooms: np.ndarray, point: tuple[int, int, int] | None = None) -> list[np.ndarray]:
    """Axial, coronal, sagittal mid-planes of a RAS+ volume resized to square
    pixels (full resolution; the pictures themselves use :func:`tile_geometry`)."""
    out = []
    for plane, row_mm, col_mm in plane_views(vol, zooms, point):
        if row_mm > 0 and col_mm > 0 and abs(row_mm / col_mm - 1) > 0.05:
            from scipy import ndimage  # lazy: a QC job draws its pictures without it (0.5 s to import)

            plane = ndimage.zoom(plane, (row_mm / col_mm, 1), order=1)
        out.append(plane)
    return out


def tile_geometry(shape: tuple[int, int], row_mm: float, col_mm: float, size: int = THUMB_SIZE) -> tuple[tuple[int, int], tuple[int, int]]:
    """(row step, column step) of the strided downsampling and the (height,
    width) of the tile picture: the plane's physical aspect, fitted in size×size."""
    rows, cols = shape
    row_mm = row_mm if row_mm > 0 else 1.0
    col_mm = col_mm if col_mm > 0 else 1.0
    h_mm, w_mm = rows * row_mm, cols * col_mm
    scale = size / max(h_mm, w_mm)
    height = max(1, min(size, int(round(h_mm * scale))))
    width = max(1, min(size, int(round(w_mm * scale))))
    # Keep at least the tile's pixels after striding (PIL does the last, smooth step).
    return (max(1, rows // height), max(1, cols // width)), (height, width)


def to_rgb(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray[..., None], 3, axis=-1)


def outline(mask: np.ndarray) -> np.ndarray:
    """Boundary pixels of a 2-D mask: the mask less its erosion by the 4-connected
    cross, pixels outside the image counting as background (what
    ``scipy.ndimage.binary_erosion`` does by default)."""
    m = mask.astype(bool)
    eroded = m.copy()
    eroded[1:, :] &= m[:-1, :]
    eroded[:-1, :] &= m[1:, :]
    eroded[:, 1:] &= m[:, :-1]
    eroded[:, :-1] &= m[:, 1:]
    eroded[[0, -1], :] = False
    eroded[:, [0, -1]] = False
    return m & ~eroded


def center_of_mass(mask: np.ndarray) -> tuple[float, ...]:
    """The mean voxel index of a mask along each axis (``scipy.ndimage.center_of_mass``
    of a binary volume: the same sums, so the same values)."""
    idx = np.nonzero(mask)
    n = len(idx[0])
    return tuple(float(c.sum()) / n for c in idx)


def overlay(rgb: np.ndarray, mask: np.ndarray, colour=OUTLINE_COLOUR) -> np.ndarray:
    out = rgb.copy()
    out[outline(mask)] = colour
    return out


def fit(img: np.ndarray, size: int = THUMB_SIZE) -> np.ndarray:
    """Resize (keeping aspect) and pad to a size×size tile."""
    pil = Image.fromarray(img)
    pil.thumbnail((size, size), Image.Resampling.BILINEAR)
    return _pad_tile(np.asarray(pil), size)


def _pad_tile(img: np.ndarray, size: int = THUMB_SIZE) -> np.ndarray:
    h, w = img.shape[:2]
    tile = np.zeros((size, size) + img.shape[2:], np.uint8)
    y, x = (size - h) // 2, (size - w) // 2
    tile[y:y + h, x:x + w] = img
    return tile


def montage(tiles: list[np.ndarray], gap: int = 4) -> np.ndarray:
    """Tiles side by side (all converted to RGB) with a black gap."""
    rgb = [t if t.ndim == 3 else to_rgb(t) for t in tiles]
    h = max(t.shape[0] for t in rgb)
    parts = []
    for t in rgb:
        pad = np.zeros((h, t.shape[1] + gap, 3), np.uint8)
        pad[: t.shape[0], : t.shape[1]] = t
        parts.append(pad)
    return np.concatenate(parts, axis=1)[:, :-gap]


def save_png(path: str | Path, image: np.ndarray, *, compress_level: int = PNG_COMPRESS_LEVEL) -> Path:
    """Write a PNG atomically in one encoder pass, with no text chunks."""
    path = Path(path)
    with atomic_path(path) as tmp:
        Image.fromarray(image).save(tmp, format="PNG", optimize=False, compress_level=compress_level)
    return path


def crop_to(reference: np.ndarray, keep: np.ndarray, *arrays: np.ndarray, margin: float = 0.1) -> list[np.ndarray]:
    """Crop arrays to the bounding box of ``keep`` plus a margin (fraction of the box)."""
    box = _box(keep, reference.shape[:3], margin)
    return [a[box] for a in arrays]


def _box(keep: np.ndarray, shape, margin: float = 0.1, step: int = 1) -> tuple[slice, ...]:
    """Bounding box of a non-empty 3-D boolean array (from its projections, which
    is fast on strided views, unlike ``argwhere``), scaled by ``step`` and grown
    by ``margin`` of its size."""
    lo, hi = [], []
    for axis in range(3):
        hits = np.flatnonzero(keep.any(axis=tuple(a for a in range(3) if a != axis)))
        lo.append(hits[0])
        hi.append(hits[-1])
    lo, hi = np.asarray(lo) * step, np.asarray(hi) * step + step
    pad = np.maximum(1, ((hi - lo) * margin).astype(int))
    lo = np.maximum(0, lo - pad)
    hi = np.minimum(shape[:3], hi + pad)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))


def _small_planes(vol: np.ndarray, zooms: np.ndarray, point) -> list[tuple[np.ndarray, tuple[int, int], tuple]]:
    """The three planes through ``point``, strided to about the tile size, as float32."""
    out = []
    for plane, row_mm, col_mm in plane_views(vol, zooms, point):
        (sr, sc), size = tile_geometry(plane.shape[:2], row_mm, col_mm)
        out.append((np.asarray(plane[::sr, ::sc], dtype=np.float32), size, (sr, sc)))
    return out


def _tile(gray: np.ndarray, size: tuple[int, int], mask: np.ndarray | None = None) -> np.ndarray:
    """One padded RGB tile of an 8-bit plane: one bilinear resize to ``size``
    (height, width); the outline of ``mask`` drawn at tile resolution."""
    h, w = size
    img = np.asarray(Image.fromarray(gray).resize((w, h), Image.Resampling.BILINEAR))
    rgb = to_rgb(img)
    if mask is not None and mask.any():
        m = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((w, h), Image.Resampling.NEAREST)) > 127
        rgb[outline(m)] = OUTLINE_COLOUR
    return _pad_tile(rgb)


def volume_picture_array(data: np.ndarray, affine: np.ndarray, out_png: str | Path, *,
                         windows: list[tuple[float, float]] | None = None,
                         mask: np.ndarray | None = None, mask_threshold: float | None = None) -> Path:
    """Three mid-planes per window (one row of tiles) of a volume already in
    memory (voxel array + NIfTI affine; 4-D: the first volume), with mask
    outlines: from ``mask`` (an array on the same grid) or from
    ``data > mask_threshold`` (e.g. the CT body threshold). With a mask the
    planes are cropped to the mask's box (+10 %) and cross at its centre of
    mass (a threshold mask: at the box centre)."""
    data = np.asanyarray(data)
    while data.ndim > 3:
        data = data[..., 0]
    if data.ndim == 2:
        data = data[..., None]
    vol, zooms = ras_view(data, affine)
    mvol = None
    point = None
    if mask is not None:
        m = np.asanyarray(mask)
        while m.ndim > 3:
            m = m[..., 0]
        if m.shape == data.shape:
            keep = m > 0.5
            if keep.any():
                # Box on the stored (contiguous) arrays, then the RAS views of the crops:
                # flips and transposes map a box grown symmetrically onto the same box.
                box = _box(keep, data.shape)
                vol, _ = ras_view(data[box], affine)
                mvol, _ = ras_view(keep[box], affine)
                point = tuple(int(c) for c in np.round(center_of_mass(mvol)))
    elif mask_threshold is not None:
        # Box of the thresholded volume from a strided look (≤ ~128 samples per axis).
        step = max(1, int(np.ceil(max(vol.shape) / 128)))
        sample = vol[::step, ::step, ::step] > mask_threshold
        if sample.any():
            box = _box(sample, vol.shape, step=step)
            vol = vol[box]
    planes = _small_planes(vol, zooms, point)
    mplanes: list = [None] * 3
    if mvol is not None:
        mplanes = [p[::s[0], ::s[1]] for (p, _, _), (_, _, s) in zip(plane_views(mvol, zooms, point), planes)]
    elif mask_threshold is not None:
        mplanes = [p > mask_threshold for p, _, _ in planes]
    windows = windows or [auto_window(np.concatenate([p.ravel() for p, _, _ in planes]))]
    tiles = []
    for centre, width in windows:
        for (plane, size, _), mplane in zip(planes, mplanes):
            tiles.append(_tile(apply_window(plane, centre, width), size, mplane))
    return save_png(out_png, montage(tiles))


def volume_picture(nifti: str | Path, out_png: str | Path, *, windows: list[tuple[float, float]] | None = None,
                   mask: str | Path | None = None, mask_threshold: float | None = None) -> Path:
    """:func:`volume_picture_array` of a NIfTI file (and a mask NIfTI on the same grid)."""
    img = nib.load(str(nifti))
    mdata = np.asanyarray(nib.load(str(mask)).dataobj) if mask is not None else None
    return volume_picture_array(np.asanyarray(img.dataobj), img.affine, out_png, windows=windows,
                                mask=mdata, mask_threshold=None if mask is not None else mask_threshold)


def diffusion_picture_array(data: np.ndarray, affine: np.ndarray, bvals, out_png: str | Path) -> Path:
    """b0 and mean-DWI mid-planes of a 4-D diffusion array already in memory."""
    data = np.asanyarray(data)
    if data.ndim == 3:
        data = data[..., None]
    vol, zooms = ras_view(data, affine)
    bvals = np.asarray(bvals, float).ravel()
    n = vol.shape[3]
    low = bvals <= 50 if bvals.size == n else np.zeros(n, bool)
    tiles = []
    planes4 = plane_views(vol, zooms)
    for pick, fallback in ((low, 0), (~low, n - 1)):
        small = []
        for plane, row_mm, col_mm in planes4:
            (sr, sc), size = tile_geometry(plane.shape[:2], row_mm, col_mm)
            p = plane[::sr, ::sc]
            p = p[..., pick].mean(axis=2, dtype=np.float64) if pick.any() else p[..., fallback]
            small.append((np.asarray(p, np.float32), size))
        c, w = auto_window(np.concatenate([p.ravel() for p, _ in small]))
        tiles += [_tile(apply_window(p, c, w), size) for p, size in small]
    return save_png(out_png, montage(tiles))


def diffusion_picture(nifti: str | Path, bvals: np.ndarray, out_png: str | Path) -> Path:
    """b0 and mean-DWI mid-planes of a 4-D diffusion NIfTI (:func:`diffusion_picture_array`)."""
    img = nib.load(str(nifti))
    return diffusion_picture_array(np.asanyarray(img.dataobj), img.affine, bvals, out_png)
