"""Discovery and the series index: ``private/index/{instances,series}.parquet``
and ``unreadable.csv`` (columns: docs/contracts.md, "private/index/").

* **Discovery** walks ``input_dir`` with :func:`os.scandir` (no symlinked
  folders followed). Files with a clutter suffix (``dicomio.CLUTTER_SUFFIXES``:
  README .txt, .xml, thumbnails, NIfTI ...) and DICOMDIR media directories
  (PS3.10 section 8, MediaStorageSOPClassUID 1.2.840.10008.1.3.10) get a
  reason row in ``unreadable.csv`` and are not parsed as images. Everything
  else is read: with or without preamble, gzip-wrapped, any or no extension.
* **Reading** uses the lean tag walker :func:`dicomio.read_header_fields`
  (several times faster than pydicom) and falls back to pydicom for what it
  leaves aside: enhanced multi-frame files (per-frame functional groups, PS3.3
  C.7.6.16, whose per-frame geometry comes from
  :func:`geometry.dataset_frame_geometries`), deflated transfer syntaxes, ISO
  2022 character sets. Both give identical values (tests/test_index.py).
* **Bad input** (zero-length, truncated, not DICOM, no read permission,
  image attributes without Pixel Data) gets a reason row and a log line; the
  run continues. A series whose instances disagree on Rows/Columns gets
  ``matrix_consistent = False`` and a note.
* **Series** are keyed by (orig_unit, SeriesInstanceUID (0020,000E),
  SeriesNumber (0020,0011)): one UID shared by several series numbers
  (dcm_qa_ts) gives several series, several UIDs in one folder give several.
* **Incremental**: ``private/index/cache.parquet`` keeps every parsed file's
  row keyed by (path, size, mtime_ns); an unchanged file is never parsed
  again, new files are parsed, removed files dropped. Files that could not be
  opened for lack of permission are retried every run. All tables are first
  written to temporary names and renamed at the end, so a run killed half-way
  leaves the previous tables intact.
"""
from __future__ import annotations

import errno
import functools
import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from . import geometry
from .dicomio import (
    CLUTTER_SUFFIXES, GZIP_MAGIC, NeedsFullParse, atomic_path, read_dataset, read_header_fields, write_text,
)
from .errors import DicomprepError, UnreadableDicom
from .layout import LAYOUTS, assign_units, detect_layout_from_relpaths
from .parallel import map_chunked

#: (keyword, tag, VR, column type) of every header column of instances.parquet.
#: Column types: str (multi-values backslash-joined), int / float (first value),
#: floats (list of all values).
FIELDS: list[tuple[str, int, str, str]] = [
    ("PatientID", 0x00100020, "LO", "str"),
    ("PatientName", 0x00100010, "PN", "str"),
    ("IssuerOfPatientID", 0x00100021, "LO", "str"),
    ("PatientBirthDate", 0x00100030, "DA", "str"),
    ("PatientSex", 0x00100040, "CS", "str"),
    ("PatientAge", 0x00101010, "AS", "str"),
    ("StudyInstanceUID", 0x0020000D, "UI", "str"),
    ("StudyDate", 0x00080020, "DA", "str"),
    ("StudyTime", 0x00080030, "TM", "str"),
    ("StudyDescription", 0x00081030, "LO", "str"),
    ("AccessionNumber", 0x00080050, "SH", "str"),
    ("StudyID", 0x00200010, "SH", "str"),
    ("SeriesInstanceUID", 0x0020000E, "UI", "str"),
    ("SeriesNumber", 0x00200011, "IS", "int"),
    ("SeriesDescription", 0x0008103E, "LO", "str"),
    ("SeriesDate", 0x00080021, "DA", "str"),
    ("SeriesTime", 0x00080031, "TM", "str"),
    ("SOPInstanceUID", 0x00080018, "UI", "str"),
    ("SOPClassUID", 0x00080016, "UI", "str"),
    ("InstanceNumber", 0x00200013, "IS", "int"),
    ("Modality", 0x00080060, "CS", "str"),
    ("ImageType", 0x00080008, "CS", "str"),
    ("Manufacturer", 0x00080070, "LO", "str"),
    ("ManufacturerModelName", 0x00081090, "LO", "str"),
    ("InstitutionName", 0x00080080, "LO", "str"),
    ("StationName", 0x00081010, "SH", "str"),
    ("DeviceSerialNumber", 0x00181000, "LO", "str"),
    ("ImagePositionPatient", 0x00200032, "DS", "floats"),
    ("ImageOrientationPatient", 0x00200037, "DS", "floats"),
    ("PixelSpacing", 0x00280030, "DS", "floats"),
    ("SliceThickness", 0x00180050, "DS", "float"),
    ("SpacingBetweenSlices", 0x00180088, "DS", "float"),
    ("SliceLocation", 0x00201041, "DS", "float"),
    ("Rows", 0x00280010, "US", "int"),
    ("Columns", 0x00280011, "US", "int"),
    ("NumberOfFrames", 0x00280008, "IS", "int"),
    ("AcquisitionDate", 0x00080022, "DA", "str"),
    ("AcquisitionTime", 0x00080032, "TM", "str"),
    ("ContentDate", 0x00080023, "DA", "str"),
    ("ContentTime", 0x00080033, "TM", "str"),
    ("AcquisitionNumber", 0x00200012, "IS", "int"),
    ("TemporalPositionIdentifier", 0x00200100, "IS", "int"),
    ("EchoNumbers", 0x00180086, "IS", "int"),
    ("EchoTime", 0x00180081, "DS", "float"),
    ("RepetitionTime", 0x00180080, "DS", "float"),
    ("TriggerTime", 0x00181060, "DS", "float"),
    ("NominalInterval", 0x00181062, "IS", "float"),
    ("DiffusionBValue", 0x00189087, "FD", "float"),
    ("DiffusionGradientOrientation", 0x00189089, "FD", "floats"),
    ("ImageComments", 0x00204000, "LT", "str"),
    ("ScanningSequence", 0x00180020, "CS", "str"),
    ("SequenceVariant", 0x00180021, "CS", "str"),
    ("SequenceName", 0x00180024, "SH", "str"),
    ("ProtocolName", 0x00181030, "LO", "str"),
    ("BurnedInAnnotation", 0x00280301, "CS", "str"),
    ("ContrastBolusAgent", 0x00180010, "LO", "str"),
    ("BodyPartExamined", 0x00180015, "CS", "str"),
    ("RescaleSlope", 0x00281053, "DS", "float"),
    ("RescaleIntercept", 0x00281052, "DS", "float"),
    ("SpecificCharacterSet", 0x00080005, "CS", "str"),
    ("TransferSyntaxUID", 0x00020010, "UI", "str"),
    ("MediaStorageSOPClassUID", 0x00020002, "UI", "str"),
    ("SamplesPerPixel", 0x00280002, "US", "int"),
    ("BitsAllocated", 0x00280100, "US", "int"),
]
#: Private attributes read by (group, creator, element low byte): the vendor
#: b-value where the public DiffusionBValue (0018,9087) is missing (Siemens
#: (0019,xx0C) B_value of "SIEMENS MR HEADER").
PRIVATE_FIELDS: list[tuple[str, int, str, int, str, str]] = [
    ("PrivateBValue", 0x0019, "SIEMENS MR HEADER", 0x0C, "IS", "float"),
]
PRIVATE_WANTED: dict = {}
for _kw, _g, _creator, _low, _vr, _typ in PRIVATE_FIELDS:
    PRIVATE_WANTED.setdefault(_g, {}).setdefault(_creator, {})[_low] = (_kw, _vr)
