"""The synthetic demo cohort (issue #2 item 3; extended for issues #3-#6).

:func:`make_demo` writes a small multi-site cohort with pydicom and highdicom,
deterministically (fixed UIDs derived from a fixed root + ``seed``, fixed
dates, seeded noise: two builds give byte-identical files). It exercises what
no public data set has: cardiac STEAM/SE diffusion, XNAT sessions with SEG
assessors, OrbitCT-style exam folders, and identifiers planted everywhere a
real export carries them.

Folder pattern written into ``out_dir``::

    demo_manifest.json                       what was written + planted values (JSON)
    README.txt                               clutter the indexer must skip
    cdti_siteA/dicom/SE/<SUBJECT>/<SCAN>/*      classic MR (1.2.840.10008.5.1.4.1.1.4), SE cDTI
        (DOE_JOHN_123456/20240312_1: Siemens-style *.IMA names + a DERIVED ADC series;
         MUELLER_JUERGEN_884211/20240319_1: IM_NNNN.dcm)
    cdti_siteA/dicom/STEAM/<SUBJECT>/<SCAN>/IM_NNNN.dcm   STEAM cDTI (same two subjects)
    cdti_siteB/dicom/STEAM/SMITH_ANNA_B77310/20200115_2/IM_NNNN   (no extension; NominalInterval 0)
    ct_exams/EXAM_0001_ROE_4455667/SER0001_SCOUT/*.dcm      localizer (coronal)
                                   /SER0002_HEAD_AX/*.dcm    axial CT, 40 slices 128x128
                                   /SER0999_DOSE/*.dcm       dose-report screen (SC, burned in)
    ct_exams/EXAM_0002_GARCIA_9876543/*.dcm   flat folder: scout, tilted axial CT
                                              (GantryDetectorTilt 12), contrast CT
                                              (ContrastBolusAgent), dose report
    xnat/ORBIT_DEMO/<subject>/<session>/SCANS/1/DICOM/*.dcm          scout
                                       /SCANS/2/DICOM/*.dcm          CT, 12 slices 64x64
                                       /SCANS/2/DICOM/scan_2_catalog.xml
                                       /ASSESSORS/<assessor>/SEG/*.dcm      highdicom SEG
                                       /ASSESSORS/<assessor>/SEG/SEG_catalog.xml
                                                 (cat:Catalog, cat:entry createdBy/createdTime)
      with <subject> = OSTERGAARD_S_55120, <session> = OSTERGAARD_S_55120_CT_20190405,
      file names ``<session>.CT.<desc>.<scan>.<instance>.<date>.dcm``; assessors
      SEG_20190405_141502_rater1/SEG/orbit_rater1.dcm (segments Head + Lesion, overlapping)
      and SEG_20190406_093011_rater2/SEG/{skull_rater2,lesion_rater2}.dcm (two SEG
      files in one folder, one segment each). Every SEG references all 12 CT instances.

cDTI series: 3 slices of 32x32, 15 volumes (3 x b=0, 6 directions at each of
two b-values), the diffusion attributes at top level as Siemens XA
interoperability exports write them: DiffusionBValue (0018,9087),
DiffusionDirectionality (0018,9075), DiffusionGradientDirectionSequence
(0018,9076) > DiffusionGradientOrientation (0018,9089) in LPS. Every image has
NominalInterval (0018,1062) = its RR interval in ms (0 in cdti_siteB, whose
RR must be estimated from AcquisitionTime); images are acquired in
InstanceNumber order (volume-major), three per breath-hold, consecutive
images of one breath-hold ``2 * RR`` apart for STEAM (two heartbeats) and
``1 * RR`` for SE, breath-holds separated by 12-16 s pauses. The manifest
(``cdti[*].images``) has each image's RR, b-value and direction. STEAM ImageComments read ``b0 = 35 RR = 900`` (b0 then
assumed RR) or ``b0 = 30`` (b0 only).

CT phantom (LPS mm): an ellipsoid head (soft tissue 40 HU, 3-4 mm skull
shell 1000 HU, air -1000 outside) with a bright sphere (2000 HU) whose centre
is recorded per series in the manifest (``ct[*].sphere``); stored values are
HU + 1024 (RescaleIntercept -1024, RescaleSlope 1); InstanceNumbers are a
shuffle of the geometric order. The tilted series follows the GE convention:
the column cosine is tilted, (0, cos t, -sin t), and ImagePositionPatient moves
along z only, so the stack runs 12 degrees off the slice normal.

Also present for later stages: a scanner-derived ADC map (ImageType DERIVED,
own series) in the first SE scan folder, which must stay out of the diffusion
volume; a graphics overlay (6000,xxxx) naming the patient on one CT slice
(Clean Graphics); a patient aged over 89 (age capping); SpecificCharacterSet
ISO_IR 100 (Latin-1) and ISO_IR 192 (UTF-8) names; dose screens whose pixels
carry the patient's name and ID as burned-in text.

The manifest's ``planted`` list holds every identifying value with its kind
(``name`` of a patient, ``staff`` names, ``id``, ``date``, ``time``, ``uid``,
``institution``, ``address``, ``station``, ``serial``, ``accession``,
``folder``, ``phone``) and where it was put, so de-identification and leak
tests can assert none survives. Identifying values are in every DICOM header
(patient, study, equipment modules; OtherPatientIDsSequence; free text in
StudyDescription, AdditionalPatientHistory, PatientComments, ImageComments,
ReasonForTheRequestedProcedure; depth-2 sequences
PhysiciansOfRecordIdentificationSequence > PersonIdentificationCodeSequence and
RequestAttributesSequence > RequestedProcedureCodeSequence; private block
(0033,xx10-xx20) of creator ``DEMO HOSPITAL PACS 1.0`` with the name and a
private sequence holding the ID and birth date; StudyInstanceUIDs that contain
the birth date), and in folder and file names.
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian

from .errors import DicomprepError

#: pydicom's registered root (PS3.5 9.1); demo UIDs are ROOT + digits.
UID_ROOT = "1.2.826.0.1.3680043.8.498."
MANIFEST_NAME = "demo_manifest.json"
STAGING_PREFIX = ".demo-build-"
#: Top-level entries make_demo owns (and may replace on a re-build).
DEMO_ENTRIES = ("cdti_siteA", "cdti_siteB", "ct_exams", "xnat", "README.txt", MANIFEST_NAME)

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
SECONDARY_CAPTURE_STORAGE = "1.2.840.10008.5.1.4.1.1.7"
HU_OFFSET = 1024  # stored value = HU + 1024, RescaleIntercept -1024


# --------------------------------------------------------------------------
# Identities (all fictitious) and the record of what was planted
# --------------------------------------------------------------------------

@dataclass(frozen=True)
class Person:
    """A fictitious patient with every identifying attribute a real export has."""

    name: str                  # PatientName (0010,0010), PN with ^
    patient_id: str            # PatientID (0010,0020)
    other_id: str              # OtherPatientIDs (0010,1000) / OtherPatientIDsSequence
    birth_date: str            # PatientBirthDate (0010,0030)
    sex: str
    age: str
    address: str               # PatientAddress (0010,1040)
    phone: str                 # PatientTelephoneNumbers (0010,2154)
    charset: str | None        # SpecificCharacterSet (0008,0005)
    folder: str                # folder name carrying name + ID
    ascii_name: str            # how the name is spelled in folders (no diacritics)


@dataclass(frozen=True)
class Site:
    """Where and by whom a study was made."""

    institution: str
    institution_address: str
    department: str
    station: str
    serial: str
    manufacturer: str
    model: str
    software: str
    referring: str
    performing: str
    operator: str
    reader: str


PEOPLE = {
    "doe": Person("DOE^JOHN", "123456", "HOSPA-77821", "19710203", "M", "053Y",
                  "12 Elm Street, Springfield", "+44 20 7946 0101", "ISO_IR 100",
                  "DOE_JOHN_123456", "DOE^JOHN"),
    "mueller": Person("MÜLLER^JÜRGEN", "884211", "HOSPA-90233", "19650917", "M", "058Y",
                      "Hauptstraße 5, München", "+49 89 1234567", "ISO_IR 100",
                      "MUELLER_JUERGEN_884211", "MUELLER^JUERGEN"),
    "smith": Person("SMITH^ANNA^M", "B77310", "SITEB-4410", "19880506", "F", "031Y",
                    "4 Harbour Road, Portsmouth", "+44 23 9200 1122", None,
                    "SMITH_ANNA_B77310", "SMITH^ANNA^M"),
    "roe": Person("ROE^JANE^Q", "4455667", "ORB-220931", "19590721", "F", "058Y",
                  "77 Lake Drive, Lakeside", "+1 555 0100 200", "ISO_IR 100",
                  "EXAM_0001_ROE_4455667", "ROE^JANE^Q"),
    "garcia": Person("GARCÍA^JOSÉ", "9876543", "ORB-551874", "19921130", "M", "028Y",
                     "Calle Mayor 10, Sevilla", "+34 954 000 111", "ISO_IR 192",
                     "EXAM_0002_GARCIA_9876543", "GARCIA^JOSE"),
    "ostergaard": Person("ØSTERGÅRD^SØREN", "XN55120", "XNAT-30177", "19280314", "M", "091Y",
                         "Strandvejen 9, København", "+45 33 12 34 56", "ISO_IR 100",
                         "OSTERGAARD_S_55120", "OSTERGAARD^SOREN"),
}

SITES = {
    "cdti_a": Site("St. Example Heart Centre", "1 Cardiac Way, Springfield", "CMR Unit",
                   "AWP45021", "MR45021A", "SIEMENS", "MAGNETOM Prisma", "syngo MR XA20",
                   "WATSON^JAMES", "KILDARE^JAMES", "NIGHTINGALE^FLORENCE", "HOUSE^GREGORY"),
    "cdti_b": Site("Harbour General Hospital", "2 Quay Street, Portsmouth", "Radiology",
                   "MRC66110", "MR66110B", "SIEMENS", "MAGNETOM Vida", "syngo MR XA20",
                   "QUINN^MICHAELA", "ROSS^DOUG", "HATHAWAY^CAROL", "GREY^MEREDITH"),
    "orbit": Site("Orbit Eye Clinic", "9 Vision Avenue, Lakeside", "Neuroradiology",
                  "CTAWP91457", "CT91457X", "SIEMENS", "SOMATOM Definition AS", "syngo CT VA48A",
                  "STRANGE^STEPHEN", "BAILEY^MIRANDA", "KAREV^ALEX", "YANG^CRISTINA"),
    "xnat": Site("Nordic Imaging Institute", "Blegdamsvej 3, København", "CT Lab",
                 "CT7734", "CT77341N", "SIEMENS", "SOMATOM Force", "syngo CT VB20",
                 "BERG^INGRID", "LUND^ERIK", "HOLM^ASTRID", "NIELSEN^MADS"),
}


@dataclass
class Planted:
    """Every identifying value written, with its kind and where it went."""

    entries: dict = field(default_factory=dict)
    headers: dict = field(default_factory=dict)   # built identifying headers, reused per series

    def add(self, kind: str, value: Any, where: str) -> None:
        value = str(value).strip()
        if not value:
            return
        key = (kind, value)
        self.entries.setdefault(key, set()).add(where)

    def person_name(self, name: str, where: str, *, whole: bool = True, kind: str = "name") -> None:
        """A PN value (unless ``whole`` is False) and each component of three or more characters.

        ``kind`` is ``name`` for the patient, ``staff`` for physicians and operators.
        """
        if whole:
            self.add(kind, name, where)
        for part in name.replace("^", " ").split():
            if len(part) >= 3:
                self.add(kind, part, where + " (component)")

    def as_list(self) -> list[dict]:
        return [{"kind": k, "value": v, "where": sorted(w)}
                for (k, v), w in sorted(self.entries.items())]


# --------------------------------------------------------------------------
# Deterministic UIDs and small helpers
# --------------------------------------------------------------------------

def demo_uid(seed: int, *parts: Any) -> str:
    """A fixed UID under :data:`UID_ROOT` derived from ``seed`` and ``parts``."""
    digest = hashlib.sha256("|".join([str(seed), *map(str, parts)]).encode()).hexdigest()
    return (UID_ROOT + str(int(digest, 16)))[:64]


def dated_uid(seed: int, date: str, *parts: Any) -> str:
    """A UID that carries a date (as some scanners' StudyInstanceUIDs do): a leak trap."""
    digest = hashlib.sha256("|".join([str(seed), *map(str, parts)]).encode()).hexdigest()
    return f"{UID_ROOT}{date}.{int(digest[:12], 16)}"


def _tm(seconds: float) -> str:
    """Seconds since midnight as a DICOM TM with millisecond precision."""
    ms = int(round(seconds * 1000))
    h, rem = divmod(ms, 3_600_000)
    m, rem = divmod(rem, 60_000)
    s, ms = divmod(rem, 1000)
    return f"{h:02d}{m:02d}{s:02d}.{ms:03d}000"


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def _file_dataset(sop_class: str, sop_uid: str) -> Dataset:
    ds = Dataset()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    return ds


@dataclass
class Study:
    """One patient visit: the values every instance of its series repeats."""

    person: Person
    site: Site
    date: str
    time_s: float              # StudyTime in seconds after midnight
    uid: str
    accession: str
    study_id: str
    description: str
    comment_text: str          # free text naming the patient


def _plant_header(ds: Dataset, st: Study, planted: Planted, where: str) -> None:
    """Patient, study, equipment and free-text identifiers at every depth.

    PS3.15 Annex E lists each of these; the verifier must find none in share/.
    The header is built once per (study, folder) and its elements reused.
    """
    key = (st.uid, where)
    if key not in planted.headers:
        header = Dataset()
        _build_identifying_header(header, st, planted, where)
        planted.headers[key] = header
    ds.update(planted.headers[key])


def _build_identifying_header(ds: Dataset, st: Study, planted: Planted, where: str) -> None:
    p, site = st.person, st.site
    if p.charset:
        ds.SpecificCharacterSet = p.charset
    ds.PatientName = p.name
    planted.person_name(p.name, f"{where}: PatientName")
    planted.person_name(p.ascii_name, f"{where}: ASCII spelling of PatientName (folders, private tags)",
                        whole=False)
    ds.PatientID = p.patient_id
    planted.add("id", p.patient_id, f"{where}: PatientID")
    ds.IssuerOfPatientID = site.institution.split()[0].upper() + "_MRN"
    ds.add_new(0x00101000, "LO", p.other_id)  # OtherPatientIDs (retired, still exported)
    planted.add("id", p.other_id, f"{where}: OtherPatientIDs")
    other = Dataset()
    other.PatientID = p.other_id
    other.IssuerOfPatientID = "REGIONAL_EPR"
    other.TypeOfPatientID = "TEXT"
    ds.OtherPatientIDsSequence = DicomSequence([other])
    ds.PatientBirthDate = p.birth_date
    planted.add("date", p.birth_date, f"{where}: PatientBirthDate")
    ds.PatientSex = p.sex
    ds.PatientAge = p.age
    ds.PatientAddress = p.address
    planted.add("address", p.address, f"{where}: PatientAddress")
    ds.PatientTelephoneNumbers = p.phone
    planted.add("phone", p.phone, f"{where}: PatientTelephoneNumbers")
    ds.AdditionalPatientHistory = f"Referred by {site.referring.replace('^', ' ')} for {p.name.replace('^', ' ')}"
    ds.PatientComments = f"MRN {p.patient_id}, born {p.birth_date}"
    # Study
    ds.StudyInstanceUID = st.uid
    planted.add("uid", st.uid, f"{where}: StudyInstanceUID (holds the birth date)")
    ds.StudyDate = st.date
    planted.add("date", st.date, f"{where}: StudyDate")
    ds.StudyTime = _tm(st.time_s)
    planted.add("time", ds.StudyTime, f"{where}: StudyTime")
    ds.AccessionNumber = st.accession
    planted.add("accession", st.accession, f"{where}: AccessionNumber")
    ds.StudyID = st.study_id
    planted.add("id", st.study_id, f"{where}: StudyID")
    ds.StudyDescription = st.description
    ds.ReferringPhysicianName = site.referring
    planted.person_name(site.referring, f"{where}: ReferringPhysicianName", kind="staff")
    ds.PerformingPhysicianName = site.performing
    planted.person_name(site.performing, f"{where}: PerformingPhysicianName", kind="staff")
    ds.OperatorsName = site.operator
    planted.person_name(site.operator, f"{where}: OperatorsName", kind="staff")
    ds.NameOfPhysiciansReadingStudy = site.reader
    planted.person_name(site.reader, f"{where}: NameOfPhysiciansReadingStudy", kind="staff")
    # Equipment
    ds.Manufacturer = site.manufacturer
    ds.ManufacturerModelName = site.model
    ds.SoftwareVersions = site.software
    ds.InstitutionName = site.institution
    planted.add("institution", site.institution, f"{where}: InstitutionName")
    ds.InstitutionAddress = site.institution_address
    planted.add("address", site.institution_address, f"{where}: InstitutionAddress")
    ds.InstitutionalDepartmentName = site.department
    ds.StationName = site.station
    planted.add("station", site.station, f"{where}: StationName")
    ds.DeviceSerialNumber = site.serial
    planted.add("serial", site.serial, f"{where}: DeviceSerialNumber")
    # Depth 1: the request; depth 2: the physician's name and ID in a code item.
    request = Dataset()
    request.RequestedProcedureID = st.accession + "R"
    request.ScheduledProcedureStepID = st.accession + "S"
    request.ReasonForTheRequestedProcedure = st.comment_text
    request.RequestedProcedureCodeSequence = DicomSequence([_code("RPID17", "L", st.description)])
    ref_study = Dataset()
    ref_study.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"
    ref_study.ReferencedSOPInstanceUID = st.uid
    request.ReferencedStudySequence = DicomSequence([ref_study])
    ds.RequestAttributesSequence = DicomSequence([request])
    physician = Dataset()
    physician.InstitutionName = site.institution
    physician.PersonIdentificationCodeSequence = DicomSequence(
        [_code(f"PHY{p.patient_id[-3:]}", "L", p.name.replace("^", " ") + " (patient of record)")])
    ds.PhysiciansOfRecordIdentificationSequence = DicomSequence([physician])
    ds.PhysiciansOfRecord = site.referring
    # Private block: the creator's elements hold the name, a private sequence the ID.
    block = ds.private_block(0x0033, "DEMO HOSPITAL PACS 1.0", create=True)
    block.add_new(0x10, "LO", p.name)
    block.add_new(0x11, "LO", f"{p.ascii_name.replace('^', ' ')} {p.patient_id}")
    item = Dataset()
    item_block = item.private_block(0x0033, "DEMO HOSPITAL PACS 1.0", create=True)
    item_block.add_new(0x12, "LO", p.patient_id)
    item_block.add_new(0x13, "DA", p.birth_date)
    block.add_new(0x20, "SQ", DicomSequence([item]))


def _series_header(ds: Dataset, *, modality: str, series_uid: str, series_number: int,
                   description: str, date: str, time_s: float, frame_uid: str | None,
                   planted: Planted, where: str) -> None:
    ds.Modality = modality
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = series_number
    ds.SeriesDescription = description
    ds.ProtocolName = description
    ds.SeriesDate = date
    ds.SeriesTime = _tm(time_s)
    planted.add("time", ds.SeriesTime, f"{where}: SeriesTime")
    if frame_uid:
        ds.FrameOfReferenceUID = frame_uid
        ds.PositionReferenceIndicator = ""


def _instance_times(ds: Dataset, date: str, acq_s: float, content_s: float) -> None:
    ds.InstanceCreationDate = date
    ds.InstanceCreationTime = _tm(content_s)
    ds.AcquisitionDate = date
    ds.AcquisitionTime = _tm(acq_s)
    ds.AcquisitionDateTime = date + _tm(acq_s)
    ds.ContentDate = date
    ds.ContentTime = _tm(content_s)


def _pixels_mono16(ds: Dataset, array: np.ndarray, *, signed: bool, bits_stored: int) -> None:
    arr = np.asarray(array)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = arr.shape
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 1 if signed else 0
    ds.PixelData = arr.astype("<i2" if signed else "<u2").tobytes()


def _save(ds: Dataset, path: Path) -> None:
    """Write a PS3.10 file into the staging folder (made atomic by the final move)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def _text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


# --------------------------------------------------------------------------
# (a) cardiac diffusion (SE / STEAM)
# --------------------------------------------------------------------------

#: Six classic DTI directions in patient (LPS) coordinates, unit length.
DTI_DIRECTIONS = np.array([
    [1, 0, 0], [0, 1, 0], [0, 0, 1],
    [1, 1, 0], [1, 0, 1], [0, 1, 1],
], dtype=float)
DTI_DIRECTIONS /= np.linalg.norm(DTI_DIRECTIONS, axis=1, keepdims=True)


@dataclass(frozen=True)
class DiffusionSpec:
    group: str
    sequence: str                  # folder name: SE or STEAM
    person_key: str
    site_key: str
    scan: str                      # scan folder name
    study_date: str
    series_number: int
    b_values: tuple[int, ...]      # the two non-zero b-values
    comments: str                  # ImageComments
    rr_from_header: bool           # False: NominalInterval 0 (RR from acquisition times)
    naming: str                    # "dcm" | "ima" | "bare"
    b0_real: float | None          # real b0 from ImageComments (STEAM)
    assumed_rr: float | None       # assumed RR from ImageComments (STEAM)
    adc_map: bool = False          # also a scanner-derived ADC series in the same folder


CDTI_SPECS = (
    DiffusionSpec("cdti_siteA", "SE", "doe", "cdti_a", "20240312_1", "20240312", 11,
                  (100, 450), "DOE JOHN breath-hold OK", True, "ima", None, None, adc_map=True),
    DiffusionSpec("cdti_siteA", "STEAM", "doe", "cdti_a", "20240312_1", "20240312", 14,
                  (150, 450), "b0 = 35 RR = 900", True, "dcm", 35.0, 900.0),
    DiffusionSpec("cdti_siteA", "SE", "mueller", "cdti_a", "20240319_1", "20240319", 9,
                  (100, 450), "", True, "dcm", None, None),
    DiffusionSpec("cdti_siteA", "STEAM", "mueller", "cdti_a", "20240319_1", "20240319", 12,
                  (150, 450), "b0 = 30", True, "dcm", 30.0, None),
    DiffusionSpec("cdti_siteB", "STEAM", "smith", "cdti_b", "20200115_2", "20200115", 7,
                  (150, 450), "b0 = 32 RR = 1000", False, "bare", 32.0, 1000.0),
)

CDTI_MATRIX = 32
CDTI_SLICES = 3
CDTI_PIXEL_MM = 2.5
CDTI_SLICE_MM = 8.0
CDTI_GAP_MM = 10.0
N_B0 = 3
BREATH_HOLD_IMAGES = 3


def _short_axis_orientation() -> tuple[np.ndarray, np.ndarray]:
    """An oblique (short-axis-like) ImageOrientationPatient, orthonormal."""
    row = np.array([0.70, 0.55, -0.45])
    row /= np.linalg.norm(row)
    col = np.array([-0.45, 0.80, 0.30])
    col -= row * np.dot(col, row)
    col /= np.linalg.norm(col)
    return np.round(row, 6), np.round(col, 6)


def _rr_series(rng: np.random.Generator, n: int) -> np.ndarray:
    """Heart-rate RR intervals (ms), a bounded random walk in 850-1100 ms."""
    rr = np.empty(n)
    value = 960.0
    for i in range(n):
        value = float(np.clip(value + rng.normal(0, 35), 850, 1100))
        rr[i] = round(value)
    return rr


def _diffusion_series(out: Path, spec: DiffusionSpec, seed: int, planted: Planted) -> dict:
    person, site = PEOPLE[spec.person_key], SITES[spec.site_key]
    rng = np.random.default_rng([seed, spec.series_number, len(spec.person_key)])
    study_uid = dated_uid(seed, person.birth_date, "study", spec.person_key, spec.study_date)
    study = Study(person, site, spec.study_date, 10 * 3600 + 2 * 60 + 11.5, study_uid,
                  f"A{person.patient_id[-4:]}{spec.study_date[-4:]}", f"CMR{spec.study_date[-3:]}",
                  f"CMR cDTI {person.name.replace('^', ' ')}",
                  f"Cardiac DTI research scan of {person.name.replace('^', ' ')}")
    seq = spec.sequence
    series_uid = demo_uid(seed, "series", spec.group, seq, spec.person_key)
    frame_uid = demo_uid(seed, "for", spec.group, spec.person_key)
    rel_dir = Path(spec.group) / "dicom" / seq / person.folder / spec.scan
    planted.add("folder", person.folder, f"{rel_dir}: subject folder")
    planted.add("folder", spec.scan, f"{rel_dir}: scan folder (holds the study date)")

    bvals, bvecs = _diffusion_scheme(spec.b_values)
    n_vol = len(bvals)
    n_img = n_vol * CDTI_SLICES
    rr = _rr_series(rng, n_img)

    row, col = _short_axis_orientation()
    normal = np.cross(row, col)
    centre = np.array([18.0, 25.0, 40.0]) + (3.0 if seq == "STEAM" else 0.0)
    half = (CDTI_MATRIX - 1) / 2 * CDTI_PIXEL_MM
    yy, xx = np.mgrid[0:CDTI_MATRIX, 0:CDTI_MATRIX]
    r = np.hypot(xx - 15.5, yy - 16.5)
    myo = ((r > 5) & (r < 10)).astype(float)
    blood = (r <= 5).astype(float)

    # Acquisition timing: images in InstanceNumber order, BREATH_HOLD_IMAGES
    # per breath-hold, each image spans two heartbeats (STEAM) / one (SE).
    beats_per_image = 2 if seq == "STEAM" else 1
    t = 10 * 3600 + 15 * 60 + 3.25 + spec.series_number * 60
    series_time = t - 1.0
    images, b0_slices = [], {}
    for i in range(n_img):
        vol, sl = divmod(i, CDTI_SLICES)
        b, g = bvals[vol], np.array(bvecs[vol])
        ipp = centre - half * row - half * col + (sl - 1) * CDTI_GAP_MM * normal
        adc = 0.0015 + 0.0008 * abs(float(np.dot(g, row)))
        signal = myo * 700 * math.exp(-b * adc) + blood * 250 * math.exp(-b * 0.003)
        pixels = signal + rng.normal(12, 4, size=(CDTI_MATRIX, CDTI_MATRIX))
        pixels = np.clip(np.round(pixels), 0, 4095)
        instance = i + 1
        ds = _file_dataset(MR_IMAGE_STORAGE, demo_uid(seed, "sop", series_uid, instance))
        ds.SOPClassUID = MR_IMAGE_STORAGE
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
        where = f"{rel_dir}"
        _plant_header(ds, study, planted, where)
        ds.ImageType = ["ORIGINAL", "PRIMARY", "DIFFUSION", "NONE"]
        _series_header(ds, modality="MR", series_uid=series_uid, series_number=spec.series_number,
                       description="cDTI_STEAM" if seq == "STEAM" else "cDTI_SE_M012",
                       date=spec.study_date, time_s=series_time, frame_uid=frame_uid,
                       planted=planted, where=where)
        _instance_times(ds, spec.study_date, t, t + 2.0)
        planted.add("time", ds.AcquisitionTime, f"{where}: AcquisitionTime")
        ds.InstanceNumber = instance
        ds.AcquisitionNumber = 1
        ds.BodyPartExamined = "HEART"
        ds.PatientPosition = "HFS"
        _mr_sequence_attributes(ds, seq, b, (vol - N_B0) % len(DTI_DIRECTIONS) + 1)
        ds.ImagePositionPatient = [round(float(v), 4) for v in ipp]
        ds.ImageOrientationPatient = [float(v) for v in np.concatenate([row, col])]
        ds.PixelSpacing = [CDTI_PIXEL_MM, CDTI_PIXEL_MM]
        ds.SliceLocation = round(float(np.dot(ipp, normal)), 4)
        _cardiac_attributes(ds, float(rr[i]), spec.rr_from_header)
        _diffusion_attributes(ds, b, g)
        if spec.comments:
            ds.ImageComments = spec.comments
        ds.WindowCenter = 300
        ds.WindowWidth = 800
        _pixels_mono16(ds, pixels, signed=False, bits_stored=12)
        name = _cdti_file_name(spec, person, instance, ds.AcquisitionTime)
        _save(ds, out / rel_dir / name)
        if vol == 0:
            b0_slices[sl] = ds
        images.append({
            "file": str(rel_dir / name), "instance": instance, "volume": vol, "slice": sl,
            "b_value": b, "direction_lps": [float(v) for v in g],
            "rr_ms": float(rr[i]), "nominal_interval": int(ds.NominalInterval),
            "acquisition_time": str(ds.AcquisitionTime),
        })
        # Next image: two heartbeats later (STEAM) or one, or after a breath-hold pause.
        t += rr[i] * beats_per_image / 1000.0
        if (i + 1) % BREATH_HOLD_IMAGES == 0:
            t += 12.0 + 2.0 * ((i // BREATH_HOLD_IMAGES) % 3)
    if spec.comments and seq == "SE":
        planted.person_name(person.ascii_name, f"{rel_dir}: ImageComments", whole=False)
    derived = _adc_series(out, rel_dir, spec, person, b0_slices, seed, myo) if spec.adc_map else None
    return {
        "group": spec.group, "sequence": seq, "subject": person.folder, "scan": spec.scan,
        "dir": str(rel_dir), "patient_id": person.patient_id, "series_uid": series_uid,
        "series_number": spec.series_number, "n_slices": CDTI_SLICES, "n_volumes": n_vol,
        "bvals": bvals, "bvecs_lps": bvecs, "image_comments": spec.comments,
        "b0_real": spec.b0_real, "assumed_rr_ms": spec.assumed_rr,
        "rr_source": "NominalInterval" if spec.rr_from_header else "acquisition_time",
        "timing": ("images are acquired in InstanceNumber order; within a breath-hold of "
                   f"{BREATH_HOLD_IMAGES} images, AcquisitionTime[i+1] - AcquisitionTime[i] = "
                   f"{beats_per_image} x rr_ms[i]; breath-holds are separated by 12-16 s pauses"),
        "images": images, "derived_series": derived,
    }


def _diffusion_scheme(b_values: tuple[int, ...]) -> tuple[list[int], list[list[float]]]:
    """Per-volume b-values and LPS directions: N_B0 x b=0, then the six
    directions at each non-zero b-value."""
    bvals = [0] * N_B0
    bvecs = [[0.0, 0.0, 0.0]] * N_B0
    for b in b_values:
        bvals += [b] * len(DTI_DIRECTIONS)
        bvecs += [list(map(float, d)) for d in DTI_DIRECTIONS]
    return bvals, bvecs


def _mr_sequence_attributes(ds: Dataset, seq: str, b: int, direction: int) -> None:
    """Siemens-like sequence naming and protocol values (ScanningSequence 0018,0020;
    SequenceName 0018,0024): ``*steam2d_b150#3`` for STEAM, ``*ep_b100#3`` for SE."""
    suffix = f"#{direction}" if b else ""
    if seq == "STEAM":
        ds.ScanningSequence = ["RM"]
        ds.SequenceName = f"*steam2d_b{b}{suffix}"
        ds.EchoTime = 23
    else:
        ds.ScanningSequence = ["SE", "EP"]
        ds.SequenceName = f"*ep_b{b}{suffix}"
        ds.EchoTime = 61
    ds.SequenceVariant = ["SK", "SP"]
    ds.ScanOptions = ["CG", "FS"]
    ds.MRAcquisitionType = "2D"
    # A protocol value, constant over the series (dcm2niix splits a series whose TR varies).
    ds.RepetitionTime = 2000.0 if seq == "STEAM" else 1000.0
    ds.MagneticFieldStrength = 3
    ds.ImagingFrequency = 123.25
    ds.FlipAngle = 90
    ds.NumberOfAverages = 1
    ds.SliceThickness = CDTI_SLICE_MM
    ds.SpacingBetweenSlices = CDTI_GAP_MM
    ds.InPlanePhaseEncodingDirection = "ROW"


def _cardiac_attributes(ds: Dataset, rr_ms: float, in_header: bool) -> None:
    """Cardiac timing: NominalInterval (0018,1062) is this beat's RR interval in ms,
    0 when the scanner did not record it (RR must then come from AcquisitionTime)."""
    ds.NominalInterval = int(rr_ms) if in_header else 0
    ds.HeartRate = int(round(60000 / rr_ms)) if in_header else 0
    ds.TriggerTime = 310.0
    ds.CardiacNumberOfImages = 1
    ds.BeatRejectionFlag = "N"


def _diffusion_attributes(ds: Dataset, b: int, direction: np.ndarray) -> None:
    """PS3.3 C.8.13.5.9 diffusion attributes at top level (Siemens XA interop style):
    DiffusionBValue (0018,9087), DiffusionDirectionality (0018,9075),
    DiffusionGradientDirectionSequence (0018,9076) > DiffusionGradientOrientation (0018,9089)."""
    ds.DiffusionBValue = float(b)
    if b == 0:
        ds.DiffusionDirectionality = "NONE"
        return
    ds.DiffusionDirectionality = "DIRECTIONAL"
    item = Dataset()
    item.DiffusionGradientOrientation = [float(v) for v in direction]
    ds.DiffusionGradientDirectionSequence = DicomSequence([item])


def _adc_series(out: Path, rel_dir: Path, spec: DiffusionSpec, person: Person,
                b0_slices: dict, seed: int, myo: np.ndarray) -> dict:
    """A scanner-derived ADC map (ImageType DERIVED) in the diffusion series' folder:
    converters must leave it out of the diffusion volume by selection."""
    series_uid = demo_uid(seed, "series", spec.group, spec.sequence, spec.person_key, "adc")
    number = spec.series_number + 1
    files = []
    for sl, b0 in sorted(b0_slices.items()):
        ds = copy.deepcopy(b0)
        ds.file_meta.MediaStorageSOPInstanceUID = demo_uid(seed, "sop", series_uid, sl + 1)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
        ds.SeriesInstanceUID = series_uid
        ds.SeriesNumber = number
        ds.SeriesDescription = ds.SeriesDescription + "_ADC"
        ds.ImageType = ["DERIVED", "PRIMARY", "DIFFUSION", "ADC", "NORM", "DIS2D"]
        ds.InstanceNumber = sl + 1
        for keyword in ("DiffusionBValue", "DiffusionDirectionality", "DiffusionGradientDirectionSequence",
                        "ImageComments"):
            if keyword in ds:
                delattr(ds, keyword)
        ds.SequenceName = "*ep_b100_450"
        _pixels_mono16(ds, np.round(myo * 1600 + 30).astype(np.uint16), signed=False, bits_stored=12)
        name = _cdti_file_name(spec, person, sl + 1, ds.AcquisitionTime).replace(
            f".{spec.series_number:04d}.", f".{number:04d}.")
        _save(ds, out / rel_dir / name)
        files.append(str(rel_dir / name))
    return {"series_uid": series_uid, "series_number": number, "kind": "derived ADC map",
            "image_type": "DERIVED\\PRIMARY\\DIFFUSION\\ADC", "files": files}


def _cdti_file_name(spec: DiffusionSpec, person: Person, instance: int, acq_time: str) -> str:
    if spec.naming == "ima":  # Siemens-style export name (carries name and date)
        d = spec.study_date
        return (f"{person.folder.rsplit('_', 1)[0]}.MR.CDTI_{spec.sequence}.{spec.series_number:04d}."
                f"{instance:04d}.{d[:4]}.{d[4:6]}.{d[6:]}.{acq_time.replace('.', '')[:12]}.IMA")
    if spec.naming == "bare":
        return f"IM_{instance:04d}"
    return f"IM_{instance:04d}.dcm"


# --------------------------------------------------------------------------
# (b) CT exams and (c) XNAT: phantom, volumes, scouts, dose reports
# --------------------------------------------------------------------------

@dataclass(frozen=True)
class Phantom:
    """Ellipsoid head with a skull shell and a bright sphere, in LPS mm."""

    centre: tuple[float, float, float]
    semi_axes: tuple[float, float, float]
    skull_mm: float
    sphere_centre: tuple[float, float, float]
    sphere_radius: float
    tissue_hu: float = 40.0
    skull_hu: float = 1000.0
    sphere_hu: float = 2000.0

    def hu(self, points: np.ndarray) -> np.ndarray:
        """HU at points (N x 3, LPS mm)."""
        d = (points - np.asarray(self.centre)) / np.asarray(self.semi_axes)
        r = np.sqrt((d ** 2).sum(axis=-1))
        inner = 1.0 - self.skull_mm / min(self.semi_axes)
        hu = np.full(points.shape[:-1], -1000.0)
        hu[r < 1.0] = self.skull_hu
        hu[r < inner] = self.tissue_hu
        s = np.linalg.norm(points - np.asarray(self.sphere_centre), axis=-1)
        hu[s <= self.sphere_radius] = self.sphere_hu
        return hu

    def as_dict(self) -> dict:
        x, y, z = self.sphere_centre
        return {"centre_lps": list(self.sphere_centre), "centre_ras": [-x, -y, z],
                "radius_mm": self.sphere_radius,
                "hu": self.sphere_hu, "head_centre_lps": list(self.centre),
                "head_semi_axes_mm": list(self.semi_axes), "skull_hu": self.skull_hu,
                "tissue_hu": self.tissue_hu}


def _slice_points(ipp: np.ndarray, row: np.ndarray, col: np.ndarray, spacing: float,
                  n: int) -> np.ndarray:
    """LPS position of every pixel centre [row, column] (PS3.3 C.7.6.2.1.1)."""
    j, i = np.mgrid[0:n, 0:n]
    return ipp + i[..., None] * spacing * row + j[..., None] * spacing * col


@dataclass(frozen=True)
class CTSpec:
    key: str
    rel_dir: Path
    series_number: int
    description: str
    n_slices: int
    matrix: int
    pixel_mm: float
    table_step_mm: float
    tilt_deg: float
    signed: bool
    contrast: str | None
    first_z: float
    centre_xy: tuple[float, float]
    file_pattern: str           # format with instance=, n= (series number)
    overlay: bool = False       # a graphics overlay (60xx) naming the patient on instance 1


def _ct_series(out: Path, spec: CTSpec, study: Study, phantom: Phantom, seed: int,
               planted: Planted, tissue_hu: float | None = None) -> tuple[dict, list[Dataset]]:
    """An axial CT volume; InstanceNumbers deliberately shuffled (not geometric order)."""
    rng = np.random.default_rng([seed, spec.series_number, spec.n_slices, spec.matrix])
    if tissue_hu is not None:
        phantom = Phantom(phantom.centre, phantom.semi_axes, phantom.skull_mm,
                          phantom.sphere_centre, phantom.sphere_radius, tissue_hu=tissue_hu)
    t = math.radians(spec.tilt_deg)
    row = np.array([1.0, 0.0, 0.0])
    col = np.array([0.0, math.cos(t), -math.sin(t)])  # GE-style tilt (column cosine)
    half = (spec.matrix - 1) / 2 * spec.pixel_mm
    series_uid = demo_uid(seed, "series", spec.key)
    frame_uid = demo_uid(seed, "for", study.uid)
    instance_numbers = rng.permutation(spec.n_slices) + 1
    acq0 = study.time_s + 300 + spec.series_number * 20
    datasets, slices = [], []
    for k in range(spec.n_slices):
        ipp = np.array([spec.centre_xy[0] - half, spec.centre_xy[1] - half * math.cos(t),
                        spec.first_z + k * spec.table_step_mm + half * math.sin(t)])
        ipp = np.round(ipp, 4)
        hu = phantom.hu(_slice_points(ipp, row, col, spec.pixel_mm, spec.matrix))
        hu = hu + rng.normal(0, 3, size=hu.shape) * (hu > -900)
        stored = np.round(hu).astype(np.int32) + HU_OFFSET
        instance = int(instance_numbers[k])
        ds = _file_dataset(CT_IMAGE_STORAGE, demo_uid(seed, "sop", series_uid, instance))
        ds.SOPClassUID = CT_IMAGE_STORAGE
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
        where = str(spec.rel_dir)
        _plant_header(ds, study, planted, where)
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        _series_header(ds, modality="CT", series_uid=series_uid, series_number=spec.series_number,
                       description=spec.description, date=study.date, time_s=acq0 - 5,
                       frame_uid=frame_uid, planted=planted, where=where)
        acq = acq0 + 0.35 * k
        _instance_times(ds, study.date, acq, acq + 1)
        planted.add("time", ds.AcquisitionTime, f"{where}: AcquisitionTime")
        ds.InstanceNumber = instance
        ds.AcquisitionNumber = 1
        ds.BodyPartExamined = "HEAD"
        ds.PatientPosition = "HFS"
        ds.ScanOptions = "AXIAL MODE" if spec.tilt_deg else "HELICAL MODE"
        ds.KVP = 120
        ds.XRayTubeCurrent = 250
        ds.ExposureTime = 1000
        ds.ConvolutionKernel = "H30s"
        ds.GantryDetectorTilt = spec.tilt_deg
        ds.TableHeight = 145.0
        ds.SliceThickness = round(spec.table_step_mm * math.cos(t), 4)
        ds.ImagePositionPatient = [float(v) for v in ipp]
        ds.ImageOrientationPatient = [float(v) for v in np.round(np.concatenate([row, col]), 7)]
        ds.PixelSpacing = [spec.pixel_mm, spec.pixel_mm]
        ds.SliceLocation = round(float(ipp[2]), 4)
        ds.RescaleIntercept = -HU_OFFSET
        ds.RescaleSlope = 1
        ds.RescaleType = "HU"
        ds.WindowCenter = 40
        ds.WindowWidth = 400
        ds.ImageComments = study.comment_text
        if spec.contrast:
            ds.ContrastBolusAgent = spec.contrast
            ds.ContrastBolusRoute = "IV"
            ds.ContrastBolusVolume = 60
        _pixels_mono16(ds, stored, signed=spec.signed, bits_stored=16 if spec.signed else 12)
        if spec.overlay and instance == 1:
            _add_overlay(ds, study.person, planted, where)
        name = spec.file_pattern.format(instance=instance, n=spec.series_number)
        _save(ds, out / spec.rel_dir / name)
        datasets.append(ds)
        slices.append({"file": str(spec.rel_dir / name), "instance": instance,
                       "ipp": [float(v) for v in ipp]})
    info = {
        "key": spec.key, "dir": str(spec.rel_dir), "series_uid": series_uid,
        "series_number": spec.series_number, "description": spec.description,
        "n_slices": spec.n_slices, "rows": spec.matrix, "columns": spec.matrix,
        "pixel_spacing_mm": spec.pixel_mm, "table_step_mm": spec.table_step_mm,
        "slice_spacing_along_normal_mm": round(spec.table_step_mm * math.cos(t), 6),
        "tilt_deg": spec.tilt_deg, "contrast": spec.contrast,
        "image_orientation": [float(v) for v in np.concatenate([row, col])],
        "sphere": phantom.as_dict(), "slices": slices,
    }
    return info, datasets


def _add_overlay(ds: Dataset, person: Person, planted: Planted, where: str) -> None:
    """Overlay plane 6000 (PS3.3 C.9.2) whose description names the patient: a
    'Clean Graphics' target (PS3.15 E.3.4)."""
    from pydicom.pixels.utils import pack_bits

    rows, cols = int(ds.Rows), int(ds.Columns)
    bits = np.zeros((rows, cols), dtype=np.uint8)
    bits[4:12, 4:60] = 1  # a label box in the corner
    ds.add_new(0x60000010, "US", rows)           # OverlayRows
    ds.add_new(0x60000011, "US", cols)           # OverlayColumns
    ds.add_new(0x60000022, "LO", f"Annotation for {person.name.replace('^', ' ')}")  # OverlayDescription
    ds.add_new(0x60000040, "CS", "G")            # OverlayType
    ds.add_new(0x60000050, "SS", [1, 1])         # OverlayOrigin
    ds.add_new(0x60000100, "US", 1)              # OverlayBitsAllocated
    ds.add_new(0x60000102, "US", 0)              # OverlayBitPosition
    ds.add_new(0x60001500, "LO", person.patient_id)  # OverlayLabel
    ds.add_new(0x60003000, "OW", pack_bits(bits.ravel()))  # OverlayData
    planted.add("id", person.patient_id, f"{where}: OverlayLabel (6000,1500)")


def _scout(out: Path, rel_path: Path, study: Study, phantom: Phantom, seed: int,
           series_number: int, planted: Planted) -> dict:
    """A coronal localizer (ImageType ORIGINAL\\PRIMARY\\LOCALIZER), one image."""
    n, spacing = 128, 1.5
    row, col = np.array([1.0, 0.0, 0.0]), np.array([0.0, 0.0, -1.0])
    cx, cy, cz = phantom.centre
    ipp = np.array([cx - (n - 1) / 2 * spacing, cy, cz + (n - 1) / 2 * spacing])
    j, i = np.mgrid[0:n, 0:n]
    x = (ipp[0] + i * spacing - cx) / phantom.semi_axes[0]
    z = (ipp[2] - j * spacing - cz) / phantom.semi_axes[2]
    chord = np.sqrt(np.clip(1 - x ** 2 - z ** 2, 0, None))
    stored = np.round(200 + 1800 * chord).astype(np.int32)
    series_uid = demo_uid(seed, "series", str(rel_path), "scout")
    ds = _file_dataset(CT_IMAGE_STORAGE, demo_uid(seed, "sop", series_uid, 1))
    ds.SOPClassUID = CT_IMAGE_STORAGE
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    _plant_header(ds, study, planted, str(rel_path.parent))
    ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    _series_header(ds, modality="CT", series_uid=series_uid, series_number=series_number,
                   description="Topogram 0.6 T20f", date=study.date, time_s=study.time_s + 120,
                   frame_uid=demo_uid(seed, "for", study.uid), planted=planted,
                   where=str(rel_path.parent))
    _instance_times(ds, study.date, study.time_s + 125, study.time_s + 126)
    ds.InstanceNumber = 1
    ds.AcquisitionNumber = 1
    ds.BodyPartExamined = "HEAD"
    ds.PatientPosition = "HFS"
    ds.KVP = 120
    ds.ImagePositionPatient = [float(v) for v in np.round(ipp, 4)]
    ds.ImageOrientationPatient = [float(v) for v in np.concatenate([row, col])]
    ds.PixelSpacing = [spacing, spacing]
    ds.SliceThickness = 0.6
    ds.RescaleIntercept = -HU_OFFSET
    ds.RescaleSlope = 1
    _pixels_mono16(ds, stored, signed=False, bits_stored=12)
    _save(ds, out / rel_path)
    return {"file": str(rel_path), "series_uid": series_uid, "series_number": series_number,
            "orientation": "coronal"}


def _text_image(lines: list[str], size: tuple[int, int]) -> np.ndarray:
    """RGB pixels with the lines rendered in Pillow's built-in bitmap font."""
    from PIL import Image, ImageDraw, ImageFont

    img = Image.new("RGB", size, (0, 0, 0))
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default_imagefont()
    for k, line in enumerate(lines):
        draw.text((6, 6 + 14 * k), line, fill=(230, 230, 230), font=font)
    draw.rectangle([2, 2, size[0] - 3, size[1] - 3], outline=(90, 160, 255))
    return np.asarray(img, dtype=np.uint8)


def _dose_report(out: Path, rel_path: Path, study: Study, seed: int, planted: Planted) -> dict:
    """A dose screen: Secondary Capture (1.2.840.10008.5.1.4.1.1.7), burned-in text."""
    p = study.person
    lines = [
        "Dose Report",
        f"Patient: {p.ascii_name}   ID: {p.patient_id}",
        f"Exam date: {study.date[:4]}-{study.date[4:6]}-{study.date[6:]}  Acc: {study.accession}",
        "Series  Scan    kV  mAs  CTDIvol  DLP",
        "1  Topogram    120   35    0.12     1.2",
        "2  Head       120  250   45.21   812.3",
        f"Total DLP 813.5 mGy*cm   {study.site.institution}",
    ]
    rgb = _text_image(lines, (320, 112))
    series_uid = demo_uid(seed, "series", str(rel_path), "dose")
    ds = _file_dataset(SECONDARY_CAPTURE_STORAGE, demo_uid(seed, "sop", series_uid, 1))
    ds.SOPClassUID = SECONDARY_CAPTURE_STORAGE
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    _plant_header(ds, study, planted, str(rel_path.parent))
    ds.ImageType = ["DERIVED", "SECONDARY", "OTHER", "CT_SOM5 PROT"]
    _series_header(ds, modality="CT", series_uid=series_uid, series_number=999,
                   description="Dose Report", date=study.date, time_s=study.time_s + 900,
                   frame_uid=None, planted=planted, where=str(rel_path.parent))
    _instance_times(ds, study.date, study.time_s + 900, study.time_s + 901)
    ds.InstanceNumber = 1
    ds.ConversionType = "WSD"
    ds.BurnedInAnnotation = "YES"
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "RGB"
    ds.PlanarConfiguration = 0
    ds.Rows, ds.Columns = rgb.shape[:2]
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = rgb.tobytes()
    _save(ds, out / rel_path)
    return {"file": str(rel_path), "series_uid": series_uid, "series_number": 999,
            "burned_in_text": lines}


def _ct_study(person_key: str, site_key: str, date: str, seed: int) -> Study:
    p, site = PEOPLE[person_key], SITES[site_key]
    uid = dated_uid(seed, p.birth_date, "study", person_key, date)
    return Study(p, site, date, 8 * 3600 + 41 * 60 + 7.25, uid,
                 f"ACC{p.patient_id[-5:]}{date[2:6]}", f"{date[-4:]}1",
                 f"CT HEAD {p.name.replace('^', ' ')}",
                 f"Orbit trauma, {p.name.replace('^', ' ')}, please assess")


def _ct_exams(out: Path, seed: int, planted: Planted) -> list[dict]:
    exams = []
    # Exam 1: series subfolders, regular axial CT with shuffled InstanceNumbers.
    p1 = PEOPLE["roe"]
    st1 = _ct_study("roe", "orbit", "20180611", seed)
    base1 = Path("ct_exams") / p1.folder
    planted.add("folder", p1.folder, f"{base1}: exam folder")
    ph1 = Phantom((3.0, -12.0, -40.0), (40.0, 36.0, 35.0), 3.5, (15.0, -21.0, -32.0), 3.5)
    spec1 = CTSpec("roe_ax", base1 / "SER0002_HEAD_AX", 2, "Head 1.25 H30s", 40, 128, 0.75,
                   1.25, 0.0, False, None, -64.375, (3.0, -12.0), "IM{instance:05d}.dcm",
                   overlay=True)
    ax1, _ = _ct_series(out, spec1, st1, ph1, seed, planted)
    exams.append({
        "exam": p1.folder, "dir": str(base1), "patient_id": p1.patient_id, "layout": "series subfolders",
        "series": [
            _scout(out, base1 / "SER0001_SCOUT" / "IM00001.dcm", st1, ph1, seed, 1, planted) | {"kind": "localizer"},
            ax1 | {"kind": "ct_axial"},
            _dose_report(out, base1 / "SER0999_DOSE" / "IM00001.dcm", st1, seed, planted) | {"kind": "dose_report"},
        ],
    })
    # Exam 2: flat folder; tilted axial CT (gantry tilt 12 deg) and a contrast series.
    p2 = PEOPLE["garcia"]
    st2 = _ct_study("garcia", "orbit", "20210228", seed)
    base2 = Path("ct_exams") / p2.folder
    planted.add("folder", p2.folder, f"{base2}: exam folder")
    ph2 = Phantom((-2.0, 8.0, 120.0), (38.0, 34.0, 32.0), 3.5, (-10.5, 14.0, 126.0), 3.5)
    spec2 = CTSpec("garcia_tilt", base2, 3, "Head 1.0 tilt", 36, 128, 0.7, 1.0, 12.0, True, None,
                   102.5, (-2.0, 8.0), "CT.{n}.{instance:04d}.dcm")
    tilt, _ = _ct_series(out, spec2, st2, ph2, seed, planted)
    spec3 = CTSpec("garcia_contrast", base2, 5, "Head C+ 1.25", 20, 128, 0.7, 1.25, 0.0, True,
                   "IOMERON 350", 108.0, (-2.0, 8.0), "CT.{n}.{instance:04d}.dcm")
    contrast, _ = _ct_series(out, spec3, st2, ph2, seed, planted, tissue_hu=85.0)
    exams.append({
        "exam": p2.folder, "dir": str(base2), "patient_id": p2.patient_id, "layout": "flat",
        "series": [
            _scout(out, base2 / "CT.1.0001.dcm", st2, ph2, seed, 1, planted) | {"kind": "localizer"},
            tilt | {"kind": "ct_axial"},
            contrast | {"kind": "ct_axial"},
            _dose_report(out, base2 / "CT.999.0001.dcm", st2, seed, planted) | {"kind": "dose_report"},
        ],
    })
    return exams


# --------------------------------------------------------------------------
# (c) XNAT session with SEG assessors
# --------------------------------------------------------------------------

XNAT_PROJECT = "ORBIT_DEMO"


def _catalog_xml(resource: str, entries: list[dict]) -> str:
    """An XNAT resource catalog (``cat:Catalog`` with ``cat:entry`` rows)."""
    rows = "\n".join(
        f'    <cat:entry URI="{e["uri"]}" ID="{e["id"]}" xsi:type="cat:entryBean" '
        f'format="DICOM" content="{e["content"]}" createdBy="{e["created_by"]}" '
        f'createdTime="{e["created_time"]}" createdEventId="{e["event_id"]}" '
        f'digest="{e["digest"]}"/>'
        for e in entries)
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<cat:Catalog xmlns:arc="http://nrg.wustl.edu/arc" xmlns:cat="http://nrg.wustl.edu/catalog" '
        'xmlns:xnat="http://nrg.wustl.edu/xnat" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
        f'ID="{resource}">\n  <cat:entries>\n{rows}\n  </cat:entries>\n</cat:Catalog>\n')


