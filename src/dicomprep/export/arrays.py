"""A series as an N-D array sorted by attributes (the database-style ``array(sortby=...)``).

:func:`series_array` reads every frame of a series — classic single-frame
files and enhanced multi-frame files alike (PS3.3 C.7.6.16, per-frame
functional groups) — and arranges the frames on a grid whose axes are sort
keys. The returned array has shape ``(*key_dims, Rows, Columns)``: the first
sort key is the outermost axis, a frame is indexed ``[row, column]`` as in
DICOM. Its transpose ``array.T`` is therefore ``[column, row, slice(, volume)]``
— the NIfTI voxel order of :mod:`dicomprep.geometry` — so that, for the default
sort, ``geometry.volume_affine`` of the first volume's frames maps ``array.T``
indices to RAS world coordinates (see :func:`array_affine`).

Sort keys (``sortby``) can be

* any DICOM keyword, looked up at the top level of the dataset, then inside
  the frame's Per-Frame Functional Groups item (5200,9230) and the Shared
  Functional Groups (5200,9229), at any nesting depth — so enhanced
  dimension indices such as ``DimensionIndexValues``, ``StackID``,
  ``InStackPositionNumber``, ``TemporalPositionIndex`` (FrameContentSequence
  (0020,9111)) or ``DiffusionBValue`` (MRDiffusionSequence (0018,9117)) work;
* a tag written ``"0043,1039"`` or ``"(0043,1039)"``;
* computed keys: ``slice_position`` (ImagePositionPatient · slice normal, mm),
  ``DiffusionBValue`` and ``DiffusionGradientOrientation`` with vendor
  private fallbacks (GE (0043,1039), (0019,10BB-10BD); Philips (2001,1003),
  (2005,10B0-10B2); Siemens (0019,100C), (0019,100E)), ``frame_index`` (the
  frame number inside its file) and ``file_order``.

Keys must form a complete grid: with ``k`` distinct values of key 1 and ``m``
of key 2 there must be exactly ``k × m`` frames, one per cell; otherwise a
:class:`RaggedSortError` names the counts (never silent padding).

The default sort (``sortby=None``) is geometric: slices by position along the
normal; when a position holds several frames, a further ``volume`` axis
(outermost) orders them in acquisition order like dcm2niix does — by
InstanceNumber (0020,0013), then TemporalPositionIndex, then frame order —
and :attr:`Dim.extra` lists what varies between volumes (b-value, gradient,
temporal position, echo, trigger time).
"""
from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from .. import geometry
from ..dicomio import read_dataset
from ..errors import DicomprepError, UnreadableDicom, is_environment_error

#: Attributes reported per volume (``Dim.extra``) when they vary between volumes.
VOLUME_ATTRIBUTES = ("DiffusionBValue", "DiffusionGradientOrientation", "TemporalPositionIdentifier",
                     "TemporalPositionIndex", "EchoNumbers", "EchoTime", "TriggerTime",
                     "AcquisitionNumber", "ImageType")
#: Relative tolerance under which two numeric key values (b-values, echo
#: times, …) are the same grid value; slice positions use
#: :data:`geometry.SLICE_GROUP_TOL_MM`.
NUMERIC_TOL = 1e-4
_TAG_RE = re.compile(r"^\(?\s*([0-9A-Fa-f]{4})\s*,\s*([0-9A-Fa-f]{4})\s*\)?$")


class RaggedSortError(DicomprepError):
    """The sort keys do not form a complete grid of frames."""


class PixelDataError(DicomprepError):
    """Pixel data of a file cannot be read or decoded (the message is the reason)."""


@dataclass
class Dim:
    """One axis of the sorted array: its label, the key value per index, and
    other attributes that vary along it (one value per index)."""

    label: str
    values: list
    extra: dict[str, list] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"label": self.label, "values": _jsonable(self.values),
                "extra": {k: _jsonable(v) for k, v in self.extra.items()}}


class FrameHeader:
    """The header of one frame: its file, its frame number, and attribute lookup
    through the top level and the frame's functional groups."""

    __slots__ = ("path", "frame", "dataset", "file_order", "geometry", "_cache")

    def __init__(self, path: Path, frame: int, dataset, file_order: int, geo):
        self.path = Path(path)
        self.frame = frame
        self.dataset = dataset
        self.file_order = file_order
        self.geometry: geometry.FrameGeometry | None = geo
        self._cache: dict[str, Any] = {}

    def __repr__(self) -> str:
        return f"FrameHeader({self.path.name!r}, frame={self.frame})"

    def get(self, key: str, default=None):
        """Value of a sort key for this frame (see the module docstring), or ``default``."""
        if key not in self._cache:
            self._cache[key] = _frame_value(self, key)
        value = self._cache[key]
        return default if value is None else value

    def __getitem__(self, key: str):
        return self.get(key)