#: The walker stops after the highest wanted tag (RescaleSlope (0028,1053)).
STOP_TAG = max(t for _k, t, _v, _ty in FIELDS) + 1
#: SOP classes whose geometry lives in functional groups (PS3.3 C.7.6.16):
#: the pydicom reader handles them (per-frame positions).
ENHANCED_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.2.1", "1.2.840.10008.5.1.4.1.1.2.2", "1.2.840.10008.5.1.4.1.1.4.1",
    "1.2.840.10008.5.1.4.1.1.4.2", "1.2.840.10008.5.1.4.1.1.4.3", "1.2.840.10008.5.1.4.1.1.4.4",
    "1.2.840.10008.5.1.4.1.1.128.1", "1.2.840.10008.5.1.4.1.1.130", "1.2.840.10008.5.1.4.1.1.66.4",
    "1.2.840.10008.5.1.4.1.1.66.7", "1.2.840.10008.5.1.4.1.1.6.2", "1.2.840.10008.5.1.4.1.1.12.1.1",
    "1.2.840.10008.5.1.4.1.1.12.2.1", "1.2.840.10008.5.1.4.1.1.13.1.1", "1.2.840.10008.5.1.4.1.1.13.1.2",
    "1.2.840.10008.5.1.4.1.1.13.1.3", "1.2.840.10008.5.1.4.1.1.13.1.4", "1.2.840.10008.5.1.4.1.1.13.1.5",
    "1.2.840.10008.5.1.4.1.1.77.1.6", "1.2.840.10008.5.1.4.1.1.2.1", "1.2.840.10008.5.1.4.1.1.30",
}
#: Bytes a DICOM stream may hold beyond the walker's stop tag and the native
#: pixel data (private groups after (0028,1053), overlays, padding).
GZIP_SLACK = 16 << 20
NATIVE_TS = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"}
#: Transfer syntaxes dicomprep decodes itself where pydicom has no decoder
#: (Deflated Image Frame Compression: convert/seg.py).
PROJECT_DECODED_TS = {"1.2.840.10008.1.2.8.1"}
FIELD_TYPES = {kw: typ for kw, _t, _vr, typ in FIELDS}
FIELD_TYPES.update({f[0]: f[5] for f in PRIVATE_FIELDS})
WANTED = {tag: (kw, vr) for kw, tag, vr, _typ in FIELDS}
FILE_COLUMNS = ["path", "relpath", "size", "mtime_ns", "gzip"]
UNIT_COLUMNS = ["orig_group", "orig_sequence", "orig_subject", "orig_scan", "orig_unit"]
#: Columns beyond the header fields: enhanced/is_dicomdir (contract) and
#: frame_positions / frame_bvalues (enhanced files: every frame's
#: ImagePositionPatient flattened x,y,z,x,y,z..., and DiffusionBValue per frame).
EXTRA_COLUMNS = ["enhanced", "is_dicomdir", "frame_positions", "frame_bvalues", "reader"]
INSTANCE_COLUMNS = (FILE_COLUMNS + UNIT_COLUMNS + ["series_key", "series_id"]
                    + list(FIELD_TYPES) + EXTRA_COLUMNS)
CACHE_COLUMNS = FILE_COLUMNS + list(FIELD_TYPES) + EXTRA_COLUMNS + ["reason", "retry"]
SERIES_COLUMNS = [
    "orig_group", "orig_sequence", "orig_subject", "orig_scan", "orig_unit", "series_key", "series_id",
    "SeriesInstanceUID", "SeriesNumber", "SeriesDescription", "Modality", "SOPClassUID", "PatientID",
    "IssuerOfPatientID", "StudyInstanceUID", "StudyDate", "Manufacturer", "ImageType", "n_instances",
    "n_frames", "enhanced", "Rows", "Columns", "matrix_consistent", "orientation", "slice_spacing",
    "spacing_regular", "spacing_min", "spacing_max", "n_duplicates", "n_missing", "tilt_deg",
    "n_bvalues", "kind", "notes",
]
KINDS = ("dwi", "ct_axial", "ct_other", "mr", "pt", "nm", "seg", "localizer", "dose_report",
         "secondary_capture", "presentation_state", "structured_report", "raw", "other_image", "other")
DICOMDIR_CLASS = "1.2.840.10008.1.3.10"
DICOMDIR_REASON = "DICOMDIR (media directory), not an image"
_INT_COLUMNS = [kw for kw, typ in FIELD_TYPES.items() if typ == "int"]
_FLOAT_COLUMNS = [kw for kw, typ in FIELD_TYPES.items() if typ == "float"]


def index_dir(out_dir: str | os.PathLike) -> Path:
    return Path(out_dir) / "private" / "index"


# --------------------------------------------------------------------------- values

def _split_values(value) -> list:
    """The values of an element as a list, from a walker value (str with
    backslashes, tuple of numbers) or a pydicom value (MultiValue, DSfloat...)."""
    if value is None:
        return []
    if isinstance(value, (bytes, bytearray)):
        return []
    if isinstance(value, str):
        return value.split("\\")
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        out = []
        for v in value:
            out.extend(_split_values(v) if isinstance(v, str) else [v])
        return out
    return [value]


def normalize(value, typ: str):
    """The index's value of an attribute (same for walker and pydicom input):
    strings stripped of spaces/NULs and backslash-joined; numbers parsed from
    their DS/IS text or binary value; None when absent, empty or invalid."""
    if typ == "str" and type(value) is str and "\\" not in value:
        value = value.strip(" \x00")
        return value or None
    vals = _split_values(value)
    if typ == "str":
        parts = [str(v).strip(" \x00") for v in vals]
        text = "\\".join(parts)
        return text if text.strip("\\") else None
    nums = []
    for v in vals:
        if isinstance(v, str):
            v = v.strip(" \x00")
            if not v:
                continue
        try:
            f = float(v)
        except (TypeError, ValueError):
            if typ == "floats":
                return None
            continue
        nums.append(f)
    if not nums:
        return None
    if typ == "floats":
        return nums
    if typ == "int":
        try:
            return int(nums[0])
        except (OverflowError, ValueError):
            return None
    return nums[0]


# --------------------------------------------------------------------------- reading

def record_from_dataset(ds) -> dict:
    """Index fields of a pydicom dataset (the fallback reader and the reference
    reading). Enhanced multi-frame files: first-frame geometry and per-frame
    positions / b-values from the functional groups (PS3.3 C.7.6.16)."""
    rec: dict[str, Any] = {}
    meta = getattr(ds, "file_meta", None)
    for kw, tag, _vr, typ in FIELDS:
        src = meta if tag >> 16 == 2 else ds
        elem = src.get(tag) if src is not None else None
        rec[kw] = normalize(elem.value if elem is not None else None, typ)
    if rec["TransferSyntaxUID"] is None:
        rec["TransferSyntaxUID"] = normalize(str(getattr(meta, "TransferSyntaxUID", "") or ""), "str") if meta else None
    for kw, group, creator, low, _vr, typ in PRIVATE_FIELDS:
        rec[kw] = None
        try:
            elem = ds.private_block(group, creator)[low]
            rec[kw] = normalize(elem.value, typ)
        except (KeyError, ValueError):
            pass
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    rec["enhanced"] = bool(per_frame is not None and len(per_frame) > 0)
    rec["frame_positions"] = None
    rec["frame_bvalues"] = None
    if rec["enhanced"]:
        geos = geometry.dataset_frame_geometries(ds)
        first = next((g for g in geos if g is not None), None)
        if first is not None:
            if rec["ImagePositionPatient"] is None:
                rec["ImagePositionPatient"] = [float(x) for x in first.position]
            if rec["ImageOrientationPatient"] is None:
                rec["ImageOrientationPatient"] = [float(x) for x in np.concatenate([first.row_cosine, first.column_cosine])]
            if rec["PixelSpacing"] is None:
                rec["PixelSpacing"] = [first.row_spacing, first.column_spacing]
        rec["frame_positions"] = [float(x) for g in geos if g is not None for x in g.position]
        bvals = _frame_bvalues(ds)
        if any(b is not None for b in bvals):
            rec["frame_bvalues"] = [float("nan") if b is None else b for b in bvals]
            if rec["DiffusionBValue"] is None:
                rec["DiffusionBValue"] = next(b for b in bvals if b is not None)
        if rec["SliceThickness"] is None:
            rec["SliceThickness"] = _functional_value(ds, "PixelMeasuresSequence", "SliceThickness")
        if rec["EchoTime"] is None:
            rec["EchoTime"] = _functional_value(ds, "MREchoSequence", "EffectiveEchoTime")
    return rec