def _fix_seg_determinism(seg: Dataset, seed: int, key: str, date: str, time_s: float) -> None:
    """highdicom stamps 'now' and random dimension-organisation UIDs: pin them."""
    seg.InstanceCreationDate = date
    seg.InstanceCreationTime = _tm(time_s)
    seg.ContentDate = date
    seg.ContentTime = _tm(time_s)
    seg.SeriesDate = date
    seg.SeriesTime = _tm(time_s)
    dim_uid = demo_uid(seed, "dimension-organisation", key)
    for elem in seg.iterall():
        if elem.keyword == "DimensionOrganizationUID":
            elem.value = dim_uid
        elif elem.keyword == "ContributionDateTime":  # ContributingEquipmentSequence
            elem.value = date + _tm(time_s)


def _write_seg(path: Path, source: list[Dataset], masks: np.ndarray, segments: list[dict],
               *, seed: int, key: str, series_number: int, description: str, creator: str,
               study: Study, time_s: float) -> dict:
    """A BINARY highdicom Segmentation of ``source`` (frames in source order)."""
    import highdicom as hd

    descriptions = []
    for k, seg in enumerate(segments, start=1):
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=k, segment_label=seg["label"],
            segmented_property_category=seg["category"],
            segmented_property_type=seg["type"],
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
            tracking_uid=demo_uid(seed, "tracking", key, k),
            tracking_id=f"{key}-{seg['label']}",
            display_color=hd.color.CIELabColor.from_rgb(*seg["rgb"])))
    series_uid = demo_uid(seed, "series", "seg", key)
    seg_ds = hd.seg.Segmentation(
        source_images=source, pixel_array=masks.astype(bool),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions, series_instance_uid=series_uid,
        series_number=series_number, sop_instance_uid=demo_uid(seed, "sop", series_uid, 1),
        instance_number=1, manufacturer="DemoSeg", manufacturer_model_name="OHIF Viewer",
        software_versions="3.7", device_serial_number="SEG-0001",
        content_description=description, content_label="SEGMENTATION",
        content_creator_name=creator, series_description=description,
        specific_character_set=study.person.charset,
        content_date=study.date, content_time=_tm(time_s))
    _fix_seg_determinism(seg_ds, seed, key, study.date, time_s)
    _save(seg_ds, path)
    return {
        "series_uid": series_uid, "sop_instance_uid": str(seg_ds.SOPInstanceUID),
        "series_description": description, "content_creator": creator,
        "segments": [{"number": k, "label": s["label"],
                      "category": [s["category"].value, s["category"].meaning],
                      "type": [s["type"].value, s["type"].meaning],
                      "display_rgb": list(s["rgb"]),
                      "n_voxels": int(masks[..., k - 1].sum())}
                     for k, s in enumerate(segments, start=1)],
    }


