"""Offline OCR of image pixels: one wrapper around the engine, used by the
de-identification (burned-in text, ``deid/pixels.py``) and by the verifier.

The engine is RapidOCR (``rapidocr-onnxruntime``): PP-OCR detection and
recognition models run by ONNX Runtime on the CPU. Its wheel carries the model
files, so nothing is downloaded at run time and the OCR works offline. The
engine is loaded once per process, on first use (about a second), with one
thread so that jobs running side by side do not fight over cores and the same
input gives the same boxes.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

import numpy as np

from .errors import DicomprepError

#: The PyPI distribution that carries the engine and its models (pinned in pyproject.toml).
ENGINE_PACKAGE = "rapidocr-onnxruntime"

_ENGINE = None
_LOCK = threading.Lock()


class OcrUnavailable(DicomprepError):
    """The OCR engine cannot be loaded (the package is missing or broken)."""


@dataclass(frozen=True)
class TextBox:
    """One line of text found in an image: its box in pixel coordinates
    (x0, y0 inclusive; x1, y1 exclusive), the text read and the engine's score."""

    x0: int
    y0: int
    x1: int
    y1: int
    text: str
    score: float

    def as_list(self) -> list[int]:
        return [self.x0, self.y0, self.x1, self.y1]


def engine():
    """The process-wide RapidOCR engine (models from inside the installed package)."""
    global _ENGINE
    if _ENGINE is None:
        with _LOCK:
            if _ENGINE is None:
                try:
                    from rapidocr_onnxruntime import RapidOCR
                except Exception as exc:  # ImportError, or a broken onnxruntime / cv2
                    raise OcrUnavailable(
                        f"the OCR engine could not be loaded ({type(exc).__name__}: {exc}); install the "
                        f"pinned '{ENGINE_PACKAGE}' with the project's set-up command (make install), or "
                        "set deid.burned_in_text: off and verify.ocr.enabled: false to run without OCR") from None
                logging.getLogger("RapidOCR").setLevel(logging.ERROR)
                # "max" with a large limit: the image is OCRed at the size read_text gives it
                _ENGINE = RapidOCR(intra_op_num_threads=1, inter_op_num_threads=1,
                                   det_limit_type="max", det_limit_side_len=2048)
    return _ENGINE


def to_uint8(image: np.ndarray, lo: float | None = None, hi: float | None = None) -> np.ndarray:
    """A 2-D grey or RGB image scaled linearly to 0..255 (min..max unless given)."""
    a = np.asarray(image)
    if a.dtype == np.uint8 and lo is None and hi is None:
        return a
    a = a.astype(np.float32)
    lo = float(np.min(a)) if lo is None else float(lo)
    hi = float(np.max(a)) if hi is None else float(hi)
    if hi <= lo:
        return np.zeros(a.shape, np.uint8)
    return np.clip((a - lo) * (255.0 / (hi - lo)), 0, 255).astype(np.uint8)


def _rgb(image: np.ndarray) -> np.ndarray:
    if image.ndim == 2:
        return np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim == 3 and image.shape[2] == 1:
        return np.repeat(image, 3, axis=2)
    if image.ndim == 3 and image.shape[2] == 4:
        return np.ascontiguousarray(image[:, :, :3])
    return np.ascontiguousarray(image)


def read_text(image: np.ndarray, *, min_score: float = 0.5, min_chars: int = 1,
              min_side: int = 736, max_zoom: float = 4.0) -> list[TextBox]:
    """Lines of text in a 2-D image (grey, or RGB in the last axis), with their boxes.

    A non-uint8 image is scaled min..max to 8 bits first, and enlarged (by at
    most ``max_zoom``) so that its shorter side is about ``min_side`` pixels:
    the detector misses text only a few pixels high. Lines whose text has
    fewer than ``min_chars`` letters or digits, or a score below ``min_score``,
    are left out. Boxes are in the coordinates of ``image``.
    """
    import cv2

    img = to_uint8(image)
    h, w = img.shape[:2]
    if h < 8 or w < 8:
        return []
    zoom = float(min(max_zoom, max(1.0, min_side / min(h, w))))
    if zoom > 1.0:
        img = cv2.resize(img, (int(round(w * zoom)), int(round(h * zoom))), interpolation=cv2.INTER_CUBIC)
    result, _ = engine()(_rgb(img), use_cls=False)
    boxes = []
    for points, text, score in result or []:
        text = str(text)
        if float(score) < min_score or sum(ch.isalnum() for ch in text) < min_chars:
            continue
        pts = np.asarray(points, dtype=np.float64) / zoom
        x0, y0 = np.floor(pts.min(axis=0))
        x1, y1 = np.ceil(pts.max(axis=0))
        boxes.append(TextBox(int(max(0, x0)), int(max(0, y0)), int(min(w, x1 + 1)), int(min(h, y1 + 1)),
                             text, round(float(score), 4)))
    return boxes
