"""DICOM Segmentation (SEG) objects decoded to per-segment masks on the source grid.

A SEG (PS3.3 A.51, Segmentation IOD; C.8.20 Segmentation Image Module) stores
one 2-D frame per (segment, source slice) — or, for the Label Map
Segmentation Storage SOP class (1.2.840.10008.5.1.4.1.1.66.7), one frame per
slice whose pixel values are segment numbers. Each frame names the source image
it was derived from (Derivation Image Sequence (0008,9124) > Source Image
Sequence (0008,2112) > Referenced SOP Instance UID (0008,1155) / Referenced
Frame Number (0008,1160)) and carries its own position (Plane Position
Sequence (0020,9113) > ImagePositionPatient).

Decoding uses highdicom (``Segmentation.get_stored_frame``: decompression, 1-bit
unpacking), placement uses :mod:`dicomprep.geometry`:

1. the source series' grid: instances sorted by ImagePositionPatient · normal,
   shape ``[columns, rows, slices]``, :func:`geometry.volume_affine` (RAS);
2. each SEG frame goes to the source slice whose SOP Instance UID (and frame
   number) it references; where no UID matches (a re-exported or re-identified
   source), to the slice at the same position along the normal within
   ``seg.position_tolerance_mm``; frames placed by neither are counted and
   reported, never dropped silently.

Public API: :func:`decode_segmentation`, :func:`source_grid`; merging and
writing the masks are in :mod:`dicomprep.convert.seg_output`
(:func:`~dicomprep.convert.seg_output.write_masks`,
:func:`~dicomprep.convert.seg_output.merge_masks`,
:func:`~dicomprep.convert.seg_output.write_seg_nrrd`), the rule workflow
adapter is :func:`dicomprep.stages.decode_seg`.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from .. import geometry
from ..dicomio import read_dataset
from ..errors import DicomprepError
from ..index_read import SEG_CLASSES

#: Segmentation Storage and Label Map Segmentation Storage (PS3.4 B.5): the index's
#: SOP class table holds both (index_read.SEG_CLASSES).
SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
LABELMAP_SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.7"
SEG_SOP_CLASSES = SEG_CLASSES
#: Deflated Image Frame Compression (PS3.5 A.4.11), unknown to pydicom 3.0.
DEFLATED_FRAMES_TS = "1.2.840.10008.1.2.8.1"
#: In-plane offsets (in pixels) closer than this to an integer count as aligned.
PIXEL_TOL = 0.01


class SegError(DicomprepError):
    """A SEG cannot be decoded or placed; the message is the reason row."""


@dataclass
class SegOptions:
    """Decoding options (config section ``seg``)."""

    fractional: str = "threshold"          # "threshold" or "float"
    threshold: float = 0.5                 # fraction of MaximumFractionalValue (0062,000E)
    position_tolerance_mm: float = 0.1     # IPP match along the slice normal

    @classmethod
    def from_config(cls, seg_cfg: dict | None) -> "SegOptions":
        cfg = seg_cfg or {}
        return cls(fractional=str(cfg.get("fractional", "threshold")),
                   threshold=float(cfg.get("threshold", 0.5)),
                   position_tolerance_mm=float(cfg.get("position_tolerance_mm", 0.1)))


@dataclass
class SegmentInfo:
    """One item of the Segment Sequence (0062,0002)."""

    number: int                            # SegmentNumber (0062,0004)
    label: str                             # SegmentLabel (0062,0005)
    description: str = ""                  # SegmentDescription (0062,0006)
    algorithm_type: str = ""               # SegmentAlgorithmType (0062,0008)
    category: dict = field(default_factory=dict)   # SegmentedPropertyCategoryCodeSequence (0062,0003)
    type: dict = field(default_factory=dict)       # SegmentedPropertyTypeCodeSequence (0062,000F)
    type_modifiers: list = field(default_factory=list)  # SegmentedPropertyTypeModifierCodeSequence (0062,0011)
    anatomic_region: dict = field(default_factory=dict)  # AnatomicRegionSequence (0008,2218)
    tracking_id: str = ""                  # TrackingID (0062,0020)
    cielab: list | None = None             # RecommendedDisplayCIELabValue (0062,000D)
    rgb: list | None = None                # the same colour as sRGB 0-255

    def as_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items()}

    def share_dict(self) -> dict:
        """The fields safe for share/: coded concepts, label and colour, without
        the free-text SegmentDescription and TrackingID (they can name people or dates)."""
        return {k: v for k, v in self.__dict__.items() if k not in ("description", "tracking_id")}


@dataclass
class SourceGrid:
    """The source series as a volume grid ``[column, row, slice]``."""

    frames: list                           # geometry.FrameGeometry, sorted by IPP·n
    keys: list                             # (SOPInstanceUID, frame number) per slice
    paths: list                            # file of each slice
    series_uid: str
    affine: np.ndarray                     # RAS
    normal: np.ndarray
    distances: np.ndarray                  # IPP·n per slice (mm)
    report: geometry.StackReport

    @property
    def shape(self) -> tuple[int, int, int]:
        f = self.frames[0]
        return (f.columns, f.rows, len(self.frames))

    def voxel_volume_ml(self) -> float:
        f = self.frames[0]
        step = self.report.spacing if np.isfinite(self.report.spacing) else 1.0
        return float(f.row_spacing * f.column_spacing * step / 1000.0)


@dataclass
class SegmentMask:
    """One decoded segment placed on the source grid."""

    segment: SegmentInfo
    data: np.ndarray                       # [column, row, slice]; uint8 0/1, or float32 fractions
    affine: np.ndarray                     # RAS, the source grid's
    voxel_ml: float
    seg_path: str = ""
    series_description: str = ""           # SeriesDescription (0008,103E) of the SEG: exported name
    segmentation_type: str = ""            # SegmentationType (0062,0001)
    sop_class_uid: str = ""
    source_series_uid: str = ""
    placement: str = ""                    # uid / position / uid+position
    n_frames_unplaced: int = 0
    notes: list = field(default_factory=list)
    merged_from: list = field(default_factory=list)
    file: str = ""                         # file name once written (write_masks)

    @property
    def n_voxels(self) -> int:
        return int(np.count_nonzero(self.data))

    @property
    def volume_ml(self) -> float:
        if self.data.dtype.kind == "f":
            return float(self.data.sum() * self.voxel_ml)
        return float(self.n_voxels * self.voxel_ml)


# --- reading ------------------------------------------------------------------

def _code(item) -> dict:
    """A Code Sequence item (PS3.3 8.8) as {value, scheme, meaning}."""
    if item is None:
        return {}
    value = getattr(item, "CodeValue", None) or getattr(item, "LongCodeValue", None) or getattr(item, "URNCodeValue", "")
    return {"value": str(value or ""), "scheme": str(getattr(item, "CodingSchemeDesignator", "") or ""),
            "meaning": str(getattr(item, "CodeMeaning", "") or "")}


def _first(ds, name: str):
    seq = getattr(ds, name, None)
    return seq[0] if seq else None


def cielab_to_rgb(cielab: Sequence[int]) -> list[int] | None:
    """RecommendedDisplayCIELabValue (0062,000D, PCS-scaled L*a*b*) as sRGB 0-255 (highdicom)."""
    try:
        import highdicom as hd

        rgb = hd.color.CIELabColor.from_dicom_value([int(v) for v in cielab]).to_rgb()
        return [int(v) for v in rgb]
    except Exception:
        return None


def segment_infos(ds) -> list[SegmentInfo]:
    """The Segment Sequence (0062,0002) as :class:`SegmentInfo` items."""
    out = []
    for item in getattr(ds, "SegmentSequence", []) or []:
        lab = getattr(item, "RecommendedDisplayCIELabValue", None)
        lab = [int(v) for v in lab] if lab is not None else None
        out.append(SegmentInfo(
            number=int(item.SegmentNumber),
            label=str(getattr(item, "SegmentLabel", "") or f"segment{int(item.SegmentNumber)}"),
            description=str(getattr(item, "SegmentDescription", "") or ""),
            algorithm_type=str(getattr(item, "SegmentAlgorithmType", "") or ""),
            category=_code(_first(item, "SegmentedPropertyCategoryCodeSequence")),
            type=_code(_first(item, "SegmentedPropertyTypeCodeSequence")),
            type_modifiers=[_code(m) for m in (getattr(_first(item, "SegmentedPropertyTypeCodeSequence"),
                                                       "SegmentedPropertyTypeModifierCodeSequence", None) or [])],
            anatomic_region=_code(_first(item, "AnatomicRegionSequence")),
            tracking_id=str(getattr(item, "TrackingID", "") or ""),
            cielab=lab, rgb=cielab_to_rgb(lab) if lab else None,
        ))
    return out


def _rle_1bit_frame(raw: bytes, rows: int, cols: int) -> bytes:
    """One RLE Lossless frame (PS3.5 Annex G) of 1-bit pixels: a single 8-bit
    segment holding the packed bytes (pydicom 3.0 refuses 1-bit RLE)."""
    from pydicom.pixels.decoders.rle import _rle_decode_frame

    nbytes = (rows * cols + 7) // 8
    return bytes(_rle_decode_frame(raw, 1, nbytes, 1, 8))


def _to_native(ds, decode_frame) -> None:
    """Rewrite encapsulated frames as native Explicit VR Little Endian in place,
    each frame decoded by ``decode_frame(raw) -> bytes``."""
    from pydicom.encaps import generate_frames
    from pydicom.pixels import pack_bits
    from pydicom.uid import ExplicitVRLittleEndian

    n = int(getattr(ds, "NumberOfFrames", 1) or 1)
    frames = [decode_frame(raw) for raw in generate_frames(ds.PixelData, number_of_frames=n)]
    rows, cols = int(ds.Rows), int(ds.Columns)
    if int(ds.BitsAllocated) == 1:
        bits = [np.unpackbits(np.frombuffer(f, np.uint8), bitorder="little")[: rows * cols] for f in frames]
        data = pack_bits(np.concatenate(bits))
    else:
        data = b"".join(frames)
    ds.PixelData = data
    ds["PixelData"].VR = "OB" if int(ds.BitsAllocated) <= 8 else "OW"
    ds["PixelData"].is_undefined_length = False
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian


def _inflate(raw: bytes) -> bytes:
    """Deflated Image Frame Compression (PS3.5 A.4.11): raw deflate (RFC 1951)."""
    try:
        return zlib.decompress(raw, -15)
    except zlib.error:
        return zlib.decompress(raw)


def _to_little_endian(ds) -> None:
    """Big-endian SEG (Explicit VR Big Endian, retired) re-encoded little endian,
    because highdicom accepts only little-endian datasets."""
    from pydicom.pixels import pack_bits
    from pydicom.uid import ExplicitVRLittleEndian

    arr = ds.pixel_array
    if int(ds.BitsAllocated) == 1:
        data = pack_bits(np.asarray(arr, np.uint8).ravel())
    else:
        data = np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<")).tobytes()
    ds.PixelData = data
    ds["PixelData"].VR = "OB" if int(ds.BitsAllocated) <= 8 else "OW"
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian


def read_segmentation(path: str | Path):
    """Read a SEG file (gzip-wrapped or not) as a ``highdicom.seg.Segmentation``.

    Handles what highdicom 0.28 / pydicom 3.0 reject: Deflated Image Frame
    Compression (1.2.840.10008.1.2.8.1), 1-bit RLE Lossless (1.2.840.10008.1.2.5)
    and big-endian transfer syntaxes.
    """
    import highdicom as hd

    ds = read_dataset(path)
    sop = str(getattr(ds, "SOPClassUID", "") or ds.file_meta.get("MediaStorageSOPClassUID", ""))
    if sop not in SEG_SOP_CLASSES:
        raise SegError(f"{path}: SOP class {sop} is not a Segmentation (PS3.4 B.5)")
    ts = str(ds.file_meta.get("TransferSyntaxUID", ""))
    try:
        if ts == DEFLATED_FRAMES_TS:
            _to_native(ds, _inflate)
        elif ts == "1.2.840.10008.1.2.5" and int(getattr(ds, "BitsAllocated", 0) or 0) == 1:
            rows, cols = int(ds.Rows), int(ds.Columns)
            _to_native(ds, lambda raw: _rle_1bit_frame(raw, rows, cols))
        elif ts == "1.2.840.10008.1.2.2":
            _to_little_endian(ds)
        return hd.seg.Segmentation.from_dataset(ds, copy=False)
    except SegError:
        raise
    except Exception as exc:
        raise SegError(f"{path}: highdicom cannot read this SEG ({type(exc).__name__}: {exc})") from None


# --- source grid ----------------------------------------------------------------

_GRID_TAGS = ["SOPInstanceUID", "SeriesInstanceUID", "ImagePositionPatient", "ImageOrientationPatient",
              "PixelSpacing", "Rows", "Columns", "NumberOfFrames", "InstanceNumber",
              "PerFrameFunctionalGroupsSequence", "SharedFunctionalGroupsSequence", "SpacingBetweenSlices"]


def source_grid(paths: Iterable[str | Path]) -> SourceGrid:
    """Build the grid of one source series from its files (headers only).

    Slices (single-frame instances, or the frames of enhanced/multi-frame
    instances) are sorted by ImagePositionPatient · normal (geometry.sort_stack);
    frames without geometry are left out. All slices must be one stack
    (geometry.same_stack: matrix and ImageOrientationPatient; PixelSpacing is
    not compared).
    """
    frames, keys, files, series = [], [], [], set()
    for path in paths:
        ds = read_dataset(path, stop_before_pixels=True)
        series.add(str(getattr(ds, "SeriesInstanceUID", "")))
        sop = str(getattr(ds, "SOPInstanceUID", ""))
        for i, geo in enumerate(geometry.dataset_frame_geometries(ds), start=1):
            if geo is not None:
                frames.append(geo)
                keys.append((sop, i))
                files.append(str(path))
    if not frames:
        raise SegError("the source series has no image with ImagePositionPatient/ImageOrientationPatient/PixelSpacing")
    first = frames[0]
    mismatch = [k for k, f in zip(keys, frames) if not geometry.same_stack(f, first, spacing_tol_mm=None)]
    if mismatch:
        raise SegError(f"the source series mixes matrix sizes or orientations ({len(mismatch)} slices differ "
                       "from the first); cannot build one grid")
    normal = first.normal
    stack = geometry.sort_stack(frames)
    frames = stack.frames
    keys = [keys[i] for i in stack.order]
    files = [files[i] for i in stack.order]
    return SourceGrid(frames=frames, keys=keys, paths=files, series_uid=";".join(sorted(series)),
                      affine=geometry.volume_affine(frames, ras=True), normal=normal,
                      distances=geometry.positions_along_normal(np.array([f.position for f in frames]), normal),
                      report=stack.report)


# --- placement -------------------------------------------------------------------

def _frame_references(item) -> list[tuple[str, int | None]]:
    """(ReferencedSOPInstanceUID, ReferencedFrameNumber) of one per-frame item's
    Derivation Image Sequence (0008,9124) > Source Image Sequence (0008,2112)."""
    refs = []
    for der in getattr(item, "DerivationImageSequence", None) or []:
        for src in getattr(der, "SourceImageSequence", None) or []:
            uid = str(getattr(src, "ReferencedSOPInstanceUID", "") or "")
            fn = getattr(src, "ReferencedFrameNumber", None)
            if fn is not None and not isinstance(fn, int):
                fn = list(fn)[0] if len(fn) else None
            refs.append((uid, int(fn) if fn not in (None, "") else None))
    return refs


def _frame_segment_number(item, shared) -> int | None:
    """ReferencedSegmentNumber (0062,000B) of Segment Identification Sequence (0062,000A)."""
    for owner in (item, shared):
        ident = _first(owner, "SegmentIdentificationSequence") if owner is not None else None
        if ident is not None:
            return int(ident.ReferencedSegmentNumber)
    return None


def _in_plane_offset(seg_geo, src_geo) -> tuple[int, int] | None:
    """(column, row) offset in source pixels of a SEG frame's first pixel, when the
    frame has the source's orientation and pixel spacing; None otherwise."""
    if seg_geo is None:
        return (0, 0)
    if not (geometry.same_orientation(seg_geo, src_geo, geometry.ORIENTATION_TOL)
            and geometry.same_spacing(seg_geo, src_geo, tol_mm=1e-6,      # 1e-6 mm: float slack
                                      rel_tol=geometry.SPACING_REL_TOL)):
        return None
    delta = seg_geo.position - src_geo.position
    col = float(np.dot(delta, src_geo.row_cosine)) / src_geo.column_spacing
    row = float(np.dot(delta, src_geo.column_cosine)) / src_geo.row_spacing
    if abs(col - round(col)) > PIXEL_TOL or abs(row - round(row)) > PIXEL_TOL:
        return None
    return int(round(col)), int(round(row))