# --- attribute lookup -----------------------------------------------------------

def _element_value(ds, key: str):
    """Top-level value of a keyword or ``gggg,eeee`` tag (None when absent/empty)."""
    m = _TAG_RE.match(key)
    if m:
        tag = (int(m.group(1), 16), int(m.group(2), 16))
        elem = ds.get(tag)
        if elem is None:
            return None
        value = elem.value
    else:
        if key not in ds:
            return None
        value = ds[key].value
    if value is None or value == "" or (isinstance(value, bytes) and not value):
        return None
    return value


def _nested_value(item, key: str, depth: int = 0):
    """Depth-first search for ``key`` inside a functional-group item (sequences nest)."""
    value = _element_value(item, key)
    if value is not None:
        return value
    if depth >= 3:
        return None
    for elem in item:
        if elem.VR == "SQ" and elem.value:
            for sub in elem.value:
                value = _nested_value(sub, key, depth + 1)
                if value is not None:
                    return value
    return None


def _functional_value(fh: FrameHeader, key: str):
    """A keyword's value for frame ``fh.frame``: per-frame group, then shared, then top level."""
    ds = fh.dataset
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame and fh.frame < len(per_frame):
        value = _nested_value(per_frame[fh.frame], key)
        if value is not None:
            return value
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared:
        value = _nested_value(shared[0], key)
        if value is not None:
            return value
    return _element_value(ds, key)


def _private_float(ds, tag: tuple[int, int], index: int = 0):
    elem = ds.get(tag)
    if elem is None or elem.value in (None, "", b""):
        return None
    value = elem.value
    try:
        if isinstance(value, bytes):
            text = value.decode("ascii", "ignore").strip("\x00 ")
            parts = [p for p in text.replace(",", "\\").split("\\") if p.strip()]
            return float(parts[index])
        if isinstance(value, (list, tuple)) or hasattr(value, "__getitem__") and not isinstance(value, str):
            return float(value[index])
        if isinstance(value, str):
            return float(value.split("\\")[index])
        return float(value) if index == 0 else None
    except (ValueError, IndexError, TypeError):
        return None


def diffusion_bvalue(fh: FrameHeader) -> float | None:
    """DiffusionBValue (0018,9087), else GE (0043,1039)[0] (minus the 1e9 flag
    GE adds), Philips (2001,1003), Siemens (0019,100C)."""
    value = _functional_value(fh, "DiffusionBValue")
    if value is not None:
        return float(value)
    ds = fh.dataset
    ge = _private_float(ds, (0x0043, 0x1039), 0)
    if ge is not None:
        return float(ge % 1_000_000_000)
    for tag in ((0x2001, 0x1003), (0x0019, 0x100C)):
        v = _private_float(ds, tag, 0)
        if v is not None:
            return v
    return None


def diffusion_gradient(fh: FrameHeader) -> tuple | None:
    """DiffusionGradientOrientation (0018,9089), else GE (0019,10BB-10BD),
    Philips (2005,10B0-10B2), Siemens (0019,100E); a 3-tuple in patient (LPS) axes."""
    value = _functional_value(fh, "DiffusionGradientOrientation")
    vec = geometry.as_floats(value, 3) if value is not None else None
    ds = fh.dataset
    if vec is None:
        for tags in (((0x0019, 0x10BB), (0x0019, 0x10BC), (0x0019, 0x10BD)),
                     ((0x2005, 0x10B0), (0x2005, 0x10B1), (0x2005, 0x10B2))):
            parts = [_private_float(ds, t) for t in tags]
            if all(p is not None for p in parts):
                vec = np.asarray(parts, dtype=float)
                break
    if vec is None:
        parts = [_private_float(ds, (0x0019, 0x100E), i) for i in range(3)]
        if all(p is not None for p in parts):
            vec = np.asarray(parts, dtype=float)
    return None if vec is None else tuple(float(v) for v in vec)