def _functional_value(ds, seq: str, attr: str):
    """A value from the shared functional groups, else the first frame's."""
    for groups in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        items = ds.get(groups)
        if not items:
            continue
        inner = items[0].get(seq)
        if inner and attr in inner[0]:
            return normalize(inner[0][attr].value, "float")
    return None


def _frame_bvalues(ds) -> list:
    """DiffusionBValue (0018,9087) of every frame from MRDiffusionSequence (0018,9117)."""
    shared = ds.get("SharedFunctionalGroupsSequence")
    shared_b = None
    if shared and shared[0].get("MRDiffusionSequence"):
        shared_b = normalize(shared[0].MRDiffusionSequence[0].get("DiffusionBValue"), "float")
    out = []
    for item in ds.get("PerFrameFunctionalGroupsSequence") or []:
        diff = item.get("MRDiffusionSequence")
        b = None
        if diff and "DiffusionBValue" in diff[0]:
            b = normalize(diff[0]["DiffusionBValue"].value, "float")
        out.append(b if b is not None else shared_b)
    return out


def _empty_record() -> dict:
    rec = {kw: None for kw in FIELD_TYPES}
    rec.update(gzip=None, enhanced=False, is_dicomdir=False, frame_positions=None, frame_bvalues=None,
               reader=None, reason=None, retry=False)
    return rec


def read_instance(path: str | os.PathLike, *, fast: bool = True) -> dict:
    """Index fields of one file, or a record whose ``reason`` says why it is
    not an indexable instance. ``fast=False`` reads with pydicom only."""
    rec = _empty_record()
    path = str(path)
    name = os.path.basename(path)
    try:
        if fast:
            try:
                hf = read_header_fields(path, WANTED, stop_tag=STOP_TAG, private=PRIVATE_WANTED)
            except NeedsFullParse:
                hf = None
            except EOFError as exc:
                rec["reason"] = f"truncated file: {exc}"
                return rec
            if hf is not None and not _needs_pydicom(hf):
                for kw, value in hf.items():
                    rec[kw] = normalize(value, FIELD_TYPES[kw])
                rec["gzip"] = hf.gzip
                if rec["TransferSyntaxUID"] is None:
                    rec["TransferSyntaxUID"] = hf.transfer_syntax
                rec["reader"] = "walker"
                reason = _check_walked(path, rec, hf)
                if reason:
                    rec["reason"] = reason
                return _dicomdir_check(rec, name)
        ds = read_dataset(path, stop_before_pixels=True)
        rec.update(record_from_dataset(ds))
        rec["reader"] = "pydicom"
        rec["reason"] = pixel_decoding_problem(rec)
        return _dicomdir_check(rec, name)
    except UnreadableDicom as exc:
        rec["reason"] = str(exc)
        rec["retry"] = "permission" in str(exc)
        return rec
    except PermissionError:
        rec["reason"] = "no permission to read the file"
        rec["retry"] = True
        return rec
    except Exception as exc:  # a reader bug must not stop the run
        rec["reason"] = f"cannot parse DICOM header: {type(exc).__name__}: {exc}"
        return rec


def _needs_pydicom(hf) -> bool:
    """Functional-group (enhanced) or multi-frame files go to pydicom."""
    if hf.has_per_frame_groups:
        return True
    if not hf.stopped_early:
        return False
    sop = normalize(hf.get("SOPClassUID"), "str")
    frames = normalize(hf.get("NumberOfFrames"), "int")
    return sop in ENHANCED_SOP_CLASSES or (frames is not None and frames > 1)


