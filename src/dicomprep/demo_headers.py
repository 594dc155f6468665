"""Demo cohort, shared parts: its people, sites and planted identifiers, and the
DICOM header modules every demo series carries (see :mod:`dicomprep.demo`).

UIDs are derived from pydicom's registered root (PS3.5 9.1) and the seed, so
two builds are byte-identical. Every identifying value a header receives is
recorded in :class:`Planted` with its kind and where it went.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian

#: pydicom's registered root (PS3.5 9.1); demo UIDs are ROOT + digits.
UID_ROOT = "1.2.826.0.1.3680043.8.498."

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


def tm_text(seconds: float) -> str:
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


def file_dataset(sop_class: str, sop_uid: str) -> Dataset:
    """An empty dataset with its PS3.10 file meta information (Explicit VR Little Endian)."""
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


def plant_header(ds: Dataset, st: Study, planted: Planted, where: str) -> None:
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
    ds.StudyTime = tm_text(st.time_s)
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


def series_header(ds: Dataset, *, modality: str, series_uid: str, series_number: int,
                   description: str, date: str, time_s: float, frame_uid: str | None,
                   planted: Planted, where: str) -> None:
    """General Series module (PS3.3 C.7.3.1) and FrameOfReferenceUID (0020,0052)."""
    ds.Modality = modality
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = series_number
    ds.SeriesDescription = description
    ds.ProtocolName = description
    ds.SeriesDate = date
    ds.SeriesTime = tm_text(time_s)
    planted.add("time", ds.SeriesTime, f"{where}: SeriesTime")
    if frame_uid:
        ds.FrameOfReferenceUID = frame_uid
        ds.PositionReferenceIndicator = ""


def instance_times(ds: Dataset, date: str, acq_s: float, content_s: float) -> None:
    """InstanceCreation, Acquisition and Content date/time (PS3.3 C.12.1, C.7.6.1)."""
    ds.InstanceCreationDate = date
    ds.InstanceCreationTime = tm_text(content_s)
    ds.AcquisitionDate = date
    ds.AcquisitionTime = tm_text(acq_s)
    ds.AcquisitionDateTime = date + tm_text(acq_s)
    ds.ContentDate = date
    ds.ContentTime = tm_text(content_s)


def pixels_mono16(ds: Dataset, array: np.ndarray, *, signed: bool, bits_stored: int) -> None:
    """Image Pixel module (PS3.3 C.7.6.3) of a 16-bit MONOCHROME2 image."""
    arr = np.asarray(array)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = arr.shape
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 1 if signed else 0
    ds.PixelData = arr.astype("<i2" if signed else "<u2").tobytes()


def save_dataset(ds: Dataset, path: Path) -> None:
    """Write a PS3.10 file into the staging folder (made atomic by the final move)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def save_text(path: Path, text: str) -> None:
    """A UTF-8 text file into the staging folder (made atomic by the final move)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