class _Placer:
    """Finds the source slice of a SEG frame: by UID, else by position."""

    def __init__(self, grid: SourceGrid, tolerance_mm: float):
        self.grid = grid
        self.tol = tolerance_mm
        self.by_uid: dict[tuple[str, int], int] = {k: i for i, k in enumerate(grid.keys)}
        self.single = {}
        for i, (uid, _) in enumerate(grid.keys):
            self.single.setdefault(uid, []).append(i)

    def by_reference(self, refs) -> int | None:
        for uid, fn in refs:
            if fn is not None and (uid, fn) in self.by_uid:
                return self.by_uid[(uid, fn)]
            hits = self.single.get(uid)
            if hits and len(hits) == 1:
                return hits[0]
        return None

    def by_position(self, seg_geo) -> int | None:
        if seg_geo is None:
            return None
        if not geometry.parallel(seg_geo.normal, self.grid.normal):
            return None
        d = float(np.dot(seg_geo.position, self.grid.normal))
        k = int(np.argmin(np.abs(self.grid.distances - d)))
        return k if abs(self.grid.distances[k] - d) <= self.tol else None


@dataclass
class _Plan:
    """Where each SEG frame goes: (frame index, slice k, column offset, row offset)
    grouped by segment number (``None``: a label-map frame holding all segments)."""

    by_segment: dict
    placement: str
    unplaced: list
    notes: list = field(default_factory=list)