def _xnat(out: Path, seed: int, planted: Planted) -> dict:
    from pydicom.sr.codedict import codes

    p = PEOPLE["ostergaard"]
    study = _ct_study("ostergaard", "xnat", "20190405", seed)
    subject = p.folder
    session = f"{p.folder}_CT_{study.date}"
    base = Path("xnat") / XNAT_PROJECT / subject / session
    planted.add("folder", subject, f"{base}: XNAT subject folder")
    planted.add("folder", session, f"{base}: XNAT session folder")
    ph = Phantom((0.0, -5.0, 30.0), (22.0, 20.0, 20.0), 2.5, (6.0, -9.0, 31.0), 3.0)
    scout = _scout(out, base / "SCANS" / "1" / "DICOM" / f"{session}.CT.Topogram.1.1.dcm",
                   study, ph, seed, 1, planted)
    scan_dir = base / "SCANS" / "2" / "DICOM"
    spec = CTSpec("xnat_ct", scan_dir, 2, "HEAD_AX_1.25", 12, 64, 0.8, 1.25, 0.0, False, None,
                  23.125, (0.0, -5.0), session + ".CT.HEAD_AX.{n}.{instance}." + study.date + ".dcm")
    ct, datasets = _ct_series(out, spec, study, ph, seed, planted)
    _text(out / scan_dir / "scan_2_catalog.xml", _catalog_xml("DICOM", [
        {"uri": Path(s["file"]).name, "id": demo_uid(seed, "sop", ct["series_uid"], s["instance"]),
         "content": "RAW", "created_by": "xnat_import", "created_time": "2019-04-05T12:01:33.120+02:00",
         "event_id": "100231", "digest": hashlib.md5(Path(s["file"]).name.encode()).hexdigest()}
        for s in sorted(ct["slices"], key=lambda s: s["instance"])]))

    # Masks on the source grid, frames in position order (the order passed to highdicom).
    order = sorted(range(len(datasets)), key=lambda k: float(datasets[k].ImagePositionPatient[2]))
    source = [datasets[k] for k in order]
    row, col = np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0])
    pts = np.stack([_slice_points(np.array(ds.ImagePositionPatient, float), row, col, 0.8, 64)
                    for ds in source])
    hu = ph.hu(pts)
    head = hu > -200
    sphere = np.linalg.norm(pts - np.array(ph.sphere_centre), axis=-1) <= ph.sphere_radius
    skull = (hu >= 900) & ~sphere
    lesion_big = np.linalg.norm(pts - np.array(ph.sphere_centre), axis=-1) <= ph.sphere_radius + 1.5

    assessors = []
    specs = [
        ("SEG_20190405_141502_rater1", "rater1", "2019-04-05T14:15:02.331+02:00",
         [("orbit_rater1.dcm", 101, "orbit_rater1", "Rater^One",
           [{"label": "Head", "category": codes.SCT.AnatomicalStructure, "type": codes.SCT.Head,
             "rgb": (177, 122, 101)},
            {"label": "Lesion", "category": codes.SCT.MorphologicallyAbnormalStructure,
             "type": codes.SCT.Lesion, "rgb": (220, 40, 40)}],
           np.stack([head, lesion_big], axis=-1))]),
        ("SEG_20190406_093011_rater2", "rater2", "2019-04-06T09:30:11.904+02:00",
         [("skull_rater2.dcm", 102, "skull_rater2", "Rater^Two",
           [{"label": "Skull", "category": codes.SCT.Tissue, "type": codes.SCT.Bone,
             "rgb": (241, 214, 145)}],
           skull[..., None]),
          ("lesion_rater2.dcm", 103, "lesion_rater2", "Rater^Two",
           [{"label": "Lesion", "category": codes.SCT.Tissue, "type": codes.SCT.Lesion,
             "rgb": (40, 200, 60)}],
           sphere[..., None])]),
    ]
    for a_idx, (assessor, user, created, files) in enumerate(specs):
        seg_dir = base / "ASSESSORS" / assessor / "SEG"
        entries, segs = [], []
        for f_idx, (fname, number, desc, creator, segments, masks) in enumerate(files):
            info = _write_seg(out / seg_dir / fname, source, masks, segments, seed=seed,
                              key=f"{assessor}/{fname}", series_number=number, description=desc,
                              creator=creator, study=study, time_s=14 * 3600 + 15 * 60 + a_idx * 60 + f_idx)
            info.update({"file": str(seg_dir / fname), "assessor": assessor, "created_by": user,
                         "created_time": created, "source_series_uid": ct["series_uid"],
                         "source_sop_instance_uids": [str(ds.SOPInstanceUID) for ds in source]})
            segs.append(info)
            entries.append({"uri": fname, "id": info["sop_instance_uid"], "content": "SEG",
                            "created_by": user, "created_time": created,
                            "event_id": str(200400 + 10 * a_idx + f_idx),
                            "digest": hashlib.md5((out / seg_dir / fname).read_bytes()).hexdigest()})
        _text(out / seg_dir / "SEG_catalog.xml", _catalog_xml("SEG", entries))
        assessors.append({"name": assessor, "dir": str(seg_dir), "created_by": user,
                          "created_time": created, "catalog": str(seg_dir / "SEG_catalog.xml"),
                          "segmentations": segs})
    return {"project": XNAT_PROJECT, "subject": subject, "session": session, "dir": str(base),
            "patient_id": p.patient_id,
            "scans": [scout | {"scan": "1", "kind": "localizer"}, ct | {"scan": "2", "kind": "ct_axial"}],
            "assessors": assessors}


