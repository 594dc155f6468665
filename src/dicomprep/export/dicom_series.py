"""An array + geometry + template series → a new derived DICOM series.

Used for results that go back to a PACS as images: the resampled CT volume of
:mod:`dicomprep.convert.ncct` (:func:`ct_nifti_to_series`), or any array on
any grid (:func:`write_series`, and ``open_index(...).new_series``).

**Classic single-frame images, not Enhanced CT/MR.** Every PACS, viewer and
converter (dcm2niix included) reads classic CT Image Storage
(1.2.840.10008.5.1.4.1.1.2) and MR Image Storage (…4); Enhanced CT needs a
dimension organisation and per-frame functional groups that several readers
still handle only partly, and a derived volume gains nothing from them. The
SOP class follows the template's modality (CT → CT Image, MR → MR Image).

Geometry (PS3.3 C.7.6.2, conventions of :mod:`dicomprep.geometry`): the
array is ``[i, j, k]`` with a RAS affine (NIfTI). Slice ``k`` is the frame
``array[:, :, k].T`` (rows = j, columns = i); ImageOrientationPatient is the
LPS direction of i then of j; PixelSpacing is [|j step|, |i step|];
ImagePositionPatient of slice k is ``origin + k × (k step)``.

Pixel values: integer arrays within int16 are stored as they are (signed,
RescaleSlope 1, RescaleIntercept 0, RescaleType HU for CT); other arrays
are quantised to int16 with a slope and intercept chosen from their range.

Header: patient, study, frame of reference and equipment attributes come from
the template (the de-identified copy, so nothing identifying is added); new
SeriesInstanceUID / SOPInstanceUIDs are keyed pseudonyms of the template's
series UID and the new series' ``name`` under the project secret, and dates
and times are the template's: the same input and secret give byte-identical
files.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import nibabel as nib
import numpy as np
import pandas as pd
from pydicom.charset import convert_encodings
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element, write_file_meta_info
from pydicom.uid import ExplicitVRLittleEndian
from pydicom.valuerep import format_number_as_ds

from .. import geometry
from ..dicomio import atomic_write, read_dataset
from ..deid.pseudonym import uid_pseudonym
from ..errors import DicomprepError
from ..version import __version__

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
SOP_CLASS_BY_MODALITY = {"CT": CT_IMAGE_STORAGE, "MR": MR_IMAGE_STORAGE}
#: Implementation Class UID (0002,0012) of files dicomprep writes (a fixed 2.25 UUID-derived UID).
IMPLEMENTATION_CLASS_UID = "2.25.160403948183150911410325823361283011873"
#: Attributes copied from the template (patient, study, frame of reference,
#: equipment, acquisition context). Nothing else of the template is kept.
TEMPLATE_KEYWORDS = (
    "SpecificCharacterSet",
    # Patient (C.7.1.1) and Clinical Trial Subject (C.7.1.3)
    "PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex", "PatientIdentityRemoved",
    "DeidentificationMethod", "DeidentificationMethodCodeSequence", "LongitudinalTemporalInformationModified",
    "ClinicalTrialSponsorName", "ClinicalTrialProtocolID", "ClinicalTrialProtocolName", "ClinicalTrialSiteID",
    "ClinicalTrialSiteName", "ClinicalTrialSubjectID", "ClinicalTrialSubjectReadingID",
    # General Study (C.7.2.1), Patient Study (C.7.2.2), Clinical Trial Study
    "StudyInstanceUID", "StudyDate", "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber",
    "StudyDescription", "PatientAge", "PatientSize", "PatientWeight", "ClinicalTrialTimePointID",
    # General Series bits that describe the acquisition context
    "Modality", "BodyPartExamined", "PatientPosition", "SeriesDate", "SeriesTime", "Laterality",
    # Frame of Reference (C.7.4.1): same patient coordinate system as the source
    "FrameOfReferenceUID", "PositionReferenceIndicator",
    # General Equipment (C.7.5.1)
    "Manufacturer", "ManufacturerModelName", "InstitutionName",
    # CT Image (C.8.2.1) / MR Image (C.8.3.1) acquisition parameters (Type 2 there)
    "KVP", "ScanningSequence", "SequenceVariant", "ScanOptions", "MRAcquisitionType", "EchoTime",
    "RepetitionTime", "EchoTrainLength", "MagneticFieldStrength", "ImagingFrequency", "ImagedNucleus",
    "ContrastBolusAgent",
)
#: Template attributes that must not be empty when copied (the IOD's Type 1).
_TYPE1 = ("StudyInstanceUID", "FrameOfReferenceUID", "Modality")


class SeriesWriteError(DicomprepError):
    """A derived series cannot be written; the message says why."""


@dataclass
class SeriesWritten:
    """What :func:`write_series` wrote."""

    paths: list
    series_uid: str
    sop_class_uid: str
    rescale_slope: float
    rescale_intercept: float
    notes: list = field(default_factory=list)


def _keyed(secret: bytes, *parts: str) -> str:
    return uid_pseudonym(secret, "dicomprep-derived|" + "|".join(parts))


def _ds(value: float) -> str:
    """A DS value (max 16 characters) with as many significant digits as fit."""
    v = float(value)
    if abs(v) < 1e-10:
        v = 0.0
    return format_number_as_ds(v)


def quantise(volume: np.ndarray) -> tuple[np.ndarray, float, float]:
    """``(int16 stored values, slope, intercept)`` with stored × slope + intercept ≈ volume.

    Integer arrays within the int16 range are kept exactly (slope 1, intercept 0).
    """
    v = np.asarray(volume)
    if v.dtype.kind in "iub":
        lo, hi = (int(v.min()), int(v.max())) if v.size else (0, 0)
        if lo >= -32768 and hi <= 32767:
            return v.astype(np.int16), 1.0, 0.0
    v = v.astype(np.float64)
    if not np.all(np.isfinite(v)):
        raise SeriesWriteError("the array holds NaN or infinite values; DICOM images cannot store them.")
    lo, hi = float(v.min()), float(v.max())
    if np.allclose(v, np.rint(v)) and lo >= -32768 and hi <= 32767:
        return np.rint(v).astype(np.int16), 1.0, 0.0
    slope = (hi - lo) / 65534.0 if hi > lo else 1.0
    slope = float(_ds(slope))
    intercept = float(_ds(lo + 32767 * slope))
    stored = np.clip(np.rint((v - intercept) / slope), -32768, 32767).astype(np.int16)
    return stored, slope, intercept


def slice_geometry(affine_ras: np.ndarray, n_slices: int) -> tuple[list[float], list[float], list[np.ndarray], float]:
    """``(ImageOrientationPatient, PixelSpacing, [ImagePositionPatient per slice], slice step mm)``
    of a ``[i, j, k]`` grid with RAS ``affine_ras`` (the inverse of :func:`geometry.volume_affine`)."""
    lps = geometry.LPS_TO_RAS @ np.asarray(affine_ras, dtype=float)
    di, dj, dk = lps[:3, 0], lps[:3, 1], lps[:3, 2]
    si, sj = float(np.linalg.norm(di)), float(np.linalg.norm(dj))
    if si == 0 or sj == 0:
        raise SeriesWriteError("the affine has a zero-length in-plane axis; it is not a voxel grid.")
    iop = list(di / si) + list(dj / sj)
    positions = [lps[:3, 3] + k * dk for k in range(n_slices)]
    return iop, [sj, si], positions, float(np.linalg.norm(dk))


def _template(template: Any):
    if isinstance(template, (str, Path)):
        p = Path(template)
        if p.is_dir():
            files = sorted(f for f in p.iterdir() if f.is_file())
            if not files:
                raise SeriesWriteError(f"template folder {p} holds no file.")
            p = files[0]
        return read_dataset(p, stop_before_pixels=True)
    if isinstance(template, (list, tuple)):
        if not template:
            raise SeriesWriteError("the template series has no file.")
        return read_dataset(sorted(Path(t) for t in template)[0], stop_before_pixels=True)
    return template          # a pydicom Dataset


def write_series(volume: np.ndarray, affine_ras: np.ndarray, template: Any, out_dir: str | Path, *,
                 secret: bytes, name: str = "", series_description: str | None = None,
                 series_number: int = 9001, image_type: Sequence[str] = ("DERIVED", "SECONDARY"),
                 derivation: str = "", attributes: Mapping[str, Any] | None = None,
                 window: tuple[float, float] | None = None) -> SeriesWritten:
    """Write ``volume`` (``[i, j, k]``, RAS ``affine_ras``) as a new classic series in ``out_dir``.

    ``template``: a de-identified file, folder, list of files or a pydicom Dataset of
    the series the volume was derived from; its modality picks the SOP class and
    its patient/study/frame of reference attributes are copied (TEMPLATE_KEYWORDS).
    ``name`` keys the new UIDs (with the template's SeriesInstanceUID and
    ``secret``). ``attributes``: extra keyword → value set on every image last.
    Files are ``out_dir/0001.dcm`` … in slice order. Returns what was written.
    """
    volume = np.asarray(volume)
    while volume.ndim > 3 and volume.shape[-1] == 1:
        volume = volume[..., 0]
    if volume.ndim != 3:
        raise SeriesWriteError(f"write_series takes a 3-D array [i, j, k]; this one has shape {volume.shape}.")
    tpl = _template(template)
    modality = str(getattr(tpl, "Modality", "") or "")
    sop_class = SOP_CLASS_BY_MODALITY.get(modality)
    if sop_class is None:
        raise SeriesWriteError(f"template modality {modality or '(none)'}: derived series are written as CT or MR "
                               "images; give a CT or MR template series.")
    for kw in _TYPE1:
        if not str(getattr(tpl, kw, "") or ""):
            raise SeriesWriteError(f"the template has no {kw}; a derived series must carry it.")
    stored, slope, intercept = quantise(volume)
    nk = stored.shape[2]
    iop, spacing, positions, step = slice_geometry(affine_ras, nk)
    src_series = str(getattr(tpl, "SeriesInstanceUID", "") or "")
    series_uid = _keyed(secret, "series", src_series, name)
    description = (series_description if series_description is not None else (name or "dicomprep derived"))[:64]
    base = Dataset()
    for kw in TEMPLATE_KEYWORDS:
        if kw in tpl and (kw != "SpecificCharacterSet" or str(tpl.SpecificCharacterSet or "").strip()):
            base[kw] = tpl[kw]
    date = str(getattr(tpl, "SeriesDate", "") or getattr(tpl, "StudyDate", "") or "")
    time = str(getattr(tpl, "SeriesTime", "") or getattr(tpl, "StudyTime", "") or "")
    for kw in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
               "ReferringPhysicianName", "StudyID", "AccessionNumber", "Manufacturer"):
        if kw not in base:
            setattr(base, kw, "")                              # Type 2: present, may be empty
    base.SOPClassUID = sop_class
    base.SeriesInstanceUID = series_uid
    base.SeriesNumber = int(series_number)
    base.SeriesDescription = description
    # value 3 is required for CT (C.8.2.1.1.1: AXIAL/LOCALIZER) and MR (C.8.3.1.1.1: image flavor)
    third = {"CT": "AXIAL", "MR": "OTHER"}.get(modality)
    base.ImageType = list(image_type) + ([third] if third and len(image_type) < 3 else [])
    if not str(base.get("Laterality", "") or "").strip():
        # Type 2C (C.7.3.1), required for a paired body part: empty when the body part is
        # unknown (it may be paired), left out when it is named (the template would have
        # given the side)
        if str(base.get("BodyPartExamined", "") or "").strip():
            if "Laterality" in base:
                del base.Laterality
        else:
            base.Laterality = ""
    if derivation:
        base.DerivationDescription = derivation[:1024]
    base.SoftwareVersions = f"dicomprep {__version__}"
    if date:
        for kw in ("InstanceCreationDate", "ContentDate", "AcquisitionDate"):
            setattr(base, kw, date)
        for kw in ("InstanceCreationTime", "ContentTime", "AcquisitionTime"):
            setattr(base, kw, time or "000000")
    base.ImageOrientationPatient = [_ds(v) for v in iop]
    base.PixelSpacing = [_ds(v) for v in spacing]
    base.SliceThickness = _ds(step)
    base.SamplesPerPixel = 1
    base.PhotometricInterpretation = "MONOCHROME2"
    base.Rows, base.Columns = int(stored.shape[1]), int(stored.shape[0])
    base.BitsAllocated, base.BitsStored, base.HighBit, base.PixelRepresentation = 16, 16, 15, 1
    base.RescaleIntercept = _ds(intercept)
    base.RescaleSlope = _ds(slope)
    if modality == "CT":
        base.RescaleType = "HU"
        if "KVP" not in base:
            base.KVP = ""
        base.AcquisitionNumber = 1
    elif modality == "MR":
        for kw, default in (("ScanningSequence", "RM"), ("SequenceVariant", "NONE"), ("ScanOptions", ""),
                            ("MRAcquisitionType", ""), ("EchoTime", ""), ("EchoTrainLength", "")):
            if kw not in base or (kw in ("ScanningSequence", "SequenceVariant") and not base[kw].value):
                setattr(base, kw, default)
        base.AcquisitionNumber = 1
    if window is not None:
        base.WindowCenter, base.WindowWidth = _ds(window[0]), _ds(window[1])
    if "PositionReferenceIndicator" not in base:
        base.PositionReferenceIndicator = ""
    normal = geometry.slice_normal(iop)
    out_dir = Path(out_dir)
    encoder = _Encoder(base)              # the shared elements are encoded once
    paths = []
    for k in range(nk):
        ds = Dataset()
        ds.SOPInstanceUID = _keyed(secret, "instance", series_uid, str(k + 1))
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [_ds(v) for v in positions[k]]
        ds.SliceLocation = _ds(float(np.dot(positions[k], normal)))
        frame = np.ascontiguousarray(stored[:, :, k].T)
        ds.SmallestImagePixelValue = int(frame.min())
        ds.LargestImagePixelValue = int(frame.max())
        ds["SmallestImagePixelValue"].VR = ds["LargestImagePixelValue"].VR = "SS"
        ds.PixelData = frame.astype("<i2").tobytes()
        ds["PixelData"].VR = "OW"
        for kw, value in (attributes or {}).items():
            setattr(ds, kw, value)
        path = out_dir / f"{k + 1:04d}.dcm"
        # no fsync per file (like the de-identified copies): the unit's manifest, written last, marks completion
        with atomic_write(path, fsync=False) as fh:
            fh.write(encoder.file_bytes(ds, sop_class))
        paths.append(path)
    return SeriesWritten(paths, series_uid, sop_class, slope, intercept)


class _Encoder:
    """PS3.10 files (Explicit VR Little Endian) of a shared base data set plus a few
    per-image elements: the base elements are encoded once, each file merges them
    with its own in tag order (pydicom's encoder, ~10x fewer element writes)."""

    def __init__(self, base):
        self.encodings = convert_encodings(base.get("SpecificCharacterSet", None) or "iso8859")
        self.base = {int(e.tag): self._element(e) for e in base}

    def _element(self, elem) -> bytes:
        fp = DicomBytesIO()
        fp.is_little_endian, fp.is_implicit_VR = True, False
        write_data_element(fp, elem, self.encodings)
        return fp.getvalue()

    def file_bytes(self, own, sop_class: str) -> bytes:
        parts = dict(self.base)
        parts.update({int(e.tag): self._element(e) for e in own})
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = sop_class
        meta.MediaStorageSOPInstanceUID = own.SOPInstanceUID
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
        meta.ImplementationVersionName = f"DICOMPREP_{__version__}"[:16]
        fp = DicomBytesIO()
        fp.write(b"\x00" * 128 + b"DICM")
        write_file_meta_info(fp, meta, enforce_standard=True)
        return fp.getvalue() + b"".join(parts[t] for t in sorted(parts))


def ct_nifti_to_series(nifti_path: str | Path, template: Any, out_dir: str | Path, *, secret: bytes,
                       name: str = "", series_description: str | None = None, series_number: int = 9001,
                       ) -> SeriesWritten:
    """The resampled CT volume of ``convert_ncct`` (a NIfTI in HU, RAS affine) as a
    derived CT series in ``out_dir``, patient/study from ``template`` (the
    de-identified source series: folder, files or one file).

    ``dcm2niix`` on the result gives back the NIfTI's voxels and affine.
    """
    img = nib.load(str(nifti_path))
    hu = np.asarray(img.dataobj)             # applies scl_slope/inter if set
    name = name or Path(nifti_path).name.split(".")[0]
    return write_series(hu, img.affine, template, out_dir, secret=secret, name=name,
                        series_description=series_description if series_description is not None
                        else f"{name} resampled"[:64],
                        series_number=series_number, image_type=("DERIVED", "SECONDARY", "AXIAL"),
                        derivation="Resampled by dicomprep convert_ncct: HU, body mask, isotropic grid",
                        window=(40.0, 400.0))


def ct_series_for_unit(ncct_manifest, out_dir: str | Path, unit: str, *, secret: bytes,
                       config: dict | None = None, template_dir: str | Path | None = None) -> list[SeriesWritten]:
    """Every converted CT volume of one unit as a derived CT series.

    ``ncct_manifest``: the ``convert_ncct`` manifest of the unit (parquet path or
    DataFrame; rows with ``status == 'converted'`` name ``series_id`` and
    ``output_path`` relative to ``out_dir``). Template of each: the de-identified
    source series ``share/dicom/<unit>/<series_id>/``. Output:
    ``share/dicom/<unit>/<series_id>_ct/NNNN.dcm``. A missing template raises
    :class:`SeriesWriteError` naming it. ``template_dir``: where the de-identified
    series folders are, if not ``out_dir/share/dicom/<unit>/``.
    """
    cfg = dict(((config or {}).get("export", {}) or {}).get("dicom", {}) or {})
    if not cfg.get("ct_series", True):
        return []
    out_dir = Path(out_dir)
    rows = ncct_manifest if isinstance(ncct_manifest, pd.DataFrame) else pd.read_parquet(ncct_manifest)
    dicom_dir = out_dir / "share" / "dicom" / unit
    written = []
    for row in rows[rows["status"].isin(["converted", "partial"])].to_dict("records"):
        sid = str(row["series_id"])
        template = (Path(template_dir) if template_dir else dicom_dir) / sid
        if not template.is_dir() or not any(template.iterdir()):
            raise SeriesWriteError(f"{unit} {sid}: the de-identified source series {template} is missing; "
                                   "the derived CT series takes its patient and study from it.")
        written.append(ct_nifti_to_series(out_dir / str(row["output_path"]), template, dicom_dir / f"{sid}_ct",
                                          secret=secret, name=f"{sid}_ct"))
    return written