def _placement_plan(seg, grid: SourceGrid, options: SegOptions, labelmap: bool) -> _Plan:
    per_frame = getattr(seg, "PerFrameFunctionalGroupsSequence", None) or []
    shared = _first(seg, "SharedFunctionalGroupsSequence")
    geos = geometry.dataset_frame_geometries(seg)
    placer = _Placer(grid, options.position_tolerance_mm)
    n_frames = int(getattr(seg, "NumberOfFrames", 1) or 1)
    how: set[str] = set()
    unplaced: list[str] = []
    notes: list[str] = []
    by_segment: dict = {}
    for f in range(n_frames):
        item = per_frame[f] if f < len(per_frame) else None
        refs = _frame_references(item) if item is not None else []
        geo = geos[f] if f < len(geos) else None
        k, method = placer.by_reference(refs), "uid"
        if k is None:
            k, method = placer.by_position(geo), "position"
        if k is None:
            unplaced.append(f"frame {f + 1}: no source slice with its SOP Instance UID or within "
                            f"{options.position_tolerance_mm} mm of its position")
            continue
        offset = _in_plane_offset(geo, grid.frames[k])
        if offset is None:
            unplaced.append(f"frame {f + 1}: orientation, pixel spacing or in-plane position differs from the source")
            continue
        number = None if labelmap else _frame_segment_number(item, shared)
        if number is None and not labelmap:
            unplaced.append(f"frame {f + 1}: no Segment Identification Sequence (0062,000A)")
            continue
        if method == "uid" and geo is not None:
            gap = abs(float(np.dot(geo.position, grid.normal)) - grid.distances[k])
            if gap > options.position_tolerance_mm:
                notes.append(f"frame {f + 1}: placed by its SOP Instance UID although its position is "
                                f"{gap:.3g} mm from that slice")
        how.add(method)
        by_segment.setdefault(number, []).append((f, k, offset[0], offset[1]))
    if not how:
        raise SegError(f"none of its {n_frames} frames matches a slice of the source series by SOP Instance UID "
                       "or position" + (f" ({unplaced[0]})" if unplaced else ""))
    return _Plan(by_segment, "+".join(sorted(how, reverse=True)), unplaced, notes)