# --------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------

def _check_out_dir(out: Path) -> None:
    """Refuse a non-empty folder that is not a previous demo (never delete user data)."""
    out.mkdir(parents=True, exist_ok=True)
    existing = [p for p in out.iterdir()
                if p.name != ".complete" and not p.name.startswith(STAGING_PREFIX)]
    if existing and not (out / MANIFEST_NAME).exists():
        raise DicomprepError(
            f"{out} is not empty and holds no {MANIFEST_NAME}: the demo cohort is written only "
            "into an empty folder or over a previous demo; choose another folder.")


def _replace_entries(staging: Path, out: Path) -> None:
    """Move the freshly built entries over the previous demo; the manifest last."""
    for name in DEMO_ENTRIES:
        target = out / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
    for name in DEMO_ENTRIES:
        if (staging / name).exists():
            os.replace(staging / name, out / name)


def make_demo(out_dir, *, seed: int = 0) -> dict:
    """Write the synthetic demo cohort into ``out_dir`` and return its manifest.

    Deterministic: the same ``seed`` gives byte-identical files. The manifest
    (also written to ``out_dir/demo_manifest.json``, paths relative to
    ``out_dir``) lists every series with what tests need (b-values, RR
    intervals, CT sphere positions in LPS, SEG segments and sources) and
    ``planted``: every identifying value with its kind. The cohort is built in
    a hidden staging folder inside ``out_dir`` and moved into place at the end,
    so an interrupted build leaves no half-written cohort.
    """
    out = Path(out_dir)
    _check_out_dir(out)
    for stale in out.glob(STAGING_PREFIX + "*"):
        shutil.rmtree(stale, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=out))
    try:
        manifest = _build(staging, seed)
        _replace_entries(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return manifest


def _build(out: Path, seed: int) -> dict:
    planted = Planted()
    _text(out / "README.txt",
          "Synthetic dicomprep demo cohort. Every person, institution and value is fictitious.\n")
    cdti = [_diffusion_series(out, spec, seed, planted) for spec in CDTI_SPECS]
    ct = _ct_exams(out, seed, planted)
    xnat = _xnat(out, seed, planted)
    manifest = {
        "demo_version": 1, "seed": seed, "uid_root": UID_ROOT,
        "layout": {
            "cdti": "<group>/dicom/<SE|STEAM>/<subject>/<scan>/<files>",
            "exam": "ct_exams/<exam folder>/[<series folder>/]<files>",
            "xnat": "xnat/<project>/<subject>/<session>/SCANS/<n>/DICOM/*.dcm and "
                    "ASSESSORS/<assessor>/SEG/{*.dcm,SEG_catalog.xml}",
        },
        "patients": {k: {"name": p.name, "patient_id": p.patient_id, "birth_date": p.birth_date,
                         "charset": p.charset, "folder": p.folder} for k, p in PEOPLE.items()},
        "cdti": cdti, "ct": ct, "xnat": xnat, "planted": planted.as_list(),
    }
    _text(out / MANIFEST_NAME, json.dumps(manifest, indent=1, ensure_ascii=False) + "\n")
    return manifest