def _check_walked(path: str, rec: dict, hf) -> str | None:
    """Reasons the walker finds a file unusable: no SOP class, truncated pixel data."""
    if rec["SOPClassUID"] is None and rec["MediaStorageSOPClassUID"] is None:
        return "not a DICOM file (no SOP Class UID)"
    if hf.has_pixel_data and hf.pixel_data_end is not None:
        size = hf.stream_size
        if hf.pixel_data_end > size and size >= 0:
            return (f"truncated file: Pixel Data (7FE0,0010) needs {hf.pixel_data_end} bytes, "
                    f"the file holds {size}")
    need = 0
    if hf.stopped_early and rec["TransferSyntaxUID"] in NATIVE_TS and rec["Rows"] and rec["Columns"] \
            and rec["BitsAllocated"]:
        need = (rec["Rows"] * rec["Columns"] * (rec["NumberOfFrames"] or 1) * (rec["SamplesPerPixel"] or 1)
                * rec["BitsAllocated"] // 8)
        size = hf.stream_size
        if hf.stop_pos + need > size:
            if not hf.gzip and not _pixel_tag_after(path, hf.stop_pos, rec["TransferSyntaxUID"]):
                return NO_PIXELS_REASON
            what = "the gzip size trailer says" if hf.gzip else "the file holds"
            return (f"truncated file: {rec['Rows']}x{rec['Columns']} pixels need at least "
                    f"{hf.stop_pos + need} bytes, {what} {size}")
    if hf.gzip:
        # an intact member's ISIZE is the stream size: past the header (and the
        # pixels, when native), at most GZIP_SLACK beyond, and within deflate's
        # maximal ratio; a truncated .gz file ends in 4 arbitrary bytes instead.
        low = (hf.stop_pos or hf.stream_end or 0) + need
        high = min(hf.compressed_size * 1032 + 1024, low + GZIP_SLACK if need else 1 << 32)
        if not low <= hf.stream_size <= high:
            return ("gzip-wrapped file is truncated or corrupt: its size trailer "
                    f"({hf.stream_size} bytes) does not fit the DICOM header")
    if not hf.has_pixel_data and not hf.stopped_early and hf.stream_end is not None \
            and is_image_sop_class(rec["SOPClassUID"] or ""):
        if rec["Rows"] and rec["Columns"] and rec["BitsAllocated"]:
            return NO_PIXELS_REASON        # the image description is complete: the pixels were left out
        return ("truncated or incomplete file: an image SOP class but the file ends before "
                "Pixel Data (7FE0,0010)")
    return pixel_decoding_problem(rec)


#: A complete DICOM file of an image SOP class without the pixels (a header-only export).
NO_PIXELS_REASON = ("no pixel data (7FE0,0010): a header without an image (an image SOP class whose "
                    "file holds no Pixel Data); not shipped")


def _pixel_tag_after(path: str, offset: int, transfer_syntax: str | None) -> bool:
    """Whether a Pixel Data (7FE0,0010) element header follows ``offset`` in an
    uncompressed file (so a short file is truncated rather than pixel-less)."""
    tag = b"\x7f\xe0\x00\x10" if transfer_syntax == "1.2.840.10008.1.2.2" else b"\xe0\x7f\x10\x00"
    try:
        with open(path, "rb") as fh:
            fh.seek(max(0, int(offset)))
            return tag in fh.read()
    except OSError:
        return True


@functools.lru_cache(maxsize=None)
def _decoder_problem(ts: str) -> str | None:
    """Why pixels in transfer syntax ``ts`` cannot be decoded here (None: they can)."""
    if ts in PROJECT_DECODED_TS:
        return None
    try:
        from pydicom.pixels.decoders.base import get_decoder
        from pydicom.uid import UID

        decoder = get_decoder(UID(ts))
    except NotImplementedError:
        return (f"unreadable pixels: transfer syntax {ts} (0002,0010) is unknown or has no pixel decoder; "
                "the file is not shipped (re-export it uncompressed or in a standard transfer syntax)")
    except Exception:  # noqa: BLE001 (a pydicom without the decoder registry: do not guess)
        return None
    if not decoder.is_available:
        return (f"unreadable pixels: no decoder for transfer syntax {ts} (0002,0010) is installed "
                "(pylibjpeg, pylibjpeg-openjpeg, pyjpegls); the file is not shipped")
    return None


def pixel_decoding_problem(rec: dict) -> str | None:
    """Reason an image's pixels cannot be decoded by its transfer syntax (0002,0010):
    unknown UIDs and syntaxes no installed decoder handles. Such a file would be
    de-identified and shipped, and dcm2niix would drop its slice silently."""
    ts = rec.get("TransferSyntaxUID")
    if not ts or not is_image_sop_class(rec.get("SOPClassUID") or rec.get("MediaStorageSOPClassUID") or ""):
        return None
    return _decoder_problem(str(ts))


def _dicomdir_check(rec: dict, name: str) -> dict:
    if rec["MediaStorageSOPClassUID"] == DICOMDIR_CLASS or (
            name.upper() == "DICOMDIR" and rec["SOPClassUID"] is None):
        rec["is_dicomdir"] = True
        rec["reason"] = DICOMDIR_REASON
    elif rec["reason"] is None and rec["SOPClassUID"] is None:
        rec["SOPClassUID"] = rec["MediaStorageSOPClassUID"]
    return rec


# --------------------------------------------------------------------------- discovery

@dataclass
class FoundFile:
    path: str
    relpath: str
    size: int
    mtime_ns: int


@dataclass
class WalkError:
    """An entry of the input tree that could not be listed or followed."""

    path: str
    relpath: str
    reason: str


def _walk_reason(exc: OSError, is_link: bool) -> str:
    if exc.errno == errno.ELOOP:
        return "symbolic link loop (the link points back to itself or a link cycle); not followed"
    if is_link and exc.errno == errno.ENOENT:
        return "broken symbolic link (its target does not exist)"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "no permission to list or read this entry"
    return f"cannot list or read this entry: {exc.strerror or exc}"


def discover(input_dir: str | os.PathLike) -> tuple[list[FoundFile], list[WalkError]]:
    """Every regular file under ``input_dir`` (os.scandir, recursive, sorted
    by relpath) and the entries that could not be listed or followed (symlink
    loops, unreadable folders), each with a reason."""
    root = os.path.abspath(str(input_dir))
    found: list[FoundFile] = []
    errors: list[WalkError] = []
    stack = [(root, "")]
    while stack:
        folder, rel = stack.pop()
        try:
            it = os.scandir(folder)
        except OSError as exc:
            errors.append(WalkError(folder, rel.rstrip("/") or ".", _walk_reason(exc, False)))
            continue
        with it:
            for entry in it:
                try:
                    if entry.is_dir(follow_symlinks=False):
                        stack.append((entry.path, rel + entry.name + "/"))
                    elif entry.is_file():
                        st = entry.stat()
                        found.append(FoundFile(entry.path, rel + entry.name, st.st_size, st.st_mtime_ns))
                    elif entry.is_symlink() and not os.path.exists(entry.path):
                        try:
                            os.stat(entry.path)
                        except OSError as exc:
                            errors.append(WalkError(entry.path, rel + entry.name, _walk_reason(exc, True)))
                except OSError as exc:
                    errors.append(WalkError(entry.path, rel + entry.name, _walk_reason(exc, entry.is_symlink())))
    found.sort(key=lambda f: f.relpath)
    errors.sort(key=lambda e: e.relpath)
    return found, errors


def clutter_reason(relpath: str) -> str | None:
    """Reason row for files never parsed: clutter suffixes (README, XML ...)."""
    name = relpath.rsplit("/", 1)[-1]
    low = name.lower()
    if low.endswith(".gz"):
        low = low[:-3]
    ext = os.path.splitext(low)[1]
    if ext in CLUTTER_SUFFIXES or low in ("license", "readme", "dirfile", "thumbs.db", ".ds_store"):
        return f"not DICOM: clutter ({ext or name} file), skipped without parsing"
    return None


# --------------------------------------------------------------------------- result

@dataclass
class IndexResult:
    input_dir: str
    out_dir: str
    layout: str
    n_files: int = 0
    n_instances: int = 0
    n_series: int = 0
    n_unreadable: int = 0
    n_parsed: int = 0
    n_cached: int = 0
    seconds: float = 0.0
    paths: dict = field(default_factory=dict)

    def summary(self) -> str:
        return (f"indexed {self.n_files} files in {self.seconds:.1f} s (layout {self.layout}): "
                f"{self.n_instances} instances in {self.n_series} series, {self.n_unreadable} "
                f"unreadable/skipped; parsed {self.n_parsed}, {self.n_cached} unchanged from cache "
                f"-> {index_dir(self.out_dir)}")


def _logger(log) -> logging.Logger:
    if isinstance(log, logging.Logger):
        return log
    from .logs import get_logger

    return get_logger("index", log, stderr=log is None)


# --------------------------------------------------------------------------- build

def _load_cache(path: Path) -> pd.DataFrame | None:
    if not path.is_file():
        return None
    try:
        cache = pd.read_parquet(path)
    except Exception:
        return None
    if not set(CACHE_COLUMNS) <= set(cache.columns) or "cache_version" not in cache.columns:
        return None  # written by another version: rebuild
    if len(cache) and int(cache["cache_version"].iloc[0]) != READER_VERSION:
        return None
    cache = cache.drop(columns=["cache_version"])
    return cache


def _parse_all(paths: list[str], workers: int) -> list[dict]:
    """:func:`read_instance` of ``paths``, in order; ``workers`` processes."""
    return map_chunked(read_instance, paths, workers, serial_below=64, chunk=(16, 256))


def build_index(
    input_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    layout: str = "auto",
    workers: int = 1,
    log=None,
) -> IndexResult:
    """Discover and index ``input_dir`` into ``out_dir/private/index/``.

    Writes ``instances.parquet``, ``series.parquet``, ``unreadable.csv`` and the
    cache ``cache.parquet``; returns counts. Unchanged files (path, size,
    mtime_ns) come from the cache without being parsed.
    """
    t0 = time.perf_counter()
    logger = _logger(log)
    if layout not in LAYOUTS:
        raise DicomprepError(f"layout: {layout!r} is not one of {', '.join(LAYOUTS)}; set config key `layout`.")
    root = Path(input_dir)
    if not root.is_dir():
        raise DicomprepError(f"input_dir {root} is not a folder; set `input_dir` to the folder of DICOM files.")
    root_abs = os.path.abspath(str(root))
    idx = index_dir(out_dir)
    idx.mkdir(parents=True, exist_ok=True)
    found, walk_errors = discover(root_abs)
    for err in walk_errors:
        logger.warning("skipped %s: %s", err.relpath, err.reason)

    walked = pd.DataFrame({
        "path": [f.path for f in found], "relpath": [f.relpath for f in found],
        "size": np.fromiter((f.size for f in found), dtype=np.int64, count=len(found)),
        "mtime_ns": np.fromiter((f.mtime_ns for f in found), dtype=np.int64, count=len(found)),
    })
    cache = _load_cache(idx / "cache.parquet")
    same = np.zeros(len(walked), dtype=bool)
    reused = None
    n_cache = 0
    if cache is not None and len(cache):
        n_cache = len(cache)
        retry = cache["retry"].to_numpy(dtype=bool)
        known = {p: (sz, mt, i) for i, (p, sz, mt, r) in enumerate(zip(
            cache["path"].tolist(), cache["size"].tolist(), cache["mtime_ns"].tolist(), retry)) if not r}
        rows = []
        for k, f in enumerate(found):
            hit = known.get(f.path)
            if hit is not None and hit[0] == f.size and hit[1] == f.mtime_ns:
                same[k] = True
                rows.append(hit[2])
        if rows:
            reused = cache.iloc[rows].reset_index(drop=True)
            reused["relpath"] = [found[k].relpath for k in np.flatnonzero(same)]

    state = _state(root_abs, layout)
    old_state = _state_matches(idx, state) if same.all() and n_cache == len(walked) else None
    if old_state is not None:
        state = old_state
        res = IndexResult(str(root_abs), str(out_dir), state["layout_used"], n_files=len(walked),
                          n_instances=state["n_instances"], n_series=state["n_series"],
                          n_unreadable=state["n_unreadable"], n_parsed=0, n_cached=len(walked),
                          seconds=time.perf_counter() - t0, paths=_paths(idx))
        logger.info("input unchanged since the last index (%d files): tables kept as they are", len(walked))
        return res

    todo = walked[~same]
    clutter = [clutter_reason(r) for r in todo["relpath"]]
    parse_paths = [p for p, c in zip(todo["path"], clutter) if c is None]
    logger.info("found %d files under %s: %d unchanged (cached), %d to read", len(walked), root_abs,
                int(same.sum()), len(parse_paths))
    n_clutter = sum(c is not None for c in clutter)
    if n_clutter:
        logger.info("%d non-DICOM file(s) (README, XML, JSON, NIfTI ...) listed in unreadable.csv, not parsed",
                    n_clutter)
    parsed = _parse_all(parse_paths, workers)
    by_path = dict(zip(parse_paths, parsed))
    new_rows = []
    for (path, rel, size, mtime), reason in zip(todo[["path", "relpath", "size", "mtime_ns"]].itertuples(index=False), clutter):
        rec = by_path.get(path)
        if rec is None:
            rec = _empty_record()
            rec["reason"] = reason
        rec.update(path=path, relpath=rel, size=int(size), mtime_ns=int(mtime))
        if rec.get("gzip") is None:
            rec["gzip"] = _is_gzip_quiet(path) if reason is None and rec["reason"] is None else False
        new_rows.append(rec)
        if rec["reason"] is not None and reason is None:
            logger.warning("skipped %s: %s", rel, rec["reason"])
    # cached rows come typed from Parquet; only new rows need typing
    new = _typed(pd.DataFrame(new_rows, columns=CACHE_COLUMNS)) if new_rows else None
    frames = [f for f in (reused, new) if f is not None and len(f)]
    if not frames:
        allrows = _typed(pd.DataFrame(columns=CACHE_COLUMNS))
    elif len(frames) == 1:
        allrows = frames[0][CACHE_COLUMNS]
    else:
        allrows = pd.concat(frames, ignore_index=True)[CACHE_COLUMNS]
    allrows = allrows.sort_values("relpath", kind="stable").reset_index(drop=True)

    ok = allrows["reason"].isna()
    instances = allrows[ok].drop(columns=["reason", "retry"]).reset_index(drop=True)
    unreadable = allrows.loc[~ok, ["path", "relpath", "reason"]].reset_index(drop=True)

    used_layout = layout
    if layout == "auto":
        used_layout = detect_layout_from_relpaths(list(instances["relpath"]), list(instances["StudyInstanceUID"]))
    instances = add_units(instances, layout, root_abs)
    instances["series_key"] = series_keys(instances)
    instances, duplicates = split_duplicates(instances)
    for r in duplicates.itertuples(index=False):
        logger.warning("skipped %s: %s", r.relpath, r.reason)
    series = build_series(instances)
    series = add_exclusions(series, instances, allrows.loc[~ok])
    instances = instances.merge(series[["series_key", "series_id"]], on="series_key", how="left")
    instances = instances[INSTANCE_COLUMNS]
    walk_rows = pd.DataFrame([(e.path, e.relpath, e.reason) for e in walk_errors], columns=["path", "relpath", "reason"])
    unreadable = pd.concat([f for f in (unreadable, duplicates, walk_rows) if len(f)] or [unreadable],
                           ignore_index=True).sort_values("relpath", kind="stable").reset_index(drop=True)

    state.update(layout_used=used_layout, n_instances=len(instances), n_series=len(series),
                 n_unreadable=len(unreadable))
    (idx / STATE_FILE).unlink(missing_ok=True)
    with atomic_path(idx / "cache.parquet") as t_cache, \
            atomic_path(idx / "instances.parquet") as t_inst, \
            atomic_path(idx / "series.parquet") as t_series, \
            atomic_path(idx / "unreadable.csv") as t_unr:
        allrows.assign(cache_version=READER_VERSION).to_parquet(t_cache, index=False)
        instances.to_parquet(t_inst, index=False)
        series.to_parquet(t_series, index=False)
        unreadable.to_csv(t_unr, index=False)
    write_text(idx / STATE_FILE, json.dumps(state, indent=1))

    res = IndexResult(str(root_abs), str(out_dir), used_layout, n_files=len(walked),
                      n_instances=len(instances), n_series=len(series), n_unreadable=len(unreadable),
                      n_parsed=len(parse_paths), n_cached=int(same.sum()),
                      seconds=time.perf_counter() - t0, paths=_paths(idx))
    for note_row in series.loc[series["notes"].fillna("") != "", ["orig_unit", "series_id", "notes"]].itertuples(index=False):
        if "Rows/Columns" in note_row.notes:
            logger.warning("series %s/%s: %s", note_row.orig_unit, note_row.series_id, note_row.notes)
    logger.info(res.summary())
    return res


def split_duplicates(instances: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Instances without repeated SOPInstanceUIDs, and ``path, relpath, reason`` rows for
    the repeats. Within one series, the first file by relpath keeps the
    SOPInstanceUID (0008,0018); every other file with it is left out ("duplicate
    SOPInstanceUID of <first file>"), so no stage ships the instance twice."""
    uid = instances["SOPInstanceUID"]
    dup = uid.notna() & instances.duplicated(["series_key", "SOPInstanceUID"], keep="first")
    if not dup.any():
        return instances, pd.DataFrame(columns=["path", "relpath", "reason"])
    first = (instances[uid.notna() & ~dup].set_index(["series_key", "SOPInstanceUID"])["relpath"])
    rows = instances.loc[dup, ["path", "relpath", "series_key", "SOPInstanceUID"]]
    reasons = [f"duplicate SOPInstanceUID of {first.get((k, u), '?')} (same series); the first file by path is kept"
               for k, u in zip(rows["series_key"], rows["SOPInstanceUID"])]
    out = rows[["path", "relpath"]].assign(reason=reasons).reset_index(drop=True)
    return instances[~dup].reset_index(drop=True), out


#: Reasons of files that never were instances of any series (not counted as missing).
_NOT_INSTANCE_PREFIXES = ("not DICOM: clutter", DICOMDIR_REASON, "not a DICOM file")


def add_exclusions(series: pd.DataFrame, instances: pd.DataFrame, unusable: pd.DataFrame) -> pd.DataFrame:
    """Columns ``n_excluded`` and ``excluded_files`` of the series table: the files of a
    series that are not among its instances because they cannot be used (truncated,
    no pixel data, undecodable transfer syntax ...), as ``name (reason)``.

    A file belongs to a series by its own header (SeriesInstanceUID + SeriesNumber
    within the folder's series) when that could be read, else by its folder when
    every instance in that folder is of one series. Empty (0-byte) files, clutter,
    DICOMDIRs, files that are no DICOM, and copies of an instance the series has
    (same SOPInstanceUID) are not counted. A converter given ``excluded_files``
    reports its output as built from fewer instances than the series has.
    """
    series = series.copy()
    series["n_excluded"] = 0
    series["excluded_files"] = ""
    if unusable is None or not len(unusable) or not len(instances):
        return series
    folder_of = instances["relpath"].map(lambda r: r.rsplit("/", 1)[0] if "/" in r else "")
    by_folder: dict[str, set] = {}
    for folder, key in zip(folder_of, instances["series_key"]):
        by_folder.setdefault(folder, set()).add(key)
    uid_of = dict(zip(series["series_key"], series["SeriesInstanceUID"]))
    number_of = dict(zip(series["series_key"], series["SeriesNumber"]))
    sops = instances.groupby("series_key")["SOPInstanceUID"].agg(lambda v: set(v.dropna()))
    found: dict[str, list[str]] = {}
    for r in unusable.to_dict("records"):
        reason = str(r.get("reason") or "")
        if not reason or reason.startswith(_NOT_INSTANCE_PREFIXES) or int(r.get("size") or 0) == 0:
            continue
        rel = str(r["relpath"])
        keys = by_folder.get(rel.rsplit("/", 1)[0] if "/" in rel else "", set())
        uid, number = r.get("SeriesInstanceUID"), r.get("SeriesNumber")
        if isinstance(uid, str) and uid:
            keys = {k for k in keys if uid_of.get(k) == uid}
            if len(keys) > 1 and not _na(number):
                keys = {k for k in keys if number_of.get(k) == number}
        if len(keys) != 1:
            continue
        key = next(iter(keys))
        if r.get("SOPInstanceUID") and r.get("SOPInstanceUID") in sops.get(key, set()):
            continue                                     # a (broken) copy of an instance the series has
        found.setdefault(key, []).append(f"{rel.rsplit('/', 1)[-1]}: {' '.join(reason.split())}")
    if found:
        series["n_excluded"] = series["series_key"].map(lambda k: len(found.get(k, []))).astype("int64")
        series["excluded_files"] = series["series_key"].map(lambda k: "\n".join(found.get(k, [])))
    return series


def split_excluded(text) -> list[tuple[str, str]]:
    """``(file name, reason)`` of each line of an ``excluded_files`` cell."""
    if text is None or (isinstance(text, float) and text != text):
        return []
    out = []
    for line in str(text).splitlines():
        name, _, reason = line.partition(": ")
        if line.strip():
            out.append((name.strip(), reason.strip()))
    return out


def partial_reason(n_used: int, excluded_files) -> str:
    """Reason of an output built from fewer files than its series has (the series'
    ``excluded_files``), or '' when none is missing. It gives the reasons, not
    the file names (input names stay private: they are in unreadable.csv and the
    logs), so the sentence is safe for share/ tables."""
    items = split_excluded(excluded_files)
    if not items:
        return ""
    counts: dict[str, int] = {}
    for _name, reason in items:
        counts[reason] = counts.get(reason, 0) + 1
    why = "; ".join(f"{n}× {r}" if n > 1 else r for r, n in counts.items())
    return (f"partial: built from {n_used} file(s); {len(items)} file(s) of the series could not be used "
            f"(the private index lists them in unreadable.csv): {why}")


def excluded_names(excluded_files) -> str:
    """The file names of an ``excluded_files`` cell, comma-separated (for private logs)."""
    return ", ".join(name for name, _ in split_excluded(excluded_files))


STATE_FILE = "index_state.json"
#: Bump when the tables' content rules change: an unchanged tree is re-indexed then.
INDEX_VERSION = 3
#: Bump when what a file's row holds changes (reader fixes): every file is read again.
READER_VERSION = 2


def _code_fingerprint() -> str:
    """sha1 of the modules that shape the tables: new code rebuilds them."""
    h = hashlib.sha1()
    here = Path(__file__).resolve().parent
    for name in ("index.py", "layout.py", "dicomio.py", "geometry.py"):
        try:
            h.update((here / name).read_bytes())
        except OSError:
            pass
    return h.hexdigest()[:16]


def _state(root_abs: str, layout: str) -> dict:
    return {"version": INDEX_VERSION, "code": _code_fingerprint(), "input_dir": root_abs, "layout": layout}


def _state_matches(idx: Path, state: dict) -> dict | None:
    """True when the tables were written for the same input, layout and code
    version and are all present (then an unchanged tree needs no rewrite):
    the recorded state, else None."""
    try:
        old = json.loads((idx / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None
    if any(old.get(k) != v for k, v in state.items()):
        return None
    if not all((idx / n).is_file() for n in ("instances.parquet", "series.parquet", "unreadable.csv")):
        return None
    return old


def _paths(idx: Path) -> dict:
    return {k: str(idx / v) for k, v in (("instances", "instances.parquet"), ("series", "series.parquet"),
                                         ("unreadable", "unreadable.csv"), ("cache", "cache.parquet"))}


def _is_gzip_quiet(path: str) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(2) == GZIP_MAGIC
    except OSError:
        return False


def _typed(df: pd.DataFrame) -> pd.DataFrame:
    """Stable column dtypes (nullable ints, floats, bools) for Parquet."""
    df = df.copy()
    for c in _INT_COLUMNS:
        if df[c].dtype != "Int64":
            df[c] = pd.array([None if _na(v) else int(v) for v in df[c]], dtype="Int64")
    for c in _FLOAT_COLUMNS:
        df[c] = pd.to_numeric(df[c], errors="coerce").astype("float64")
    for c in ("size", "mtime_ns"):
        df[c] = df[c].astype("int64")
    for c in ("gzip", "enhanced", "is_dicomdir", "retry"):
        df[c] = df[c].fillna(False).astype(bool)
    for c in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing",
              "DiffusionGradientOrientation", "frame_positions", "frame_bvalues"):
        df[c] = [v if isinstance(v, list) else None if _na(v) else list(map(float, v)) for v in df[c]]
    return df


def add_units(instances: pd.DataFrame, layout: str, input_dir: str) -> pd.DataFrame:
    """Add orig_group/sequence/subject/scan/unit (layout.py) to instance rows."""
    instances = instances.copy()
    cols = ["PatientID", "IssuerOfPatientID", "StudyInstanceUID"]
    headers = [dict(zip(cols, vals)) for vals in zip(*(instances[c].tolist() for c in cols))]
    keys = assign_units(list(instances["relpath"]), headers, layout, input_dir)
    arr = np.array(keys, dtype=object).reshape(-1, 4) if keys else np.empty((0, 4), dtype=object)
    for i, c in enumerate(UNIT_COLUMNS[:4]):
        instances[c] = arr[:, i] if len(arr) else pd.Series([], dtype=object)
    instances["orig_unit"] = ["/".join(k) for k in keys]
    return instances


def series_keys(instances: pd.DataFrame) -> list[str]:
    """:func:`series_key` of every instance row (memoised per distinct triple)."""
    cache: dict = {}
    keys = []
    for u, s, n, sop in zip(instances["orig_unit"].tolist(), instances["SeriesInstanceUID"].tolist(),
                            instances["SeriesNumber"].tolist(), instances["SOPClassUID"].tolist()):
        apart = None if _na(sop) or is_image_sop_class(sop) else sop
        k = (u, s, n, apart)
        v = cache.get(k)
        if v is None:
            v = cache[k] = series_key(u, None if _na(s) else s, None if _na(n) else n, apart)
        keys.append(v)
    return keys


def is_image_sop_class(sop: str) -> bool:
    """Standard image storage SOP classes (PS3.4 B.5, 1.2.840.10008.5.1.4.1.1.*)
    other than presentation states, SR and Raw Data."""
    return (sop.startswith(IMAGE_SOP_PREFIX) and not sop.startswith((SR_PREFIX, PR_PREFIX))
            and sop != RAW_DATA_CLASS and not sop.startswith("1.2.840.10008.5.1.4.1.1.9."))


def series_key(orig_unit: str, series_uid, series_number, apart_sop_class: str | None = None) -> str:
    """sha1 of (orig_unit, SeriesInstanceUID, SeriesNumber), 12 hex digits.

    Non-image objects (private SOP classes, presentation states, SR, raw
    data) that share an image series' UID and number (Philips writes them so)
    get their own series: their SOP class UID is hashed too
    (``apart_sop_class``)."""
    sn = "" if series_number is None or pd.isna(series_number) else str(int(series_number))
    parts = [orig_unit, "" if series_uid is None or pd.isna(series_uid) else str(series_uid), sn]
    if apart_sop_class:
        parts.append(apart_sop_class)
    text = "\n".join(parts)
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:12]


# --------------------------------------------------------------------------- series

SEG_CLASSES = {"1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.66.7"}
DOSE_SR_CLASSES = {"1.2.840.10008.5.1.4.1.1.88.67", "1.2.840.10008.5.1.4.1.1.88.68"}
RAW_DATA_CLASS = "1.2.840.10008.5.1.4.1.1.66"
PR_PREFIX = "1.2.840.10008.5.1.4.1.1.11."
SR_PREFIX = "1.2.840.10008.5.1.4.1.1.88."
SC_PREFIX = "1.2.840.10008.5.1.4.1.1.7"
STANDARD_PREFIX = "1.2.840.10008."
IMAGE_SOP_PREFIX = "1.2.840.10008.5.1.4.1.1."
#: ImageType (0008,0008) values of scanner-derived diffusion maps.
DERIVED_DIFFUSION_MAPS = {"ADC", "EADC", "FA", "TRACEW", "TRACE", "EXP", "CALC_BVALUE", "ISOTROPIC"}


def classify_series(*, modality: str | None, sop_class: str | None, image_type: str | None,
                    description: str | None, n_images: int, orientation: str,
                    bvalues: Sequence[float], sequence_name: str | None, has_rows: bool) -> str:
    """``kind`` of a series (docs/contracts.md), first rule that holds:

    seg (SOP classes Segmentation / Label Map Segmentation, or Modality SEG);
    presentation_state (SOP 1.2.840.10008.5.1.4.1.1.11.*, Modality PR);
    dose_report (Radiation Dose SR SOP classes, or SR / secondary capture
    whose ImageType (0008,0008) or SeriesDescription says DOSE); structured_report
    (other SR SOP classes, Modality SR); raw (Raw Data SOP class, or a private
    SOP class outside 1.2.840.10008); localizer (ImageType LOCALIZER/SCOUT,
    or CT with 1-3 images not axial); secondary_capture (SOP 1.2.840.10008.5.1.4.1.1.7*);
    mr for scanner-derived diffusion maps (ImageType DERIVED with ADC, FA,
    TRACEW ...); dwi (MR with a non-zero DiffusionBValue (0018,9087), more than one b-value,
    ImageType DIFFUSION, or a Siemens ``*ep_b<n>`` SequenceName); mr; ct_axial
    (CT whose slice normal is axial, geometry.is_axial) / ct_other; pt; nm;
    other_image (has Rows); other.
    """
    mod = (modality or "").upper()
    sop = sop_class or ""
    itype = (image_type or "").upper().split("\\")
    desc = (description or "").upper()
    if sop in SEG_CLASSES or mod == "SEG":
        return "seg"
    if sop.startswith(PR_PREFIX) or mod == "PR":
        return "presentation_state"
    is_sc = sop.startswith(SC_PREFIX)
    if sop in DOSE_SR_CLASSES or ((sop.startswith(SR_PREFIX) or mod == "SR" or is_sc)
                                  and ("DOSE" in desc or any("DOSE" in t for t in itype))):
        return "dose_report"
    if sop.startswith(SR_PREFIX) or mod == "SR":
        return "structured_report"
    if sop == RAW_DATA_CLASS or (sop and not sop.startswith(STANDARD_PREFIX)):
        return "raw"
    if "LOCALIZER" in itype or "SCOUT" in itype or (mod == "CT" and 1 <= n_images <= 3 and orientation not in ("axial", "none")):
        return "localizer"
    if is_sc:
        return "secondary_capture"
    if mod == "MR":
        import re

        if "DERIVED" in itype and any(t in DERIVED_DIFFUSION_MAPS for t in itype):
            return "mr"   # scanner-computed ADC / FA / trace map: an image, not a diffusion series
        b = [x for x in bvalues if x is not None and not np.isnan(x)]
        if (b and max(b) > 0) or len(set(np.round(b, 3))) > 1 or "DIFFUSION" in itype or \
                re.search(r"ep_b\d", sequence_name or ""):
            return "dwi"
        return "mr"
    if mod == "CT":
        return "ct_axial" if orientation == "axial" else "ct_other"
    if mod == "PT":
        return "pt"
    if mod == "NM":
        return "nm"
    return "other_image" if has_rows else "other"


def _floats(v) -> np.ndarray | None:
    if v is None or (not isinstance(v, (list, np.ndarray)) and pd.isna(v)):
        return None
    a = np.asarray(v, dtype=float)
    return a if a.size else None


def build_series(instances: pd.DataFrame) -> pd.DataFrame:
    """One row per series (columns SERIES_COLUMNS) from the instance rows,
    which must carry the unit columns. Adds ``series_key`` to nothing; the
    key is computed here from (orig_unit, SeriesInstanceUID, SeriesNumber)."""
    if not len(instances):
        return pd.DataFrame(columns=SERIES_COLUMNS)
    inst = instances
    keys = inst["series_key"] if "series_key" in inst else series_keys(inst)
    key_arr = np.asarray(keys, dtype=object)
    col = {c: inst[c].to_numpy(dtype=object) for c in (
        "orig_group", "orig_sequence", "orig_subject", "orig_scan", "orig_unit", "SeriesInstanceUID",
        "SeriesNumber", "SeriesDescription", "Modality", "SOPClassUID", "PatientID", "IssuerOfPatientID",
        "StudyInstanceUID", "StudyDate", "Manufacturer", "ImageType", "NumberOfFrames", "enhanced", "Rows",
        "Columns", "ImageOrientationPatient", "ImagePositionPatient", "DiffusionBValue", "frame_positions",
        "frame_bvalues", "SequenceName", "InstanceNumber", "relpath", "PrivateBValue")}
    order = np.lexsort((col["relpath"].astype(str),
                        np.array([np.inf if v is None or v is pd.NA else v for v in col["InstanceNumber"]], dtype=float),
                        key_arr.astype(str)))
    rows = []
    sorted_keys = key_arr[order]
    bounds = np.flatnonzero(sorted_keys[1:] != sorted_keys[:-1]) + 1
    for idx in np.split(order, bounds):
        rows.append(_series_row(key_arr[idx[0]], idx, col))
    series = pd.DataFrame(rows, columns=SERIES_COLUMNS)
    series = _series_ids(series)
    series["SeriesNumber"] = series["SeriesNumber"].astype("Int64")
    for c in ("n_instances", "n_frames", "n_duplicates", "n_missing", "n_bvalues"):
        series[c] = series[c].astype("int64")
    for c in ("Rows", "Columns"):
        series[c] = series[c].astype("Int64")
    for c in ("slice_spacing", "spacing_min", "spacing_max", "tilt_deg"):
        series[c] = series[c].astype("float64")
    return series.sort_values(["orig_unit", "series_id"], kind="stable").reset_index(drop=True)


def _na(v) -> bool:
    return v is None or v is pd.NA or (isinstance(v, float) and np.isnan(v))


def _series_row(key: str, idx: np.ndarray, col: dict) -> dict:
    first = idx[0]
    notes: list[str] = []
    n_inst = len(idx)
    frames = [1 if _na(col["NumberOfFrames"][i]) else int(col["NumberOfFrames"][i]) for i in idx]
    enhanced = bool(any(col["enhanced"][i] for i in idx))
    rows = [None if _na(col["Rows"][i]) else int(col["Rows"][i]) for i in idx]
    cols_ = [None if _na(col["Columns"][i]) else int(col["Columns"][i]) for i in idx]
    matrices = {(r, c) for r, c in zip(rows, cols_) if r is not None or c is not None}
    consistent = len(matrices) <= 1
    if not consistent:
        shown = ", ".join(f"{r}x{c}" for r, c in sorted(matrices, key=str))
        notes.append(f"instances disagree on Rows/Columns (0028,0010/0011): {shown}")
    main_matrix = max(matrices, key=lambda m: sum(1 for r, c in zip(rows, cols_) if (r, c) == m)) if matrices else (None, None)
    # Geometry: positions along the normal of the first oriented instance.
    iops = [(i, _floats(col["ImageOrientationPatient"][i])) for i in idx]
    iops = [(i, o) for i, o in iops if o is not None and o.size == 6]
    orientation = "none"
    report = None
    if iops:
        iop0 = iops[0][1]
        try:
            normal = geometry.slice_normal(iop0)
            orientation = geometry.orientation_label(iop0)
        except ValueError:
            normal = None
            notes.append("ImageOrientationPatient (0020,0037) row and column cosines are parallel")
        if normal is not None:
            arr = np.stack([o for _i, o in iops])
            close = np.abs(arr - iop0).max(axis=1) <= 1e-4
            same = [i for (i, _o), c in zip(iops, close) if c]
            if len(same) < len(iops):
                notes.append(f"{len(iops) - len(same)} instance(s) with another orientation")
            positions = []
            for i in same:
                fp = _floats(col["frame_positions"][i])
                if fp is not None and fp.size >= 3:
                    positions.extend(fp.reshape(-1, 3))
                else:
                    p = _floats(col["ImagePositionPatient"][i])
                    if p is not None and p.size == 3:
                        positions.append(p)
            if positions:
                report = geometry.stack_report(np.array(positions), normal)
                notes.extend(report.notes)
    elif any(r for r in rows):
        notes.append("no geometry (ImageOrientationPatient missing)")
    bvals: list[float] = []
    for i in idx:
        fb = _floats(col["frame_bvalues"][i])
        if fb is not None:
            bvals.extend(float(x) for x in fb if not np.isnan(x))
        elif not _na(col["DiffusionBValue"][i]):
            bvals.append(float(col["DiffusionBValue"][i]))
        elif not _na(col["PrivateBValue"][i]):
            bvals.append(float(col["PrivateBValue"][i]))
    n_bvalues = len(set(np.round(bvals, 3))) if bvals else 0

    def first_of(name):
        v = col[name][first]
        return None if _na(v) else v

    kind = classify_series(
        modality=first_of("Modality"), sop_class=first_of("SOPClassUID"), image_type=first_of("ImageType"),
        description=first_of("SeriesDescription"), n_images=sum(frames), orientation=orientation,
        bvalues=bvals, sequence_name=first_of("SequenceName"), has_rows=any(r for r in rows))
    itype0 = (first_of("ImageType") or "").upper().split("\\")
    if kind == "mr" and "DERIVED" in itype0 and any(t in DERIVED_DIFFUSION_MAPS for t in itype0):
        notes.append("scanner-derived diffusion map (ImageType " + "\\".join(itype0) + ")")
    sop_set = {col["SOPClassUID"][i] for i in idx}
    if len(sop_set) > 1:
        notes.append(f"{len(sop_set)} SOP classes in one series")
    nan = float("nan")
    return {
        "orig_group": first_of("orig_group"), "orig_sequence": first_of("orig_sequence"),
        "orig_subject": first_of("orig_subject"), "orig_scan": first_of("orig_scan"),
        "orig_unit": first_of("orig_unit"), "series_key": key, "series_id": None,
        "SeriesInstanceUID": first_of("SeriesInstanceUID"), "SeriesNumber": first_of("SeriesNumber"),
        "SeriesDescription": first_of("SeriesDescription"), "Modality": first_of("Modality"),
        "SOPClassUID": first_of("SOPClassUID"), "PatientID": first_of("PatientID"),
        "IssuerOfPatientID": first_of("IssuerOfPatientID"), "StudyInstanceUID": first_of("StudyInstanceUID"),
        "StudyDate": first_of("StudyDate"), "Manufacturer": first_of("Manufacturer"),
        "ImageType": first_of("ImageType"), "n_instances": n_inst, "n_frames": int(sum(frames)),
        "enhanced": enhanced, "Rows": main_matrix[0], "Columns": main_matrix[1],
        "matrix_consistent": consistent, "orientation": orientation,
        "slice_spacing": report.spacing if report else nan,
        "spacing_regular": bool(report.regular) if report else None,
        "spacing_min": report.spacing_min if report else nan,
        "spacing_max": report.spacing_max if report else nan,
        "n_duplicates": report.n_duplicates if report else 0,
        "n_missing": report.n_missing if report else 0,
        "tilt_deg": report.tilt_deg if report else nan,
        "n_bvalues": n_bvalues, "kind": kind, "notes": "; ".join(notes),
    }


def _series_ids(series: pd.DataFrame) -> pd.DataFrame:
    """``s{SeriesNumber:03d}``, with ``-{series_key[:4]}`` when two series of a
    unit share it; ``sNA-{key[:4]}`` without a SeriesNumber."""
    base = [f"s{int(n):03d}" if not _na(n) else "sNA" for n in series["SeriesNumber"]]
    series = series.copy()
    series["_base"] = base
    dup = series.duplicated(["orig_unit", "_base"], keep=False) | (series["_base"] == "sNA")
    series["series_id"] = [f"{b}-{k[:4]}" if d else b for b, k, d in zip(base, series["series_key"], dup)]
    # 4 hex digits could still collide within a unit: fall back to the full key
    dup2 = series.duplicated(["orig_unit", "series_id"], keep=False)
    series.loc[dup2, "series_id"] = [f"{b}-{k}" for b, k in zip(series.loc[dup2, "_base"], series.loc[dup2, "series_key"])]
    return series.drop(columns=["_base"])