class SegDecoder:
    """One SEG opened against one source grid: the frame placement is computed on
    construction (raises :class:`SegError` when nothing can be placed), pixels
    are decoded by :meth:`masks`, one segment at a time."""

    def __init__(self, seg_path: str | Path, source_paths: Iterable[str | Path] | SourceGrid,
                 options: SegOptions | dict | None = None):
        if isinstance(options, dict) or options is None:
            options = SegOptions.from_config(options)
        self.options = options
        self.seg_path = seg_path
        self.seg = seg = read_segmentation(seg_path)
        self.grid = source_paths if isinstance(source_paths, SourceGrid) else source_grid(source_paths)
        self.infos = [s for s in segment_infos(seg) if s.number != 0]
        self.sop_class = str(seg.SOPClassUID)
        self.seg_type = str(getattr(seg, "SegmentationType", "") or "")
        self.labelmap = self.sop_class == LABELMAP_SEG_SOP_CLASS or self.seg_type == "LABELMAP"
        try:
            self.plan = _placement_plan(seg, self.grid, options, self.labelmap)
        except SegError as exc:
            raise SegError(f"{Path(seg_path).name}: {exc}") from None

    @property
    def n_frames_unplaced(self) -> int:
        return len(self.plan.unplaced)

    def masks(self, segment_numbers: Sequence[int] | None = None) -> Iterator[SegmentMask]:
        """Yield one :class:`SegmentMask` per segment (SegmentNumber 0 left out)."""
        seg, grid, options, plan = self.seg, self.grid, self.options, self.plan
        infos = self.infos if segment_numbers is None else [s for s in self.infos if s.number in set(segment_numbers)]
        fractional = self.seg_type == "FRACTIONAL"
        keep_float = fractional and options.fractional == "float"
        max_frac = float(getattr(seg, "MaximumFractionalValue", 255) or 255)
        labelmap = self.labelmap
        cache: dict[int, np.ndarray] = {}
        if labelmap:   # each frame holds every segment: decode once
            cache = {f: seg.get_stored_frame(f + 1) for f, *_ in plan.by_segment.get(None, [])}
        common = dict(affine=grid.affine, voxel_ml=grid.voxel_volume_ml(), seg_path=str(self.seg_path),
                      series_description=str(getattr(seg, "SeriesDescription", "") or ""),
                      segmentation_type=self.seg_type, sop_class_uid=self.sop_class,
                      source_series_uid=grid.series_uid, placement=plan.placement,
                      n_frames_unplaced=len(plan.unplaced),
                      notes=plan.unplaced[:5] + plan.notes[:5] + list(grid.report.notes))
        src0 = grid.frames[0]
        for info in infos:
            volume = np.zeros(grid.shape, dtype=np.float32 if keep_float else np.uint8)
            for f, k, c0, r0 in plan.by_segment.get(None if labelmap else info.number, []):
                if labelmap:
                    frame = (cache[f] == info.number).astype(np.uint8)
                else:
                    stored = seg.get_stored_frame(f + 1)
                    if fractional:
                        frame = stored.astype(np.float32) / np.float32(max_frac)
                        if not keep_float:
                            frame = (frame >= options.threshold).astype(np.uint8)
                    else:
                        frame = (stored > 0).astype(np.uint8)
                _paste(volume, frame, k, c0, r0, src0)
            yield SegmentMask(segment=info, data=volume, **common)


