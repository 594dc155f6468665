"""De-identify one instance: bytes in, bytes out (fast path, else pydicom), and a file.

:func:`deidentify_bytes` tries the byte-level fast path (:mod:`.fast_path`) and
falls back to :class:`~.dataset.Deidentifier` on a pydicom data set; both give
identical bytes. :func:`deidentify_file` adds the configured edits
(:mod:`.edits`) and the burned-in text screen (:mod:`.pixels`) and writes the
result atomically (:func:`.encode.write_bytes`).
"""
from __future__ import annotations

import io
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset

from .. import dicomio
from ..errors import UnreadableDicom
from . import edits, pixels
from .dataset import Deidentifier
from .encode import encode_file, write_bytes
from .fast_path import FastPathUnsupported, rewriter_of
from .patient import element_text

def deidentify_bytes(deid: Deidentifier, data: bytes, *, fallback_key: str = "") -> tuple[bytes, dict]:
    """De-identified PS3.10 bytes of one file's bytes (the byte-level fast path when it
    applies, else pydicom), plus ``patient`` and the original Study/Series UIDs."""
    if deid.fast_path:
        try:
            out, patient, orig = rewriter_of(deid).rewrite(data, fallback_key)
            return out, {"patient": patient, **orig}
        except FastPathUnsupported:
            pass
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
    except Exception as exc:
        raise UnreadableDicom(f"cannot parse DICOM header: {type(exc).__name__}") from None
    if "SOPClassUID" not in ds and "MediaStorageSOPClassUID" not in getattr(ds, "file_meta", Dataset()):
        raise UnreadableDicom("not a DICOM file (no SOP Class UID)")
    orig = {"StudyInstanceUID": element_text(ds, 0x0020000D), "SeriesInstanceUID": element_text(ds, 0x0020000E)}
    patient = deid.deidentify(ds, fallback_key=fallback_key)
    return encode_file(ds), {"patient": patient, **orig}


def deidentify_file(deid: Deidentifier, src: str | Path, dst: str | Path, *, fallback_key: str = "") -> dict:
    """Read ``src`` (gzip-wrapped or not), de-identify, write ``dst`` atomically;
    return the patient context and the original Study/Series UIDs."""
    try:
        data = dicomio.read_bytes(src)
    except (OSError, EOFError) as exc:
        raise UnreadableDicom(f"cannot read the file ({type(exc).__name__})") from None
    out, info = deidentify_bytes(deid, data, fallback_key=fallback_key)
    out = edits.apply_edits(deid, data, out, info)      # config deid.edits; a no-op without edits
    if deid.burned_in is not None:  # burned-in text in the pixels: found, redacted (deid/pixels.py)
        elements = deid._rewriter.image_elements(out) if deid._rewriter is not None else None
        out, info["burned_in_text"] = pixels.screen_instance(out, deid.burned_in, elements=elements)
    write_bytes(out, dst)
    return info


