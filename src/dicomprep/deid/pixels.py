"""Burned-in text in pixel data: found by OCR, then redacted or the series quarantined.

BurnedInAnnotation (0028,0301) is a hint, not the truth: NO can be wrong and
the attribute is often absent. So every de-identified image is screened:

* Images that usually carry text (secondary captures, screenshots, ultrasound,
  XA/RF, projection radiographs, documents; ``WHOLE_FRAME_MODALITIES``) are
  OCRed on the whole frame.
* Cross-sectional slices (CT, MR, PT, ...) get a cheap text-likeness test first
  (:func:`text_candidates`): bright, character-sized connected components lying
  in a row, outside the body (the convex hull of the large foreground
  objects). Only the regions it finds are OCRed, so a clean CT series costs a
  decode and a few milliseconds a slice.

With ``deid.burned_in_text: redact`` (the default) each text box is filled with
the background value (the median of a ring around it) in the de-identified
DICOM itself, so every converter that reads it inherits the redaction; a
compressed image is written back uncompressed (Explicit VR Little Endian). With
``quarantine`` the whole series is withheld with the reason. The boxes are
recorded in the unit manifest (column ``burned_in_text``) and counted in the
audit. Nothing is logged about the text read, only where it was.
"""
from __future__ import annotations

import io
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import ExplicitVRLittleEndian

from .. import dicomio_walk, ocr
from ..errors import DicomprepError
from ..index_read import SEG_CLASSES
from .encode import encode_file

#: Modalities whose images are OCRed on the whole frame (PS3.3 C.7.3.1.1.1).
WHOLE_FRAME_MODALITIES = frozenset({
    "SC", "OT", "US", "IVUS", "XA", "RF", "XC", "ES", "GM", "SM", "DOC", "CR", "DX", "MG", "PX", "IO",
    "ECG", "HD", "OP", "OPT", "SR", "KO", "PR",
})
#: ImageType (0008,0008) values that mark a screenshot or a screen capture. Not
#: Value 2's "SECONDARY" (PS3.3 C.7.6.1.1.2): it only says the image was made
#: after the examination, as every reformat, MPR and derived volume is; those
#: are screened for text-like regions like any other image, not OCRed whole.
SCREENSHOT_TYPES = frozenset({"SCREEN SAVE", "SCREENSHOT", "CAPTURE", "SCREEN CAPTURE", "SECONDARY CAPTURE"})
#: SOP classes of secondary captures (PS3.4 B.5): always OCRed on the whole frame.
SC_SOP_PREFIX = "1.2.840.10008.5.1.4.1.1.7"

MODES = ("redact", "quarantine", "off")
#: What :func:`screen_instance` reads of a data set to decode and judge its pixels.
SCREEN_TAGS = [
    "SOPClassUID", "Modality", "ImageType", "ConversionType", "NumberOfFrames", "SamplesPerPixel",
    "PhotometricInterpretation", "PlanarConfiguration", "Rows", "Columns", "BitsAllocated", "BitsStored",
    "HighBit", "PixelRepresentation", "PixelData", "FloatPixelData", "DoubleFloatPixelData",
    "ExtendedOffsetTable", "ExtendedOffsetTableLengths", "RedPaletteColorLookupTableDescriptor",
]


@dataclass
class PixelSettings:
    """``deid.burned_in_text`` and its knobs, plus counters for the unit."""

    mode: str = "redact"
    min_score: float = 0.7        # OCR line score below this is not text
    min_chars: int = 2            # letters/digits in a line for it to count
    max_frames: int = 3           # frames of a multi-frame image OCRed (first, middle, last)
    counts: dict = field(default_factory=lambda: {
        "instances_screened": 0, "instances_ocr": 0, "instances_with_text": 0,
        "instances_redacted": 0, "boxes": 0})
    seconds: float = 0.0


def settings_from_config(config: dict | None) -> PixelSettings | None:
    """The pixel screen's settings from ``config['deid']``; None when it is off
    (``deid.burned_in_text: off``, or ``anonymisation: false``)."""
    config = config or {}
    if config.get("anonymisation", True) is False:
        return None
    deid = config.get("deid") or {}
    mode = str(deid.get("burned_in_text", "redact")).lower()
    if mode in ("off", "false", "none"):
        return None
    if mode not in MODES:
        raise ValueError(f"deid.burned_in_text is '{mode}', which is not one of {', '.join(MODES)}; "
                         "fix the config")
    return PixelSettings(mode=mode)


