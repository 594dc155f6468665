"""Reading one file into an index record: the header columns of ``instances.parquet``.

Reading uses the lean tag walker :func:`dicomio.read_header_fields` (several
times faster than pydicom) and falls back to pydicom for what it leaves aside:
enhanced multi-frame files (per-frame functional groups, PS3.3 C.7.6.16, whose
per-frame geometry comes from :func:`geometry.dataset_frame_geometries`),
deflated transfer syntaxes, ISO 2022 character sets. Both give identical
values (tests/test_index.py). Bad input (zero-length, truncated, not DICOM, no
read permission, image attributes without Pixel Data, DICOMDIR media
directories) gives a record with a ``reason``, never an exception.
"""
from __future__ import annotations

import functools
import mmap
import os
import struct
from typing import Any

import numpy as np
import pandas as pd

from . import dicomio_walk, geometry
from .dicomio import GZIP_MAGIC, NeedsFullParse, read_dataset, read_header_fields
from .errors import UnreadableDicom

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
DICOMDIR_CLASS = "1.2.840.10008.1.3.10"
DICOMDIR_REASON = "DICOMDIR (media directory), not an image"


# --------------------------------------------------------------------------- SOP classes (PS3.4 B.5)

#: Segmentation Storage and Label Map Segmentation Storage (PS3.4 B.5).
SEG_CLASSES = frozenset({"1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.66.7"})
DOSE_SR_CLASSES = {"1.2.840.10008.5.1.4.1.1.88.67", "1.2.840.10008.5.1.4.1.1.88.68"}
RAW_DATA_CLASS = "1.2.840.10008.5.1.4.1.1.66"
PR_PREFIX = "1.2.840.10008.5.1.4.1.1.11."
SR_PREFIX = "1.2.840.10008.5.1.4.1.1.88."
SC_PREFIX = "1.2.840.10008.5.1.4.1.1.7"
STANDARD_PREFIX = "1.2.840.10008."
IMAGE_SOP_PREFIX = "1.2.840.10008.5.1.4.1.1."


def is_image_sop_class(sop: str) -> bool:
    """Standard image storage SOP classes (PS3.4 B.5, 1.2.840.10008.5.1.4.1.1.*)
    other than presentation states, SR and Raw Data."""
    return (sop.startswith(IMAGE_SOP_PREFIX) and not sop.startswith((SR_PREFIX, PR_PREFIX))
            and sop != RAW_DATA_CLASS and not sop.startswith("1.2.840.10008.5.1.4.1.1.9."))


# --------------------------------------------------------------------------- values

def is_na(v) -> bool:
    """None, pandas NA or a float NaN (an empty table cell)."""
    return v is None or v is pd.NA or (isinstance(v, float) and np.isnan(v))


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


def empty_record() -> dict:
    """The record of a file not read (yet): no header values, no reason."""
    rec = {kw: None for kw in FIELD_TYPES}
    rec.update(gzip=None, enhanced=False, is_dicomdir=False, frame_positions=None, frame_bvalues=None,
               reader=None, reason=None, retry=False)
    return rec


def read_instance(path: str | os.PathLike, *, fast: bool = True) -> dict:
    """Index fields of one file, or a record whose ``reason`` says why it is
    not an indexable instance. ``fast=False`` reads with pydicom only."""
    rec = empty_record()
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
        rec["reason"] = _file_truncation(path, rec["TransferSyntaxUID"]) or pixel_decoding_problem(rec)
        return _dicomdir_check(rec, name)
    except UnreadableDicom as exc:
        rec["retry"] = "permission" in str(exc)
        # pydicom's own words for a short file are an offset; the walker names the element
        rec["reason"] = (None if rec["retry"] else _file_truncation(path, None, known_dicom=False)) or str(exc)
        return rec
    except PermissionError:
        rec["reason"] = "no permission to read the file"
        rec["retry"] = True
        return rec
    except Exception as exc:  # a reader bug must not stop the run
        rec["reason"] = (_file_truncation(path, None, known_dicom=False)
                         or f"cannot parse DICOM header: {type(exc).__name__}: {exc}")
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
                return _tail_truncation(path, hf.stop_pos, rec["TransferSyntaxUID"]) or NO_PIXELS_REASON
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


