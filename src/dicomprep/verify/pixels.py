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
rest are counted as over budget. An image identical to one read before (pixels
and regions) reuses that reading. The counts and seconds go into
``verification.json`` under ``pixels``.
"""
from __future__ import annotations

import base64
import hashlib
import io
import re
import time
from pathlib import Path
from typing import Any, Callable, Iterator, NamedTuple

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
from ..parallel import map_chunked
from ..paths import layout

Found = Callable[[Path, str, set], None]  # (relative path, where, kinds)

_SPLIT = re.compile(r"(?<=[A-Za-z])(?=\d)|(?<=\d)(?=[A-Za-z])")
_NON_ALNUM = re.compile(r"[^0-9a-z]+")


def ocr_settings(config: dict | None) -> dict:
    """``verify.ocr`` with its defaults (enabled, max_images 200, min_score 0.5)."""
    cfg = {"enabled": True, "max_images": 200, "min_score": 0.5}
    cfg.update((((config or {}).get("verify") or {}).get("ocr")) or {})
    return cfg


def _digest(image: np.ndarray, extra: str = "") -> bytes:
    """A key for an image's pixels and shape (plus ``extra``): equal images, equal keys."""
    return hashlib.sha1(np.ascontiguousarray(image).tobytes() + (str(image.shape) + extra).encode()).digest()


class PixelScan:
    """State of one pixel scan: the budget, the counts and the identifier checks."""

    def __init__(self, matcher: Any, ids: Any, cfg: dict):
        self.matcher = matcher
        self.max_images = int(cfg.get("max_images", 200))
        self.min_score = float(cfg.get("min_score", 0.5))
        self.counts = {"images_screened": 0, "images_ocr": 0, "images_ocr_reused": 0, "images_over_budget": 0}
        self._read: dict[bytes, list[ocr.TextBox]] = {}  # OCR results by image content and regions
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
        """OCR ``image`` (whole, or only ``regions``) within the budget; None when over it.

        An image with the same pixels and regions as one read before (the same
        frame in several transfer syntaxes, a repeated screen capture) gets the
        text read then, outside the budget: OCR is deterministic, and each file
        holding it is still reported."""
        key = _digest(image, repr((image.dtype.str, regions)))
        if key in self._read:
            self.counts["images_ocr_reused"] += 1
            return self._read[key]
        if self.counts["images_ocr"] >= self.max_images:
            self.counts["images_over_budget"] += 1
            return None
        self.counts["images_ocr"] += 1
        if regions is None:
            out = ocr.read_text(image, min_score=self.min_score, min_chars=2)
        else:
            g = burned_in.grey(image, False) if image.ndim == 3 else image
            out = []
            for x0, y0, x1, y1 in regions:
                out += ocr.read_text(g[y0:y1, x0:x1], min_score=self.min_score, min_chars=2)
        self._read[key] = out
        return out

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

class _Image(NamedTuple):
    """One 2-D image of a share/ file, and how the scan reads it."""

    where: str
    pixels: np.ndarray
    whole: bool = False          # OCR it whole (kinds that usually carry text), no text-likeness test
    monochrome1: bool = False    # inverted grey scale (PhotometricInterpretation MONOCHROME1)
    outside_body: bool = True    # look for text outside the body only (medical images, not pictures)
    once: bool = False           # a picture: identical pictures are screened once


def _unit_of(rel: Path, top: str, flagged: dict[str, set[str]]) -> str | None:
    """The flagged unit a ``nifti/...`` or ``hdf5/...`` file of share/ belongs to."""
    parts = rel.parts
    if len(parts) < 2 or parts[0] != top:
        return None
    for unit in flagged:
        n = len(Path(unit).parts)
        if "/".join(parts[1:1 + n]) == unit or (top == "hdf5" and "/".join(parts[1:])[:-3] == unit):
            return unit
    return None


def _file_images(path: Path, rel: Path, flagged: dict[str, set[str]]) -> Iterator[_Image]:
    """The images of one share/ file the scan reads, in a fixed order (module docstring)."""
    name = path.name.lower()
    if name.endswith((".dcm", ".dicom", ".ima", ".dcm.gz")):
        for where, frame, whole, mono1 in _dicom_frames(path):
            yield _Image(where, frame, whole=whole, monochrome1=mono1)
    elif name.endswith((".png", ".jpg", ".jpeg")):
        img = _picture(path.read_bytes())
        if img is not None:
            yield _Image("picture", img, outside_body=False, once=True)
    elif name.endswith((".html", ".htm")):
        for where, img in _html_pictures(path):  # a report thumbnail is usually a PNG already screened
            yield _Image(where, img, outside_body=False, once=True)
    elif name.endswith((".nii", ".nii.gz")) and _unit_of(rel, "nifti", flagged):
        for where, img in _nifti_slices(path):
            yield _Image(where, img)
    elif name.endswith((".h5", ".hdf5")) and (unit := _unit_of(rel, "hdf5", flagged)):
        for where, img in _hdf5_frames(path, flagged[unit]):
            yield _Image(where, img)