def _frame_value(fh: FrameHeader, key: str):
    if key == "slice_position":
        g = fh.geometry
        return None if g is None else float(geometry.positions_along_normal(g.position, g.normal)[0])
    if key == "frame_index":
        return fh.frame
    if key == "file_order":
        return fh.file_order
    if key == "DiffusionBValue":
        return diffusion_bvalue(fh)
    if key == "DiffusionGradientOrientation":
        return diffusion_gradient(fh)
    return _normalise(_functional_value(fh, key))


def _normalise(value):
    """Make a DICOM value hashable and comparable (numbers, strings, tuples)."""
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("latin-1", "ignore").strip("\x00 ")
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return tuple(_normalise(v) for v in value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value)
    try:  # DS / IS
        if type(value).__name__ in ("DSfloat", "DSdecimal"):
            return float(value)
        if type(value).__name__ == "IS":
            return int(value)
    except (TypeError, ValueError):
        pass
    if hasattr(value, "__iter__") and not isinstance(value, str):  # Sequence etc.
        return str(value)
    return str(value).strip()


def _jsonable(values):
    out = []
    for v in values:
        if isinstance(v, tuple):
            out.append(list(_jsonable(v)))
        elif isinstance(v, (np.integer,)):
            out.append(int(v))
        elif isinstance(v, (np.floating,)):
            out.append(float(v))
        else:
            out.append(v)
    return out


# --- reading frames -----------------------------------------------------------------

def read_frames(paths: Iterable[str | Path], *, decode: bool = True) -> tuple[list[FrameHeader], list[np.ndarray]]:
    """Read every frame of the given files: headers (pixel data removed) and
    stored pixel arrays (``[row, column]``), in file then frame order.

    Files without Pixel Data (7FE0,0010) — presentation states, private SOP
    classes — are skipped. Undecodable pixel data raises :class:`PixelDataError`.
    """
    headers: list[FrameHeader] = []
    pixels: list[np.ndarray] = []
    for order, path in enumerate(sorted(Path(p) for p in paths)):
        try:
            ds = read_dataset(path, stop_before_pixels=not decode)
        except UnreadableDicom as exc:
            raise PixelDataError(f"{path}: {exc}") from None
        if decode and "PixelData" not in ds and "FloatPixelData" not in ds:
            continue
        if not decode and not int(getattr(ds, "Rows", 0) or 0):
            continue
        n = int(getattr(ds, "NumberOfFrames", 1) or 1)
        if decode:
            frames = _decode(ds, path, n)
            for tag in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"):
                if tag in ds:
                    del ds[tag]
            pixels.extend(frames)
        geos = geometry.dataset_frame_geometries(ds)
        n_mosaic = mosaic_images(ds) if n == 1 else None
        if n_mosaic:
            tiles, geos = split_mosaic(ds, pixels.pop() if decode else None, geos[0], n_mosaic)
            pixels.extend(tiles)
            n = n_mosaic
        for i in range(n):
            headers.append(FrameHeader(path, i, ds, order, geos[i] if i < len(geos) else None))
    return headers, pixels


def mosaic_images(ds) -> int | None:
    """Number of slices tiled in a Siemens mosaic (ImageType (0008,0008) holds
    MOSAIC): NumberOfImagesInMosaic (0019,100A), else the CSA image header."""
    image_type = ds.get("ImageType") or []
    if isinstance(image_type, str):
        image_type = image_type.split("\\")
    if "MOSAIC" not in [str(v).upper() for v in image_type]:
        return None
    elem = ds.get((0x0019, 0x100A))
    if elem is not None and elem.value not in (None, b"", ""):
        value = elem.value
        try:
            n = int.from_bytes(value[:2], "little") if isinstance(value, bytes) else int(value)
            if n > 0:
                return n
        except (TypeError, ValueError):
            pass
    try:
        csareader = _csareader()
        n = csareader.get_n_mosaic(csareader.get_csa_header(ds, "image"))
        return int(n) if n else None
    except Exception:  # noqa: BLE001  (absent or unparsable CSA header)
        return None