# --------------------------------------------------------------------------- screening

def whole_frame(ds: Any) -> bool:
    """Whether the image is of a kind that usually carries text (OCR the whole frame)."""
    modality = str(ds.get("Modality", "") or "").upper()
    sop = str(ds.get("SOPClassUID", "") or "")
    image_type = {str(v).upper() for v in (ds.get("ImageType") or [])} if ds.get("ImageType") else set()
    return (modality in WHOLE_FRAME_MODALITIES or sop.startswith(SC_SOP_PREFIX)
            or bool(image_type & SCREENSHOT_TYPES) or str(ds.get("ConversionType", "") or "") != "")


def grey(frame: np.ndarray, monochrome1: bool) -> np.ndarray:
    a = frame.astype(np.float32)
    if a.ndim == 3:
        a = a.mean(axis=2)
    return -a if monochrome1 else a


#: The lowest value of a frame is padding (no data: outside a CT's reconstruction circle,
#: PS3.3 C.7.5.1.1.2 Pixel Padding Value) when it covers at least this share of the frame.
PADDING_SHARE = 0.02


def without_padding(g: np.ndarray) -> np.ndarray:
    """``g`` with its padding raised to the lowest value of the data, so that the
    reconstruction circle of a CT (air inside, padding outside, e.g. -1024 and
    -3024 HU) is not taken for a body: text over the air inside the circle but
    outside the patient is then outside the body too. The padding is the frame's
    minimum when it covers :data:`PADDING_SHARE` of it and lies apart from the data
    (a gap of a tenth of the range: the black background of an MR image is data, and
    is left as it is), judged on every 4th pixel, as the threshold is."""
    small = g[::4, ::4]
    floor, top = small.min(), small.max()
    is_floor = small == floor
    share = np.count_nonzero(is_floor) / is_floor.size
    if share < PADDING_SHARE or share == 1.0:
        return g
    data_floor = small[~is_floor].min()
    if float(data_floor) - float(floor) < 0.1 * (float(top) - float(floor)):
        return g
    return np.maximum(g, np.asarray(data_floor, g.dtype))