def iter_segment_masks(seg_path: str | Path, source_paths: Iterable[str | Path] | SourceGrid,
                       options: SegOptions | dict | None = None,
                       segment_numbers: Sequence[int] | None = None) -> Iterator[SegmentMask]:
    """Decode one SEG onto its source grid, one segment at a time (memory: one
    volume alive at a time). See :func:`decode_segmentation`."""
    return SegDecoder(seg_path, source_paths, options).masks(segment_numbers)


def decode_segmentation(seg_path: str | Path, source_paths: Iterable[str | Path] | SourceGrid,
                        options: SegOptions | dict | None = None) -> list[SegmentMask]:
    """Decode every segment of one SEG onto its source series' grid.

    ``source_paths``: the files of the referenced source series (or a prebuilt
    :class:`SourceGrid`). Returns one :class:`SegmentMask` per segment of the
    Segment Sequence (SegmentNumber 0, a label map's background, is left out),
    each with exactly the source grid's shape and RAS affine: ``uint8`` 0/1, or
    ``float32`` fractions for a FRACTIONAL SEG with ``fractional='float'``
    (else thresholded at ``threshold`` × MaximumFractionalValue (0062,000E)).
    Raises :class:`SegError` when no frame can be placed on the source; frames
    that cannot be placed are counted in ``n_frames_unplaced`` with ``notes``.
    """
    return list(iter_segment_masks(seg_path, source_paths, options))


def _paste(volume: np.ndarray, frame_rc: np.ndarray, k: int, c0: int, r0: int, src) -> None:
    """Write a [row, column] frame into volume[:, :, k] at column/row offset, clipped;
    where two frames hit the same voxel, the maximum wins."""
    rows, cols = frame_rc.shape[:2]
    cs, ce = max(c0, 0), min(c0 + cols, src.columns)
    rs, re_ = max(r0, 0), min(r0 + rows, src.rows)
    if cs >= ce or rs >= re_:
        return
    part = frame_rc[rs - r0: re_ - r0, cs - c0: ce - c0].T
    target = volume[cs:ce, rs:re_, k]
    np.maximum(target, part.astype(volume.dtype), out=target)
