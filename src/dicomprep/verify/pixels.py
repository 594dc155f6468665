"""The leak scan reads pixels too (issue 13 item 2).

:func:`scan_share_pixels` OCRs images in ``share/`` and searches the text read
for the identifiers the verifier knows (its :class:`~.matcher.Matcher`, plus a
glued-letters check for names and IDs, since OCR drops spaces and reads ``^``
as a letter):

* DICOM frames: whole frames of the kinds that usually carry text (secondary
  captures, US, XA, ...), else only the regions the cheap text-likeness test
  of :mod:`dicomprep.deid.pixels` flags (text outside the body);
* PNG pictures and the images embedded in HTML reports (data URIs, each
  distinct picture once): rows of character-like marks anywhere, OCRed;
* NIfTI volumes and HDF5 series of the units where the de-identification found
  burned-in text at the source (the ``burned_in_text`` column of the unit
  manifests): every slice through the text-likeness test, its regions OCRed.

Its cost is bounded: at most ``verify.ocr.max_images`` images are OCRed; the
rest are counted as over budget. The counts and seconds go into
``verification.json`` under ``pixels``.
"""
from __future__ import annotations

import base64
import hashlib
import io
import re
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import hdf5plugin  # noqa: F401  (registers Blosc: share/'s HDF5 files are Blosc-compressed by default)
import h5py
import nibabel as nib
import numpy as np
import pandas as pd
import pydicom
from PIL import Image

from .. import ocr
from ..deid import pixels as burned_in
from ..dicomio import read_bytes
from ..paths import layout

Found = Callable[[Path, str, set], None]  # (relative path, where, kinds)

_SPLIT = re.compile(r"(?<=[A-Za-z])(?=\d)|(?<=\d)(?=[A-Za-z])")
_NON_ALNUM = re.compile(r"[^0-9a-z]+")


def ocr_settings(config: dict | None) -> dict:
    """``verify.ocr`` with its defaults (enabled, max_images 200, min_score 0.5)."""
    cfg = {"enabled": True, "max_images": 200, "min_score": 0.5}
    cfg.update((((config or {}).get("verify") or {}).get("ocr")) or {})
    return cfg


class PixelScan:
    """State of one pixel scan: the budget, the counts and the identifier checks."""

    def __init__(self, matcher: Any, ids: Any, cfg: dict):
        self.matcher = matcher
        self.max_images = int(cfg.get("max_images", 200))
        self.min_score = float(cfg.get("min_score", 0.5))
        self.counts = {"images_screened": 0, "images_ocr": 0, "images_over_budget": 0}
        # glued spellings: OCR reads "DOE^JANE" as "DOEAJANE" and "ID 123" as "ID123"
        glued: dict[str, set[str]] = {}
        for kind, values in (ids.effective() if ids is not None else {}).items():
            if kind not in ("name", "id", "serial"):
                continue
            for value in values:
                key = _NON_ALNUM.sub("", str(value).lower())
                if len(key) >= (4 if kind == "name" else 6):
                    glued.setdefault(key, set()).add(kind)
        self.glued = glued

    def kinds(self, text: str) -> set[str]:
        """Identifier kinds in OCR text: the verifier's matcher on the text as read
        and with letters and digits split apart, plus glued name/ID spellings."""
        kinds = set(self.matcher.kinds(text)) | set(self.matcher.kinds(_SPLIT.sub(" ", text)))
        flat = _NON_ALNUM.sub("", text.lower())
        for key, k in self.glued.items():
            if key in flat:
                kinds |= k
        return kinds

    def ocr(self, image: np.ndarray, regions: list | None = None) -> list[ocr.TextBox] | None:
        """OCR ``image`` (whole, or only ``regions``) within the budget; None when over it."""
        if self.counts["images_ocr"] >= self.max_images:
            self.counts["images_over_budget"] += 1
            return None
        self.counts["images_ocr"] += 1
        if regions is None:
            return ocr.read_text(image, min_score=self.min_score, min_chars=2)
        g = burned_in.grey(image, False) if image.ndim == 3 else image
        out = []
        for x0, y0, x1, y1 in regions:
            out += ocr.read_text(g[y0:y1, x0:x1], min_score=self.min_score, min_chars=2)
        return out

    def screen(self, image: np.ndarray, *, whole: bool, monochrome1: bool = False,
               outside_body: bool = True) -> list[ocr.TextBox] | None:
        """One 2-D image: the text-likeness test (unless ``whole``), then OCR."""
        self.counts["images_screened"] += 1
        if monochrome1:
            image = burned_in.grey(image, True)
        if whole:
            return self.ocr(image)
        regions = burned_in.text_candidates(image, outside_body=outside_body)
        return self.ocr(image, regions) if regions else []

    def check(self, boxes: list[ocr.TextBox] | None, rel: Path, where: str, found: Found) -> None:
        for b in boxes or []:
            kinds = self.kinds(b.text)
            if kinds:
                found(rel, f"{where}, text burned into the pixels at x {b.x0}-{b.x1}, y {b.y0}-{b.y1}", kinds)


