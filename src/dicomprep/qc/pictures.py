"""QC pictures: orthogonal mid-planes, windowing, outlines, PNG writing.

Pictures are drawn from share/ outputs only (de-identified data), carry no
text at all (no burned-in labels, no PNG text chunks): captions live in the
report, next to the picture.
"""
from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import Image
from scipy import ndimage

from ..dicomio import atomic_path

#: (centre, width) display windows, in HU for CT.
CT_WINDOWS = {"brain": (40.0, 80.0), "body": (40.0, 400.0)}
THUMB_SIZE = 160


def auto_window(values: np.ndarray) -> tuple[float, float]:
    """A window from the 1st–99th percentiles of finite non-background values."""
    v = values[np.isfinite(values)]
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


def canonical(img: nib.Nifti1Image) -> tuple[np.ndarray, np.ndarray]:
    """Volume (first 3 dims, first volume of 4-D) in RAS+ orientation, with voxel sizes."""
    img = nib.as_closest_canonical(img)
    data = np.asanyarray(img.dataobj)
    while data.ndim > 3:
        data = data[..., 0]
    if data.ndim == 2:
        data = data[..., None]
    return np.asarray(data, dtype=np.float32), np.asarray(img.header.get_zooms()[:3], dtype=float)


def mid_planes(vol: np.ndarray, zooms: np.ndarray, point: tuple[int, int, int] | None = None) -> list[np.ndarray]:
    """Axial, coronal, sagittal mid-planes of a RAS+ volume, as display images
    (rows top→bottom = anterior→posterior / superior→inferior), resized to
    square pixels."""
    i, j, k = point or tuple(s // 2 for s in vol.shape[:3])
    planes = [
        (vol[:, :, k].T[::-1, :], zooms[1], zooms[0]),   # axial: rows = A→P, cols = R... (radiological flip not applied)
        (vol[:, j, :].T[::-1, :], zooms[2], zooms[0]),   # coronal: rows = S→I
        (vol[i, :, :].T[::-1, :], zooms[2], zooms[1]),   # sagittal: rows = S→I, cols = P→A
    ]
    out = []
    for plane, row_mm, col_mm in planes:
        if row_mm > 0 and col_mm > 0 and abs(row_mm / col_mm - 1) > 0.05:
            plane = ndimage.zoom(plane, (row_mm / col_mm, 1), order=1)
        out.append(plane)
    return out


def to_rgb(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray[..., None], 3, axis=-1)


def outline(mask: np.ndarray) -> np.ndarray:
    """Boundary pixels of a 2-D mask."""
    m = mask.astype(bool)
    return m & ~ndimage.binary_erosion(m)


def overlay(rgb: np.ndarray, mask: np.ndarray, colour=(255, 64, 64)) -> np.ndarray:
    out = rgb.copy()
    out[outline(mask)] = colour
    return out


def fit(img: np.ndarray, size: int = THUMB_SIZE) -> np.ndarray:
    """Resize (keeping aspect) and pad to a size×size tile."""
    pil = Image.fromarray(img)
    pil.thumbnail((size, size), Image.Resampling.BILINEAR)
    tile = Image.new(pil.mode, (size, size))
    tile.paste(pil, ((size - pil.width) // 2, (size - pil.height) // 2))
    return np.asarray(tile)


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


def save_png(path: str | Path, image: np.ndarray) -> Path:
    """Write a PNG atomically, with no text chunks."""
    path = Path(path)
    with atomic_path(path) as tmp:
        Image.fromarray(image).save(tmp, format="PNG", optimize=False)
    return path


def crop_to(reference: np.ndarray, keep: np.ndarray, *arrays: np.ndarray, margin: float = 0.1) -> list[np.ndarray]:
    """Crop arrays to the bounding box of ``keep`` plus a margin (fraction of the box)."""
    idx = np.argwhere(keep)
    lo, hi = idx.min(axis=0), idx.max(axis=0) + 1
    pad = np.maximum(1, ((hi - lo) * margin).astype(int))
    lo = np.maximum(0, lo - pad)
    hi = np.minimum(reference.shape[:3], hi + pad)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    return [a[box] for a in arrays]


def volume_picture(nifti: str | Path, out_png: str | Path, *, windows: list[tuple[float, float]] | None = None,
                   mask: str | Path | None = None, mask_threshold: float | None = None) -> Path:
    """Three mid-planes per window (one row of tiles), with mask outlines: from a
    mask NIfTI, or from ``vol > mask_threshold`` (e.g. the CT body threshold)."""
    img = nib.load(str(nifti))
    vol, zooms = canonical(img)
    mvol = None
    point = None
    if mask is None and mask_threshold is not None:
        mvol = (vol > mask_threshold).astype(np.float32)
        point = tuple(s // 2 for s in vol.shape[:3])
    if mask is not None:
        mvol, _ = canonical(nib.load(str(mask)))
        if mvol.shape == vol.shape and mvol.any():
            point = tuple(int(c) for c in np.round(ndimage.center_of_mass(mvol > 0)))
        else:
            mvol = None
    if mvol is not None and mvol.any():
        vol, mvol = crop_to(vol, mvol > 0.5, vol, mvol)
        point = tuple(s // 2 for s in vol.shape[:3]) if mask is None else None
        if point is None:
            point = tuple(int(c) for c in np.round(ndimage.center_of_mass(mvol > 0.5)))
    windows = windows or [auto_window(vol)]
    tiles = []
    for centre, width in windows:
        planes = mid_planes(vol, zooms, point)
        mplanes = mid_planes(mvol, zooms, point) if mvol is not None else [None] * 3
        for plane, mplane in zip(planes, mplanes):
            rgb = to_rgb(apply_window(plane, centre, width))
            if mplane is not None:
                rgb = overlay(rgb, mplane > 0.5)
            tiles.append(fit(rgb))
    return save_png(out_png, montage(tiles))


def diffusion_picture(nifti: str | Path, bvals: np.ndarray, out_png: str | Path) -> Path:
    """b0 and mean-DWI mid-planes of a 4-D diffusion volume."""
    img = nib.as_closest_canonical(nib.load(str(nifti)))
    data = np.asarray(img.dataobj, dtype=np.float32)
    zooms = np.asarray(img.header.get_zooms()[:3], float)
    if data.ndim == 3:
        data = data[..., None]
    bvals = np.asarray(bvals, float)
    low = bvals <= 50 if bvals.size == data.shape[3] else np.zeros(data.shape[3], bool)
    b0 = data[..., low].mean(axis=3) if low.any() else data[..., 0]
    dwi = data[..., ~low].mean(axis=3) if (~low).any() else data[..., -1]
    tiles = []
    for vol in (b0, dwi):
        c, w = auto_window(vol)
        tiles += [fit(to_rgb(apply_window(p, c, w))) for p in mid_planes(vol, zooms)]
    return save_png(out_png, montage(tiles))