def _csareader():
    """nibabel's Siemens CSA header reader (its package warns on import that it is experimental)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from nibabel.nicom import csareader  # noqa: PLC0415
    return csareader


def _mosaic_normal(ds, geo: geometry.FrameGeometry) -> np.ndarray:
    """Slice order direction of a mosaic: CSA SliceNormalVector, else row × column cosine."""
    try:
        csareader = _csareader()
        normal = csareader.get_slice_normal(csareader.get_csa_header(ds, "image"))
        if normal is not None and np.linalg.norm(normal) > 0:
            return np.asarray(normal, dtype=float) / np.linalg.norm(normal)
    except Exception:  # noqa: BLE001
        pass
    return geo.normal


def split_mosaic(ds, frame: np.ndarray | None, geo: geometry.FrameGeometry | None, n: int):
    """Cut a Siemens mosaic into its ``n`` tiles (row-major, ceil(sqrt(n)) per row)
    with a geometry per tile: ImagePositionPatient refers to the whole mosaic,
    so the first tile's centre-of-first-voxel is shifted by half the size
    difference, and tile k lies k × SpacingBetweenSlices (0018,0088) (else
    SliceThickness) along the slice normal (as nibabel's MosaicWrapper and dcm2niix)."""
    per_row = int(math.ceil(math.sqrt(n)))
    rows, cols = int(ds.Rows), int(ds.Columns)
    tr, tc = rows // per_row, cols // per_row
    tiles = []
    if frame is not None:
        for k in range(n):
            r, c = divmod(k, per_row)
            tiles.append(frame[r * tr:(r + 1) * tr, c * tc:(c + 1) * tc])
    if geo is None:
        return tiles, [None] * n
    normal = _mosaic_normal(ds, geo)
    spacing = float(ds.get("SpacingBetweenSlices") or ds.get("SliceThickness") or 1.0)
    first = (geo.position + geo.row_cosine * geo.column_spacing * (cols - tc) / 2
             + geo.column_cosine * geo.row_spacing * (rows - tr) / 2)
    geos = [geometry.FrameGeometry(first + normal * spacing * k, geo.row_cosine, geo.column_cosine,
                                   geo.row_spacing, geo.column_spacing, tr, tc) for k in range(n)]
    return tiles, geos


#: Uncompressed little-endian transfer syntaxes (PS3.5 A.1, A.2) read with numpy directly.
_NATIVE_LE = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1"}


def _native_pixels(ds, ts, n: int) -> np.ndarray | None:
    """Fast path for uncompressed little-endian grey-scale pixels: a view of
    Pixel Data (7FE0,0010) via numpy, bypassing pydicom's decoder machinery.
    Returns None (use pydicom) for anything it does not handle exactly:
    colour, 1-bit, signed data with unused high bits, unsigned data with set
    unused high bits, short data."""
    try:
        if str(ts) not in _NATIVE_LE or int(ds.get("SamplesPerPixel", 1) or 1) != 1:
            return None
        bits = int(ds.BitsAllocated)
        stored = int(ds.get("BitsStored", bits) or bits)
        signed = int(ds.get("PixelRepresentation", 0) or 0) == 1
        rows, cols = int(ds.Rows), int(ds.Columns)
        data = ds.PixelData
    except (AttributeError, KeyError, TypeError, ValueError):
        return None
    if bits not in (8, 16, 32) or not isinstance(data, (bytes, bytearray)) or (signed and stored != bits):
        return None
    dtype = np.dtype(f"<{'i' if signed else 'u'}{bits // 8}")
    count = n * rows * cols
    if len(data) < count * dtype.itemsize:
        return None
    arr = np.frombuffer(data, dtype=dtype, count=count).astype(dtype.newbyteorder("="), copy=True)
    if not signed and stored < bits and arr.size and int(arr.max()) >= (1 << stored):
        return None
    return arr.reshape((n, rows, cols) if n > 1 else (rows, cols))


def _decode(ds, path: Path, n: int) -> list[np.ndarray]:
    """Decode pixel data (pydicom + pylibjpeg/gdcm handlers) into per-frame arrays."""
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    native = _native_pixels(ds, ts, n)
    if native is not None:
        return [native] if n == 1 else list(native)
    try:
        arr = ds.pixel_array
    except Exception as exc:  # unsupported/corrupt compression, truncated frames
        if is_environment_error(exc):
            raise
        raise PixelDataError(
            f"{path}: pixel data cannot be decoded (transfer syntax {ts}): {type(exc).__name__}: {exc}"
        ) from None
    if int(getattr(ds, "SamplesPerPixel", 1) or 1) > 1:
        raise PixelDataError(f"{path}: colour images (SamplesPerPixel > 1) are not exported as arrays")
    if n == 1 and arr.ndim == 2:
        return [arr]
    if arr.ndim != 3 or arr.shape[0] != n:
        raise PixelDataError(f"{path}: decoded pixel data has shape {arr.shape}, expected {n} frames")
    return list(arr)


# --- grouping values ------------------------------------------------------------------

def _sort_token(value):
    """Orderable token: None first, numbers, then strings, then tuples."""
    if value is None:
        return (0, 0)
    if isinstance(value, (int, float)):
        return (1, value)
    if isinstance(value, tuple):
        return (3, tuple(_sort_token(v) for v in value))
    return (2, str(value))


def _same(a, b, tol_abs: float | None) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        tol = tol_abs if tol_abs is not None else NUMERIC_TOL * max(1.0, abs(a), abs(b))
        return abs(a - b) <= tol
    if isinstance(a, tuple) and isinstance(b, tuple) and len(a) == len(b):
        return all(_same(x, y, tol_abs) for x, y in zip(a, b))
    return a == b


def group_values(values: Sequence, tol_abs: float | None = None) -> tuple[np.ndarray, list]:
    """Cluster key values (numbers within tolerance) → (index per value, sorted distinct values).

    Numbers closer than ``tol_abs`` (or a relative 1e-4) are one value, so
    float noise in positions or b-values does not split a grid axis.
    """
    order = sorted(range(len(values)), key=lambda i: _sort_token(values[i]))
    labels = np.empty(len(values), dtype=int)
    distinct: list = []
    for i in order:
        v = values[i]
        if distinct and _same(distinct[-1], v, tol_abs):
            labels[i] = len(distinct) - 1
        else:
            distinct.append(v)
            labels[i] = len(distinct) - 1
    return labels, distinct


# --- sorting -----------------------------------------------------------------------

def sort_grid(headers: Sequence[FrameHeader], sortby: Sequence[str]) -> tuple[np.ndarray, list[Dim]]:
    """Place frames on the grid of ``sortby`` keys: an int array (shape = one axis
    per key) of frame indices, and the axes. Raises :class:`RaggedSortError`
    unless every cell holds exactly one frame."""
    if not sortby:
        raise DicomprepError("sortby needs at least one attribute keyword")
    labels, dims = [], []
    for key in sortby:
        vals = [h.get(key) for h in headers]
        tol = geometry.SLICE_GROUP_TOL_MM if key == "slice_position" else None
        lab, distinct = group_values(vals, tol)
        labels.append(lab)
        dims.append(Dim(key, distinct))
    shape = tuple(len(d.values) for d in dims)
    grid = np.full(shape, -1, dtype=np.int64)
    counts = np.zeros(shape, dtype=np.int64)
    for f, idx in enumerate(zip(*labels)):
        grid[idx] = f
        counts[idx] += 1
    n_cells = int(np.prod(shape))
    empty, multi = int(np.sum(counts == 0)), int(np.sum(counts > 1))
    if empty or multi:
        sizes = " x ".join(f"{len(d.values)} {d.label}" for d in dims)
        raise RaggedSortError(
            f"sort keys {list(sortby)} do not form a complete grid: {sizes} = {n_cells} cells for "
            f"{len(headers)} frames ({empty} cell(s) empty, {multi} cell(s) with more than one frame, "
            f"{int(counts.max())} frames in the fullest). Add a key that separates the frames "
            "or choose keys that vary independently.")
    return grid, dims


def default_grid(headers: Sequence[FrameHeader]) -> tuple[np.ndarray, list[Dim]]:
    """Geometric sort: ``slice`` by position along the normal; a leading
    ``volume`` axis in acquisition order when positions repeat (dcm2niix order:
    InstanceNumber, TemporalPositionIndex, frame order)."""
    missing = [h for h in headers if h.geometry is None]
    if missing and len(missing) < len(headers):
        numbers = sorted({str(h.get("InstanceNumber")) for h in missing if h.get("InstanceNumber") is not None})
        which = f" (InstanceNumber {', '.join(numbers[:5])}{' ...' if len(numbers) > 5 else ''})" if numbers else ""
        raise RaggedSortError(
            f"{len(missing)} of {len(headers)} frames have no slice geometry (ImagePositionPatient (0020,0032), "
            f"ImageOrientationPatient (0020,0037) or PixelSpacing (0028,0030)){which}: they cannot be placed "
            "in the volume")
    if missing:
        # No geometry (e.g. secondary capture): frames in instance order, one axis.
        order = sorted(range(len(headers)), key=lambda i: acquisition_key(headers[i]))
        return np.asarray(order, dtype=np.int64), [Dim("frame", list(range(len(order))))]
    normals = np.array([h.geometry.normal for h in headers])
    if not np.all(geometry.parallel(normals, normals[0])):
        n_orient = len(group_values([tuple(np.round(n, 3)) for n in normals])[1])
        raise RaggedSortError(
            f"the {len(headers)} frames have {n_orient} different slice orientations "
            "(ImageOrientationPatient (0020,0037)), e.g. a localizer: they do not stack into one "
            "volume — export the series in 2d mode or sort by explicit keys.")
    pos = [h.get("slice_position") for h in headers]
    slab, slices = group_values(pos, geometry.SLICE_GROUP_TOL_MM)
    n_slices = len(slices)
    per_slice: list[list[int]] = [[] for _ in range(n_slices)]
    for f, s in enumerate(slab):
        per_slice[s].append(f)
    counts = {len(v) for v in per_slice}
    if len(counts) != 1:
        detail = ", ".join(f"{c} frames at {sum(len(v) == c for v in per_slice)} position(s)"
                           for c in sorted(counts))
        raise RaggedSortError(
            f"the {len(headers)} frames do not form complete volumes: {n_slices} slice positions with "
            f"unequal frame counts ({detail}); missing or extra frames — export the series in 2d "
            "mode or sort by explicit keys.")
    n_vol = counts.pop()
    for v in per_slice:
        v.sort(key=lambda i: acquisition_key(headers[i]))
    grid = np.asarray(per_slice, dtype=np.int64).T      # [volume, slice]
    slice_dim = Dim("slice_position", slices)
    if n_vol == 1:
        return grid[0], [slice_dim]
    vol_dim = Dim("volume", list(range(n_vol)))
    for key in VOLUME_ATTRIBUTES:
        vals = [headers[int(f)].get(key) for f in grid[:, 0]]
        if any(v is not None for v in vals) and len(group_values(vals)[1]) > 1:
            vol_dim.extra[key] = vals
        elif key in ("DiffusionBValue", "DiffusionGradientOrientation") and any(
                isinstance(b, float) and b > 0 for b in (headers[int(f)].get("DiffusionBValue") for f in grid[:, 0])):
            vol_dim.extra[key] = vals
    return grid, [vol_dim, slice_dim]


def acquisition_key(h: FrameHeader):
    """Acquisition order of a frame: InstanceNumber, TemporalPositionIndex,
    file order, frame number (the order dcm2niix stacks volumes in)."""
    inst = h.get("InstanceNumber")
    tpi = h.get("TemporalPositionIndex")
    return (_sort_token(inst if isinstance(inst, (int, float)) else None),
            _sort_token(tpi if isinstance(tpi, (int, float)) else None), h.file_order, h.frame)


# --- the public entry point -----------------------------------------------------

def series_array(paths: Iterable[str | Path], sortby: list[str] | None = None, *,
                 values: str = "raw") -> tuple[np.ndarray, np.ndarray, list[Dim]]:
    """Read a series and return ``(array, headers_grid, dims)``.

    ``array`` has shape ``(*[len(d.values) for d in dims], Rows, Columns)``;
    ``headers_grid`` is an object array of :class:`FrameHeader` with the
    leading shape; ``dims`` describes the leading axes (label, value per index,
    other attributes varying along the axis). ``values="rescaled"`` applies
    RescaleSlope/Intercept (0028,1053)/(0028,1052) per frame (see
    :func:`apply_rescale`). ``array.T`` is ``[column, row, slice(, volume)]``.

    Raises :class:`RaggedSortError` when the keys do not form a complete grid,
    :class:`PixelDataError` when pixel data cannot be decoded, and
    :class:`DicomprepError` when the frames differ in matrix size.
    """
    paths = list(paths)
    headers, pixels = read_frames(paths)
    if not headers:
        raise DicomprepError(f"none of the {len(paths)} file(s) holds pixel data (7FE0,0010)")
    shapes = {p.shape for p in pixels}
    if len(shapes) > 1:
        raise DicomprepError(
            f"frames differ in matrix size ({', '.join(str(s) for s in sorted(shapes))}); "
            "sort keys cannot stack them — export the series in 2d mode.")
    if sortby:
        grid, dims = sort_grid(headers, sortby)
    else:
        grid, dims = default_grid(headers)
    flat = grid.ravel()
    array = np.stack([pixels[int(i)] for i in flat]).reshape(grid.shape + pixels[0].shape)
    hgrid = np.empty(grid.shape, dtype=object)
    for idx in np.ndindex(grid.shape):
        hgrid[idx] = headers[int(grid[idx])]
    if values == "rescaled":
        array = apply_rescale(array, hgrid)
    elif values != "raw":
        raise DicomprepError(f"values={values!r}: choose 'raw' or 'rescaled'")
    return array, hgrid, dims


def acquisition_frames(paths: Iterable[str | Path], *, values: str = "raw"
                       ) -> tuple[np.ndarray, np.ndarray, list[Dim]]:
    """All frames in acquisition order (InstanceNumber, TemporalPositionIndex,
    file, frame) as ``(frame, row, column)`` — the 2-D export, no geometry needed."""
    paths = list(paths)
    headers, pixels = read_frames(paths)
    if not headers:
        raise DicomprepError(f"none of the {len(paths)} file(s) holds pixel data (7FE0,0010)")
    if len({p.shape for p in pixels}) > 1:
        raise DicomprepError("frames differ in matrix size (Rows/Columns); they cannot share one array")
    order = sorted(range(len(headers)), key=lambda i: acquisition_key(headers[i]))
    array = np.stack([pixels[i] for i in order])
    hgrid = np.empty(len(order), dtype=object)
    for k, i in enumerate(order):
        hgrid[k] = headers[i]
    if values == "rescaled":
        array = apply_rescale(array, hgrid)
    return array, hgrid, [Dim("frame", [h.get("InstanceNumber") for h in hgrid])]


def apply_rescale(array: np.ndarray, hgrid: np.ndarray) -> np.ndarray:
    """Modality LUT per frame (RescaleSlope (0028,1053), RescaleIntercept (0028,1052),
    also inside PixelValueTransformationSequence (0028,9145)).

    Identity keeps the stored dtype; integer slope and intercept whose result
    fits int16 (CT Hounsfield units) gives int16; anything else float32.
    """
    flat_h = hgrid.ravel()
    slopes = np.array([float(h.get("RescaleSlope", 1.0) or 1.0) for h in flat_h])
    inters = np.array([float(h.get("RescaleIntercept", 0.0) or 0.0) for h in flat_h])
    if np.all(slopes == 1) and np.all(inters == 0):
        return array
    lead = hgrid.shape
    frames = array.reshape((-1,) + array.shape[len(lead):])
    integral = np.all(slopes == np.round(slopes)) and np.all(inters == np.round(inters))
    if integral and np.issubdtype(array.dtype, np.integer):
        amin, amax = float(array.min()), float(array.max())
        ends = np.concatenate([amin * slopes + inters, amax * slopes + inters])
        if ends.min() >= -32768 and ends.max() <= 32767:
            out = np.empty(frames.shape, dtype=np.int16)
            for i, (s, b) in enumerate(zip(slopes, inters)):
                out[i] = frames[i].astype(np.int32) * int(s) + int(b)
            return out.reshape(array.shape)
    out = np.empty(frames.shape, dtype=np.float32)
    for i, (s, b) in enumerate(zip(slopes, inters)):
        out[i] = geometry.rescale(frames[i], s, b)
    return out.reshape(array.shape)


def array_affine(hgrid: np.ndarray, dims: Sequence[Dim], ras: bool = True) -> np.ndarray | None:
    """RAS affine of ``array.T`` (``[column, row, slice, ...]``) when the last
    leading axis is ``slice_position``: :func:`geometry.volume_affine` of the
    first volume's frames. None when the frames carry no geometry."""
    if not dims or dims[-1].label != "slice_position":
        return None
    first = hgrid.reshape(-1, hgrid.shape[-1])[0]
    frames = [h.geometry for h in first]
    if any(f is None for f in frames):
        return None
    return geometry.volume_affine(frames, ras=ras)


def dims_to_json(dims: Sequence[Dim]) -> list[dict]:
    """Dimension labels and values as JSON-serialisable dicts (pixel axes appended)."""
    return [d.as_dict() for d in dims] + [{"label": "row", "values": None, "extra": {}},
                                          {"label": "column", "values": None, "extra": {}}]