# --------------------------------------------------------------------------- readers

def _dicom_frames(path: Path) -> Iterator[tuple[str, np.ndarray, bool, bool]]:
    data = read_bytes(path)
    ds, arr = burned_in.fast_read(data)  # plain images: the header to group 0028 and the buffer
    if arr is None:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
        if "PixelData" not in ds:
            return
        arr = ds.pixel_array
    n = int(ds.get("NumberOfFrames") or 1)
    frames = arr if n > 1 else arr[None]
    whole = burned_in.whole_frame(ds)
    mono1 = str(ds.get("PhotometricInterpretation", "")) == "MONOCHROME1"
    for i in burned_in.frames_to_screen(len(frames), whole, 3):
        yield (f"DICOM frame {i + 1}" if n > 1 else "DICOM pixels"), frames[i], whole, mono1


def _picture(data: bytes) -> np.ndarray | None:
    try:
        with Image.open(io.BytesIO(data)) as im:
            return np.asarray(im.convert("RGB"))
    except Exception:
        return None


_DATA_URI = re.compile(rb"data:(image/[a-z0-9.+-]+)(?:;[a-z0-9=.-]+)*;base64,([a-z0-9+/=\s]+)", re.IGNORECASE)


def _html_pictures(path: Path) -> Iterator[tuple[str, np.ndarray]]:
    for n, m in enumerate(_DATA_URI.finditer(path.read_bytes()), 1):
        try:
            img = _picture(base64.b64decode(m.group(2), validate=False))
        except (ValueError, TypeError):
            img = None
        if img is not None:
            yield f"HTML embedded image {n}", img


def _nifti_slices(path: Path) -> Iterator[tuple[str, np.ndarray]]:
    """Axial slices of a NIfTI in the DICOM display orientation (rows anterior to
    posterior, columns patient right to left), at most 4 volumes."""
    img = nib.as_closest_canonical(nib.load(str(path)))
    data = np.asanyarray(img.dataobj)
    if data.ndim < 3:
        return
    vols = data.reshape(data.shape[:3] + (-1,))
    for v in range(min(vols.shape[3], 4)):
        for k in range(vols.shape[2]):
            yield f"NIfTI volume {v + 1} slice {k + 1}", np.ascontiguousarray(vols[::-1, ::-1, k, v].T)


def _hdf5_frames(path: Path, series: set[str]) -> Iterator[tuple[str, np.ndarray]]:
    with h5py.File(path, "r") as h5:
        for name in sorted(h5.keys()):
            if name not in series or "data" not in h5[name]:
                continue
            dset = h5[name]["data"]
            if dset.ndim < 2 or not np.issubdtype(dset.dtype, np.number):
                continue
            frames = int(np.prod(dset.shape[:-2])) if dset.ndim > 2 else 1
            flat_index = np.ndindex(*dset.shape[:-2]) if dset.ndim > 2 else iter([()])
            for n, idx in enumerate(flat_index):
                if n >= 4 * 1024:
                    break
                yield f"HDF5 {name}/data frame {n + 1} of {frames}", np.asarray(dset[idx])