def _tail_truncation(path: str, offset: int, transfer_syntax: str | None) -> str | None:
    """Why an uncompressed file without Pixel Data is truncated rather than a complete
    header-only file: the elements after ``offset`` (where the header reader stopped)
    do not end exactly at the end of the file (PS3.5 7.1: each element's length is in
    its header, an undefined length ends at its delimiter, PS3.5 7.5). None when they do."""
    implicit = transfer_syntax == dicomio_walk.TS_IMPLICIT_LE
    little = transfer_syntax != dicomio_walk.TS_EXPLICIT_BE
    try:
        with open(path, "rb") as fh:
            fh.seek(max(0, int(offset)))
            tail = fh.read()
    except OSError:
        return None
    cut = _cut_short(tail, 0, implicit, little)
    return f"truncated file: {cut} and there is no Pixel Data (7FE0,0010)" if cut else None


def _cut_short(data, pos: int, implicit: bool, little: bool) -> str | None:
    """Where the data set from ``pos`` runs past the end of ``data`` (a value longer
    than what is left, an element header cut in two, an undefined length without its
    delimiter), or None: it ends exactly at the end, or holds something the walker
    does not read (then nothing is claimed)."""
    try:
        dicomio_walk.walk_elements(data, pos, len(data), implicit, False, little)
    except dicomio_walk.WalkTruncated as exc:
        return f"the data set is cut short: {exc}"
    except struct.error:
        return "the data set is cut short inside an element header"
    except dicomio_walk.WalkError:
        return None
    return None


def _file_truncation(path: str, transfer_syntax: str | None, *, known_dicom: bool = True) -> str | None:
    """Why a file read by pydicom (which stops before the pixels and does not notice
    a short file) is truncated: its top-level elements, Pixel Data (7FE0,0010)
    included, run past the end of the file. Memory-mapped: only element headers are
    read, not the values. Gzip-wrapped and deflated files are left to their
    decompressor, which reports a short stream itself. With ``known_dicom`` false
    (pydicom could not read the file) only a file with the PS3.10 preamble and
    ``DICM`` prefix is judged, so other bytes are never called a truncated DICOM file."""
    if transfer_syntax and dicomio_walk.is_deflated(transfer_syntax):
        return None
    try:
        with open(path, "rb") as fh:
            if fh.read(2) == GZIP_MAGIC or os.fstat(fh.fileno()).st_size == 0:
                return None
            with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as data:
                if not known_dicom and data[128:132] != b"DICM":
                    return None
                try:
                    pos, written = dicomio_walk.data_set_encoding(data)
                except (dicomio_walk.WalkError, struct.error, UnicodeDecodeError):
                    return None
                transfer_syntax = transfer_syntax or written
                if dicomio_walk.is_deflated(transfer_syntax):
                    return None
                cut = _cut_short(data, pos, transfer_syntax == dicomio_walk.TS_IMPLICIT_LE,
                                 transfer_syntax != dicomio_walk.TS_EXPLICIT_BE)
    except (OSError, ValueError):
        return None
    return f"truncated file: {cut}" if cut else None


def _pixel_tag_after(path: str, offset: int, transfer_syntax: str | None) -> bool:
    """Whether a Pixel Data (7FE0,0010) element header follows ``offset`` in an
    uncompressed file (so a short file is truncated rather than pixel-less)."""
    tag = b"\x7f\xe0\x00\x10" if transfer_syntax == dicomio_walk.TS_EXPLICIT_BE else b"\xe0\x7f\x10\x00"
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