def text_candidates(frame: np.ndarray, *, monochrome1: bool = False,
                    outside_body: bool = True) -> list[tuple[int, int, int, int]]:
    """Regions (x0, y0, x1, y1) of a 2-D frame that look like a line of text
    outside the body: three or more character-sized bright components in a row
    (or one wide component of text-like height and fill), not inside the convex
    hull of the large foreground objects (the body, the table).

    A cheap test (a few milliseconds for 512x512); only its regions are OCRed.
    With ``outside_body`` false (pictures such as QC montages, where the hull
    of the slices covers the gaps between them) rows of marks anywhere count.
    """
    import cv2  # deliberately lazy: OpenCV loads on the first frame screened, not on import

    if frame.ndim == 3 or monochrome1:
        g = grey(frame, monochrome1)
    else:
        g = frame
    h, w = g.shape
    if h < 32 or w < 32:
        return []
    g = without_padding(g)
    # threshold (Otsu) and the body from a quarter-resolution copy: cheap
    small = g[::4, ::4]
    lo, hi = float(small.min()), float(g.max())
    if hi - lo <= 0:
        return []
    small8 = ocr.to_uint8(small, lo, hi)
    t8, fg_small = cv2.threshold(small8, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(fg_small, connectivity=8)
    big = np.nonzero(stats[1:, cv2.CC_STAT_AREA] >= 0.005 * small.size)[0] + 1 if outside_body else []
    body_small = np.zeros(small.shape, np.uint8)
    if len(big):
        is_big = np.zeros(n, np.uint8)  # label -> 1 for the large objects (a lookup, not np.isin)
        is_big[big] = 1
        contours, _ = cv2.findContours(is_big[labels], cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        hull = cv2.convexHull(np.concatenate(contours))
        cv2.fillConvexPoly(body_small, hull, 1)
        body_small = cv2.dilate(body_small, np.ones((5, 5), np.uint8))
    threshold = lo + (float(t8) + 0.5) * (hi - lo) / 255.0
    fg = (g > threshold).view(np.uint8)
    # quick exit at quarter resolution (max-pooled, so thin strokes count): the usual clean
    # slice has nothing bright outside the body
    H4, W4 = small.shape
    pooled = cv2.dilate(fg, np.ones((4, 4), np.uint8), anchor=(0, 0))[::4, ::4]
    if len(big):
        pooled &= (body_small == 0).view(np.uint8)
    if cv2.countNonZero(pooled) < 2:
        return []
    body = cv2.resize(body_small, (4 * W4, 4 * H4), interpolation=cv2.INTER_NEAREST)[:h, :w] if len(big) else None
    if body is not None:
        fg = fg & (body == 0).view(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(np.ascontiguousarray(fg), connectivity=8)
    if n <= 1:
        return []
    body = body if body is not None else np.zeros((h, w), np.uint8)
    # character-sized components, not in the body
    x, y, cw, ch, ar = (stats[1:, i] for i in (cv2.CC_STAT_LEFT, cv2.CC_STAT_TOP, cv2.CC_STAT_WIDTH,
                                                cv2.CC_STAT_HEIGHT, cv2.CC_STAT_AREA))
    cy, cx = y + ch // 2, x + cw // 2
    outside = body[np.clip(cy, 0, h - 1), np.clip(cx, 0, w - 1)] == 0
    fill = ar / np.maximum(cw * ch, 1)
    charlike = outside & (ch >= 5) & (ch <= min(64, h // 6)) & (cw <= 3 * ch) & (ar >= 6) & (fill <= 0.9)
    wordlike = outside & (ch >= 5) & (ch <= min(64, h // 6)) & (cw >= 3 * ch) & (cw <= w // 2) \
        & (fill >= 0.15) & (fill <= 0.75)
    regions: list[list[int]] = []
    idx = np.nonzero(charlike)[0]
    order = idx[np.argsort(x[idx], kind="stable")]
    used = set()
    for i in order:
        if i in used:
            continue
        line = [i]
        for j in order:
            if j in used or j == i or x[j] < x[line[-1]]:
                continue
            last = line[-1]
            hh = max(ch[last], ch[j])
            if (abs(int(cy[j]) - int(cy[last])) <= 0.5 * hh and 0.5 <= ch[j] / ch[last] <= 2.0
                    and x[j] - (x[last] + cw[last]) <= 1.5 * hh):
                line.append(j)
        if len(line) >= 3:
            used.update(line)
            regions.append([int(x[line].min()), int((y[line]).min()), int((x[line] + cw[line]).max()),
                            int((y[line] + ch[line]).max())])
    for i in np.nonzero(wordlike)[0]:
        regions.append([int(x[i]), int(y[i]), int(x[i] + cw[i]), int(y[i] + ch[i])])
    # pad by a line height and merge overlaps
    out: list[list[int]] = []
    for x0, y0, x1, y1 in sorted(regions):
        pad = max(4, (y1 - y0))
        r = [max(0, x0 - pad), max(0, y0 - pad), min(w, x1 + pad), min(h, y1 + pad)]
        for o in out:
            if r[0] <= o[2] and o[0] <= r[2] and r[1] <= o[3] and o[1] <= r[3]:
                o[:] = [min(o[0], r[0]), min(o[1], r[1]), max(o[2], r[2]), max(o[3], r[3])]
                break
        else:
            out.append(r)
    return [tuple(r) for r in out]


def _ocr_region(g: np.ndarray, region: tuple[int, int, int, int], settings: PixelSettings) -> list[ocr.TextBox]:
    x0, y0, x1, y1 = region
    crop = g[y0:y1, x0:x1]
    found = ocr.read_text(crop, min_score=settings.min_score, min_chars=settings.min_chars)
    return [ocr.TextBox(b.x0 + x0, b.y0 + y0, b.x1 + x0, b.y1 + y0, b.text, b.score) for b in found]


def find_text(frame: np.ndarray, *, whole: bool, settings: PixelSettings,
              monochrome1: bool = False) -> tuple[list[ocr.TextBox], bool]:
    """Text boxes in one 2-D frame (grey or RGB) and whether OCR ran."""
    if whole:
        img = frame if frame.ndim == 3 else grey(frame, monochrome1)
        return ocr.read_text(img, min_score=settings.min_score, min_chars=settings.min_chars), True
    regions = text_candidates(frame, monochrome1=monochrome1)
    if not regions:
        return [], False
    g = grey(frame, monochrome1)
    boxes: list[ocr.TextBox] = []
    for region in regions:
        boxes += _ocr_region(g, region, settings)
    return boxes, True


# --------------------------------------------------------------------------- redaction

def _pad(box: ocr.TextBox, shape: tuple[int, int]) -> tuple[int, int, int, int]:
    h, w = shape
    pad = max(2, int(round(0.15 * (box.y1 - box.y0))))
    return max(0, box.x0 - pad), max(0, box.y0 - pad), min(w, box.x1 + pad), min(h, box.y1 + pad)


def background_value(frame: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """The median of a 3-pixel ring just outside ``box`` (per channel), in the frame's dtype."""
    h, w = frame.shape[:2]
    x0, y0, x1, y1 = box
    X0, Y0, X1, Y1 = max(0, x0 - 3), max(0, y0 - 3), min(w, x1 + 3), min(h, y1 + 3)
    mask = np.ones((Y1 - Y0, X1 - X0), bool)
    mask[y0 - Y0:y1 - Y0, x0 - X0:x1 - X0] = False
    ring = frame[Y0:Y1, X0:X1][mask]
    if ring.size == 0:
        ring = frame.reshape(-1, *frame.shape[2:])
    value = np.median(ring, axis=0)
    return np.round(value).astype(frame.dtype) if np.issubdtype(frame.dtype, np.integer) else value.astype(frame.dtype)


def redact_frame(frame: np.ndarray, boxes: list[ocr.TextBox]) -> list[list[int]]:
    """Fill each (padded) box of ``frame`` in place with its background; return the boxes filled."""
    filled = []
    for b in boxes:
        box = _pad(b, frame.shape[:2])
        value = background_value(frame, box)
        frame[box[1]:box[3], box[0]:box[2]] = value
        filled.append(list(box))
    return filled


# --------------------------------------------------------------------------- an instance

def frames_to_screen(n: int, whole: bool, max_frames: int) -> list[int]:
    if n <= 1:
        return [0]
    if whole:  # overlays on cine frames are static: first, middle, last
        return sorted({0, n // 2, n - 1})[:max(1, max_frames)]
    return list(range(n))


_NATIVE_LE = ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1")


def _pixels(ds: Any) -> np.ndarray:
    """The stored pixel values (pydicom's ``pixel_array`` layout): read straight from
    the buffer for the common uncompressed little-endian grey image, else decoded by
    pydicom (compressed, colour, odd bit depths)."""
    meta = getattr(ds, "file_meta", None)
    ts = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
    bits = int(ds.get("BitsAllocated") or 0)
    if ts in _NATIVE_LE and bits in (8, 16) and int(ds.get("SamplesPerPixel") or 1) == 1:
        rows, cols, n = int(ds.Rows), int(ds.Columns), int(ds.get("NumberOfFrames") or 1)
        dtype = np.dtype(f"<{'i' if int(ds.get('PixelRepresentation') or 0) else 'u'}{bits // 8}")
        buf = ds.PixelData
        if len(buf) >= rows * cols * n * dtype.itemsize:
            arr = np.frombuffer(buf, dtype, count=rows * cols * n)
            if dtype.kind == "u" and int(ds.get("BitsStored") or bits) < bits:
                arr = arr & np.array((1 << int(ds.BitsStored)) - 1, dtype)  # unused high bits
            return arr.reshape((n, rows, cols) if n > 1 else (rows, cols))
    return ds.pixel_array


#: What :func:`fast_read` decodes (tag -> keyword, VR): the Image Pixel module
#: (PS3.3 C.7.6.3) and what :func:`whole_frame` judges by.
FAST_READ_TAGS = {
    0x00080008: ("ImageType", "CS"), 0x00080016: ("SOPClassUID", "UI"), 0x00080060: ("Modality", "CS"),
    0x00080064: ("ConversionType", "CS"), 0x00280002: ("SamplesPerPixel", "US"),
    0x00280004: ("PhotometricInterpretation", "CS"), 0x00280008: ("NumberOfFrames", "IS"),
    0x00280010: ("Rows", "US"), 0x00280011: ("Columns", "US"), 0x00280100: ("BitsAllocated", "US"),
    0x00280101: ("BitsStored", "US"), 0x00280103: ("PixelRepresentation", "US"),
}
_IS_VALUE = re.compile(r"^\s*[+-]?\d+\s*$")
#: The top-level elements :func:`image_of_elements` reads: those and Pixel Data (7FE0,0010).
IMAGE_TAGS = frozenset(FAST_READ_TAGS) | {0x7FE00010}


class _Unusual(Exception):
    """A value :func:`fast_read` leaves to pydicom."""


def _header_value(raw: bytes, vr: str) -> Any:
    """A value as pydicom gives it (``multi_string`` of CS/UI/IS, PS3.5 6.2), for the
    plain cases only; anything else raises :class:`_Unusual`."""
    if vr == "US":
        if len(raw) != 2:
            raise _Unusual("US value of VM other than 1")
        return int.from_bytes(raw, "little")
    items = raw.decode("latin-1").rstrip(" \x00").split("\\")
    if vr == "IS":
        if len(items) != 1 or not (items[0] == "" or _IS_VALUE.match(items[0])):
            raise _Unusual("IS value")
        return int(items[0]) if items[0] else ""
    return items[0] if len(items) == 1 else items


def fast_read(data: bytes) -> tuple[Any, np.ndarray | None]:
    """(the attributes of :data:`FAST_READ_TAGS` by keyword, pixels) of an uncompressed
    little-endian grey image, read with the shared byte walker (PS3.5 section 7);
    ``(None, None)`` for anything else (the caller asks pydicom)."""
    try:
        meta, pos = dicomio_walk.file_meta_elements(data)
        ts = next((_header_value(data[e[2]:e[2] + e[3]], "UI") for e in meta if e[0] == 0x00020010), "")
        if ts not in _NATIVE_LE:
            return None, None
        elements, _ = dicomio_walk.walk_elements(data, pos, len(data), ts == _NATIVE_LE[0])
        return image_of_elements(data, elements)
    except Exception:
        return None, None


def image_of_elements(data: bytes, elements) -> tuple[Any, np.ndarray | None]:
    """:func:`fast_read` from the top-level elements of ``data`` already found
    (``(tag, vr, value start, value length, undefined, ...)``, as the byte walker
    gives them): the de-identification fast path knows where it wrote them."""
    try:
        ds: dict[str, Any] = {}
        span = None
        for tag, vr, vstart, vlen, undefined, *_ in elements:
            spec = FAST_READ_TAGS.get(tag)
            if spec is not None:
                if undefined or vr not in (None, spec[1]):
                    return None, None
                ds[spec[0]] = _header_value(data[vstart:vstart + vlen], spec[1])
            elif tag == 0x7FE00010 and not undefined:
                span = (vstart, vstart + vlen)
        bits = int(ds.get("BitsAllocated") or 0)
        if bits not in (8, 16) or int(ds.get("SamplesPerPixel") or 1) != 1:
            return None, None
        rows, cols, n = int(ds["Rows"]), int(ds["Columns"]), int(ds.get("NumberOfFrames") or 1)
        size = rows * cols * n * bits // 8
        if span is None or span[1] - span[0] not in (size, size + 1):
            return None, None
        dtype = np.dtype(f"<{'i' if int(ds.get('PixelRepresentation') or 0) else 'u'}{bits // 8}")
        arr = np.frombuffer(data, dtype, count=rows * cols * n, offset=span[0])
        if dtype.kind == "u" and int(ds.get("BitsStored") or bits) < bits:
            arr = arr & np.array((1 << int(ds["BitsStored"])) - 1, dtype)  # unused high bits
        return ds, arr.reshape((n, rows, cols) if n > 1 else (rows, cols))
    except Exception:
        return None, None


class PixelsNotScreened(DicomprepError):
    """An image whose pixel data cannot be decoded to screen it for burned-in text
    (video, a transfer syntax no installed decoder reads, a broken frame): it is not
    shared, as a screened image with text would not be."""


def _not_screened(data: bytes, exc: Exception) -> PixelsNotScreened | None:
    """The error for an instance whose pixels could not be read, or None when it has
    none or is a segmentation (PS3.3 A.51: binary or fractional masks, decoded by the
    SEG converter, which says when it cannot)."""
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True, specific_tags=SCREEN_TAGS)
        meta = getattr(ds, "file_meta", None)
        ts = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
        if str(ds.get("SOPClassUID", "")) in SEG_CLASSES:
            return None
        has_pixels = any(len(ds.get(k) or b"") > 0 for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"))
    except Exception:  # noqa: BLE001 - a header pydicom cannot read: the pixels are unknown too
        ts, has_pixels = "", True
    if not has_pixels:
        return None
    name = pydicom.uid.UID(ts).name if ts else "unknown transfer syntax"
    return PixelsNotScreened(
        f"pixels_not_screened: its pixel data ({name}) could not be decoded ({type(exc).__name__}) to screen "
        "it for burned-in text, so it is not shared; set deid.burned_in_text: off to share such images unscreened")


def screen_instance(data: bytes, settings: PixelSettings, *,
                    elements: list | None = None) -> tuple[bytes, list[dict]]:
    """Screen one de-identified instance (PS3.10 bytes) for burned-in text.

    Returns the bytes to write (redacted and re-encoded when text was found and
    the mode is ``redact``; else unchanged) and the boxes found, one dict per
    frame with text: ``{"frame": i, "boxes": [[x0, y0, x1, y1], ...]}``.
    An image whose pixels cannot be decoded raises :class:`PixelsNotScreened`
    (a segmentation is returned unchanged: its masks are not pictures).
    ``elements``: the top-level elements of ``data`` when the caller knows them
    (see :func:`image_of_elements`).
    """
    t0 = time.perf_counter()
    try:  # the image attributes and the pixel buffer: a full parse costs more than the screen
        ds, arr = image_of_elements(data, elements) if elements is not None else fast_read(data)
        if arr is None:
            ds = pydicom.dcmread(io.BytesIO(data), force=True, specific_tags=SCREEN_TAGS)
            if "PixelData" not in ds:
                return data, []
            arr = _pixels(ds)
        settings.counts["instances_screened"] += 1
    except Exception as exc:
        not_screened = _not_screened(data, exc)
        if not_screened is not None:
            settings.counts["instances_not_screened"] = settings.counts.get("instances_not_screened", 0) + 1
            raise not_screened from None
        return data, []
    try:
        n_frames = int(ds.get("NumberOfFrames") or 1)
        samples = int(ds.get("SamplesPerPixel") or 1)
        frames = arr if (n_frames > 1) else arr[None]
        if samples == 1 and frames.ndim == 4:
            frames = frames[..., 0]
        whole = whole_frame(ds)
        mono1 = str(ds.get("PhotometricInterpretation", "")) == "MONOCHROME1"
        found: list[dict] = []
        ocr_ran = False
        boxes_by_frame: dict[int, list[ocr.TextBox]] = {}
        for i in frames_to_screen(len(frames), whole, settings.max_frames):
            boxes, ran = find_text(frames[i], whole=whole, settings=settings, monochrome1=mono1)
            ocr_ran |= ran
            if boxes:
                boxes_by_frame[i] = boxes
        if ocr_ran:
            settings.counts["instances_ocr"] += 1
        if not boxes_by_frame:
            return data, []
        settings.counts["instances_with_text"] += 1
        if whole and len(frames) > 1:  # a static overlay: redact its boxes in every frame
            union = [b for bs in boxes_by_frame.values() for b in bs]
            boxes_by_frame = {i: union for i in range(len(frames))}
        if settings.mode != "redact":
            return data, [{"frame": i, "boxes": [list(_pad(b, frames.shape[1:3])) for b in bs]}
                          for i, bs in sorted(boxes_by_frame.items())]
        frames = np.array(frames, copy=True)
        ds = pydicom.dcmread(io.BytesIO(data), force=True)  # the whole data set, to write it back
        for i, bs in sorted(boxes_by_frame.items()):
            filled = redact_frame(frames[i], bs)
            found.append({"frame": i, "boxes": filled})
            settings.counts["boxes"] += len(filled)
        out = frames if n_frames > 1 else frames[0]
        if samples == 1 and arr.ndim == out.ndim + 1:
            out = out[..., None]
        data = _encode_redacted(ds, out.reshape(arr.shape))
        settings.counts["instances_redacted"] += 1
        return data, found
    finally:
        settings.seconds += time.perf_counter() - t0


def _encode_redacted(ds: Any, arr: np.ndarray) -> bytes:
    """``ds`` with ``arr`` as its pixel data, as PS3.10 bytes.

    A compressed (or big-endian, or deflated) source is written uncompressed in
    Explicit VR Little Endian; colour decoded from YBR is stored as RGB. The
    SOP Instance UID is kept (the de-identification already replaced it).
    """
    ts = ds.file_meta.get("TransferSyntaxUID")
    big_endian = ts is not None and not ts.is_little_endian
    if ts is not None and (big_endian or ts.is_deflated):
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    if int(ds.get("SamplesPerPixel") or 1) == 3 and photometric.startswith("YBR"):
        photometric = "RGB"  # pydicom's pixel_array converted YBR to RGB
    bits_stored = int(ds.get("BitsStored") or arr.dtype.itemsize * 8)
    if arr.dtype.byteorder == ">":  # decoded from big endian: store little endian
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    ds.set_pixel_data(arr, photometric, bits_stored, generate_instance_uid=False)
    if big_endian:  # re-encode the whole data set little endian (values are decoded by pydicom)
        plain = Dataset()
        for elem in ds:  # iterating decodes each raw element with the source's byte order
            plain.add(elem)
        fp = DicomBytesIO()
        fp.write(b"\x00" * 128 + b"DICM")
        write_file_meta_info(fp, ds.file_meta, enforce_standard=True)
        fp.is_little_endian, fp.is_implicit_VR = True, False
        write_dataset(fp, plain)
        return fp.getvalue()
    return encode_file(ds)


def manifest_value(found: list[dict]) -> str:
    """The manifest cell for an instance's boxes (JSON, "" when none)."""
    return json.dumps(found, separators=(",", ":")) if found else ""


def finish_series(rows: list[dict], settings: PixelSettings, logger: Any, series_counts: Any) -> None:
    """After a series is written: in ``quarantine`` mode, a series with text in any
    image is withheld (its files removed, its rows ``quarantined`` with the reason).
    In ``redact`` mode the redacted images are logged (where, never what)."""
    with_text = [r for r in rows if r.get("burned_in_text")]
    folder = rows[0]["series_id"] if rows else ""
    c = settings.counts
    logger.info("series %s: pixels screened for burned-in text (unit so far: %d images screened, %d OCRed, "
                "%.2f s)", folder, c["instances_screened"], c["instances_ocr"], settings.seconds)
    if not with_text:
        return
    if settings.mode != "quarantine":
        n_boxes = sum(len(f["boxes"]) for r in with_text for f in json.loads(r["burned_in_text"]))
        logger.info("series %s: burned-in text redacted in %d of %d images (%d boxes; see the manifest's "
                    "burned_in_text column)", folder, len(with_text), len(rows), n_boxes)
        return
    reason = (f"burned_in_text: OCR found text in the pixels of {len(with_text)} of {len(rows)} images "
              "(deid.burned_in_text: quarantine; set it to redact to share the series with the text blanked)")
    logger.warning("series %s not shared: %s", folder, reason)
    for r in rows:
        if r.get("output_path"):
            Path(r["output_path"]).unlink(missing_ok=True)
        if r.get("status") == "written":
            r.update(status="quarantined", reason=reason, output_path="")
    series_counts["quarantined:burned_in_text"] += 1
    settings.counts["series_quarantined"] = settings.counts.get("series_quarantined", 0) + 1


def unit_counts(settings: PixelSettings | None) -> dict:
    """Integer counts for the unit's counts.json (summed into the audit)."""
    if settings is None:
        return {}
    # no timings here: counts.json feeds audit.yaml, which must be byte-identical on a re-run
    return dict(sorted({"series_quarantined": 0, **settings.counts}.items()))