def series_with_text(out_dir: Path) -> dict[str, set[str]]:
    """``unit -> series_ids`` where the de-identification found burned-in text
    (from the deid stage manifests ``private/stages/deid/<unit>/manifest.parquet``)."""
    out: dict[str, set[str]] = {}
    root = layout(out_dir).private_dir / "stages" / "deid"
    for manifest in sorted(root.rglob("manifest.parquet")) if root.is_dir() else []:
        try:
            df = pd.read_parquet(manifest)
        except Exception:
            continue
        if "burned_in_text" not in df:
            continue
        hit = df[df["burned_in_text"].fillna("").astype(str) != ""]
        if len(hit):
            unit = manifest.parent.relative_to(root).as_posix()
            out.setdefault(unit, set()).update(str(s) for s in hit["series_id"])
    return out


# --------------------------------------------------------------------------- the scan

def scan_share_pixels(out_dir: str | Path, files: list[Path], matcher: Any, ids: Any, found: Found,
                      config: dict | None = None, log: Any = None) -> dict:
    """OCR the pictures in ``share/`` (``files``) for identifiers; report each hit
    through ``found(rel, where, kinds)``. Returns the counts for verification.json."""
    cfg = ocr_settings(config)
    if not cfg.get("enabled", True):
        return {"enabled": False}
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    share = out_dir / "share"
    scan = PixelScan(matcher, ids, cfg)
    flagged = series_with_text(out_dir)
    errors = 0
    seen: set[bytes] = set()

    def _new(img: np.ndarray) -> bool:
        digest = hashlib.sha1(np.ascontiguousarray(img).tobytes() + str(img.shape).encode()).digest()
        if digest in seen:
            return False
        seen.add(digest)
        return True

    def unit_of(rel: Path, top: str) -> str | None:
        parts = rel.parts
        if len(parts) < 2 or parts[0] != top:
            return None
        for unit in flagged:
            n = len(Path(unit).parts)
            if "/".join(parts[1:1 + n]) == unit or (top == "hdf5" and "/".join(parts[1:])[:-3] == unit):
                return unit
        return None

    for path in files:
        rel = path.relative_to(share)
        name = path.name.lower()
        try:
            if name.endswith((".dcm", ".dicom", ".ima", ".dcm.gz")):
                for where, frame, whole, mono1 in _dicom_frames(path):
                    scan.check(scan.screen(frame, whole=whole, monochrome1=mono1), rel, where, found)
            elif name.endswith((".png", ".jpg", ".jpeg")):
                img = _picture(path.read_bytes())
                if img is not None and _new(img):
                    scan.check(scan.screen(img, whole=False, outside_body=False), rel, "picture", found)
            elif name.endswith((".html", ".htm")):
                for where, img in _html_pictures(path):
                    if _new(img):  # a report thumbnail is usually a PNG already screened
                        scan.check(scan.screen(img, whole=False, outside_body=False), rel, where, found)
            elif name.endswith((".nii", ".nii.gz")) and unit_of(rel, "nifti"):
                for where, img in _nifti_slices(path):
                    scan.check(scan.screen(img, whole=False), rel, where, found)
            elif name.endswith((".h5", ".hdf5")) and unit_of(rel, "hdf5"):
                for where, img in _hdf5_frames(path, flagged[unit_of(rel, "hdf5")]):
                    scan.check(scan.screen(img, whole=False), rel, where, found)
        except ocr.OcrUnavailable:
            raise
        except Exception as exc:  # an image that cannot be decoded is no text; the other scans see it
            errors += 1
            if log is not None:
                log.warning("verify: the pixels of %s could not be read for OCR (%s)", path, type(exc).__name__)
    result = {"enabled": True, **scan.counts, "max_images": scan.max_images, "unreadable": errors,
              "units_with_text_at_source": len(flagged), "seconds": round(time.perf_counter() - t0, 2)}
    if log is not None:
        log.info("verify: pixels: %d images screened, %d OCRed, %d over the budget of %d, %.1f s",
                 result["images_screened"], result["images_ocr"], result["images_over_budget"],
                 scan.max_images, result["seconds"])
        if result["images_over_budget"]:
            log.warning("verify: %d images were not OCRed (over verify.ocr.max_images = %d); raise the "
                        "budget to read them all", result["images_over_budget"], scan.max_images)
    return result