def _grey(image: _Image) -> np.ndarray:
    return burned_in.grey(image.pixels, True) if image.monochrome1 else image.pixels


#: Below this many files the screen runs in the calling process (a pool costs more).
PARALLEL_FROM_FILES = 200
#: (share/, flagged units) of the running scan, for forked workers (:func:`_screen_file`).
_SCREEN_STATE: tuple[Path, dict[str, set[str]]] | None = None

#: One image's screen: (where, regions to OCR (None: the whole image; []: none), picture digest)
Screened = tuple[str, "list | None", "bytes | None"]


def _screen_file(path: Path) -> tuple[list[Screened], str | None]:
    """The cheap text-likeness test (:func:`dicomprep.deid.pixels.text_candidates`)
    over one file's images, and the error that stopped it (its type name)."""
    assert _SCREEN_STATE is not None
    share, flagged = _SCREEN_STATE
    out: list[Screened] = []
    try:
        for image in _file_images(path, path.relative_to(share), flagged):
            digest = _digest(image.pixels) if image.once else None
            regions = None if image.whole else burned_in.text_candidates(_grey(image),
                                                                         outside_body=image.outside_body)
            out.append((image.where, regions, digest))
    except Exception as exc:  # an image that cannot be decoded is no text; the other scans see it
        return out, type(exc).__name__
    return out, None


def _screen_files(share: Path, files: list[Path], flagged: dict[str, set[str]],
                  workers: int) -> list[tuple[list[Screened], str | None]]:
    """:func:`_screen_file` over ``files`` in input order, on ``workers`` forked processes."""
    global _SCREEN_STATE
    _SCREEN_STATE = (share, flagged)
    try:
        return map_chunked(_screen_file, files, workers, serial_below=PARALLEL_FROM_FILES, chunk=(8, 64))
    finally:
        _SCREEN_STATE = None


def scan_share_pixels(out_dir: str | Path, files: list[Path], matcher: Any, ids: Any, found: Found,
                      config: dict | None = None, log: Any = None, workers: int = 1) -> dict:
    """OCR the pictures in ``share/`` (``files``) for identifiers; report each hit
    through ``found(rel, where, kinds)``. Returns the counts for verification.json.

    Three passes, so that the outcome does not depend on ``workers``: the
    text-likeness test of every image (on ``workers`` processes), then in file
    order which images are OCRed within the budget, then the OCR of those (in
    this process, in file order; an image is decoded again for it).
    """
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
    to_read: dict[int, dict[int, list | None]] = {}   # file -> image -> regions (None: whole)
    for i, (path, (screened, error)) in enumerate(zip(files, _screen_files(share, files, flagged, workers))):
        for j, (_, regions, digest) in enumerate(screened):
            if digest is not None:
                if digest in seen:
                    continue
                seen.add(digest)
            scan.counts["images_screened"] += 1
            if regions is None or regions:
                to_read.setdefault(i, {})[j] = regions
        if error:
            errors += 1
            if log is not None:
                log.warning("verify: the pixels of %s could not be read for OCR (%s)", path, error)
    for i, planned in to_read.items():
        rel = files[i].relative_to(share)
        for j, image in enumerate(_file_images(files[i], rel, flagged)):
            if j in planned:
                scan.check(scan.ocr(_grey(image), planned[j]), rel, image.where, found)
            if j >= max(planned):
                break
    result = {"enabled": True, **scan.counts, "max_images": scan.max_images, "unreadable": errors,
              "units_with_text_at_source": len(flagged), "seconds": round(time.perf_counter() - t0, 2)}
    if log is not None:
        log.info("verify: pixels: %d images screened, %d OCRed (%d more the same as one read before), "
                 "%d over the budget of %d, %.1f s",
                 result["images_screened"], result["images_ocr"], result["images_ocr_reused"],
                 result["images_over_budget"],
                 scan.max_images, result["seconds"])
        if result["images_over_budget"]:
            log.warning("verify: %d images were not OCRed (over verify.ocr.max_images = %d); raise the "
                        "budget to read them all", result["images_over_budget"], scan.max_images)
    return result
