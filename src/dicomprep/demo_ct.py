"""Demo cohort (b): CT exam folders: the head phantom, axial (also tilted and
contrast) series, localizers, and dose-report screens with burned-in text
(see :mod:`dicomprep.demo`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset
from pydicom.pixels.utils import pack_bits

from .demo_headers import (
    CT_IMAGE_STORAGE, HU_OFFSET, PEOPLE, SECONDARY_CAPTURE_STORAGE, SITES, Person, Planted, Study, dated_uid,
    demo_uid, file_dataset, instance_times, pixels_mono16, plant_header, save_dataset, series_header,
)


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


def slice_points(ipp: np.ndarray, row: np.ndarray, col: np.ndarray, spacing: float,
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


def ct_series(out: Path, spec: CTSpec, study: Study, phantom: Phantom, seed: int,
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
        hu = phantom.hu(slice_points(ipp, row, col, spec.pixel_mm, spec.matrix))
        hu = hu + rng.normal(0, 3, size=hu.shape) * (hu > -900)
        stored = np.round(hu).astype(np.int32) + HU_OFFSET
        instance = int(instance_numbers[k])
        ds = file_dataset(CT_IMAGE_STORAGE, demo_uid(seed, "sop", series_uid, instance))
        ds.SOPClassUID = CT_IMAGE_STORAGE
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
        where = str(spec.rel_dir)
        plant_header(ds, study, planted, where)
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        series_header(ds, modality="CT", series_uid=series_uid, series_number=spec.series_number,
                       description=spec.description, date=study.date, time_s=acq0 - 5,
                       frame_uid=frame_uid, planted=planted, where=where)
        acq = acq0 + 0.35 * k
        instance_times(ds, study.date, acq, acq + 1)
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
        pixels_mono16(ds, stored, signed=spec.signed, bits_stored=16 if spec.signed else 12)
        if spec.overlay and instance == 1:
            _add_overlay(ds, study.person, planted, where)
        name = spec.file_pattern.format(instance=instance, n=spec.series_number)
        save_dataset(ds, out / spec.rel_dir / name)
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


def scout_series(out: Path, rel_path: Path, study: Study, phantom: Phantom, seed: int,
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
    ds = file_dataset(CT_IMAGE_STORAGE, demo_uid(seed, "sop", series_uid, 1))
    ds.SOPClassUID = CT_IMAGE_STORAGE
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    plant_header(ds, study, planted, str(rel_path.parent))
    ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    series_header(ds, modality="CT", series_uid=series_uid, series_number=series_number,
                   description="Topogram 0.6 T20f", date=study.date, time_s=study.time_s + 120,
                   frame_uid=demo_uid(seed, "for", study.uid), planted=planted,
                   where=str(rel_path.parent))
    instance_times(ds, study.date, study.time_s + 125, study.time_s + 126)
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
    pixels_mono16(ds, stored, signed=False, bits_stored=12)
    save_dataset(ds, out / rel_path)
    return {"file": str(rel_path), "series_uid": series_uid, "series_number": series_number,
            "orientation": "coronal"}


def _text_image(lines: list[str], size: tuple[int, int]) -> np.ndarray:
    """RGB pixels with the lines rendered in Pillow's built-in bitmap font."""
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
    ds = file_dataset(SECONDARY_CAPTURE_STORAGE, demo_uid(seed, "sop", series_uid, 1))
    ds.SOPClassUID = SECONDARY_CAPTURE_STORAGE
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    plant_header(ds, study, planted, str(rel_path.parent))
    ds.ImageType = ["DERIVED", "SECONDARY", "OTHER", "CT_SOM5 PROT"]
    series_header(ds, modality="CT", series_uid=series_uid, series_number=999,
                   description="Dose Report", date=study.date, time_s=study.time_s + 900,
                   frame_uid=None, planted=planted, where=str(rel_path.parent))
    instance_times(ds, study.date, study.time_s + 900, study.time_s + 901)
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
    save_dataset(ds, out / rel_path)
    return {"file": str(rel_path), "series_uid": series_uid, "series_number": 999,
            "burned_in_text": lines}


def ct_study(person_key: str, site_key: str, date: str, seed: int) -> Study:
    """The study (patient, site, date, keyed UID) of one CT exam."""
    p, site = PEOPLE[person_key], SITES[site_key]
    uid = dated_uid(seed, p.birth_date, "study", person_key, date)
    return Study(p, site, date, 8 * 3600 + 41 * 60 + 7.25, uid,
                 f"ACC{p.patient_id[-5:]}{date[2:6]}", f"{date[-4:]}1",
                 f"CT HEAD {p.name.replace('^', ' ')}",
                 f"Orbit trauma, {p.name.replace('^', ' ')}, please assess")


def ct_exams(out: Path, seed: int, planted: Planted) -> list[dict]:
    """The two CT exam folders under ``ct_exams/``; returns their manifest entries."""
    exams = []
    # Exam 1: series subfolders, regular axial CT with shuffled InstanceNumbers.
    p1 = PEOPLE["roe"]
    st1 = ct_study("roe", "orbit", "20180611", seed)
    base1 = Path("ct_exams") / p1.folder
    planted.add("folder", p1.folder, f"{base1}: exam folder")
    ph1 = Phantom((3.0, -12.0, -40.0), (40.0, 36.0, 35.0), 3.5, (15.0, -21.0, -32.0), 3.5)
    spec1 = CTSpec("roe_ax", base1 / "SER0002_HEAD_AX", 2, "Head 1.25 H30s", 40, 128, 0.75,
                   1.25, 0.0, False, None, -64.375, (3.0, -12.0), "IM{instance:05d}.dcm",
                   overlay=True)
    ax1, _ = ct_series(out, spec1, st1, ph1, seed, planted)
    exams.append({
        "exam": p1.folder, "dir": str(base1), "patient_id": p1.patient_id, "layout": "series subfolders",
        "series": [
            scout_series(out, base1 / "SER0001_SCOUT" / "IM00001.dcm", st1, ph1, seed, 1, planted) | {"kind": "localizer"},
            ax1 | {"kind": "ct_axial"},
            _dose_report(out, base1 / "SER0999_DOSE" / "IM00001.dcm", st1, seed, planted) | {"kind": "dose_report"},
        ],
    })
    # Exam 2: flat folder; tilted axial CT (gantry tilt 12 deg) and a contrast series.
    p2 = PEOPLE["garcia"]
    st2 = ct_study("garcia", "orbit", "20210228", seed)
    base2 = Path("ct_exams") / p2.folder
    planted.add("folder", p2.folder, f"{base2}: exam folder")
    ph2 = Phantom((-2.0, 8.0, 120.0), (38.0, 34.0, 32.0), 3.5, (-10.5, 14.0, 126.0), 3.5)
    spec2 = CTSpec("garcia_tilt", base2, 3, "Head 1.0 tilt", 36, 128, 0.7, 1.0, 12.0, True, None,
                   102.5, (-2.0, 8.0), "CT.{n}.{instance:04d}.dcm")
    tilt, _ = ct_series(out, spec2, st2, ph2, seed, planted)
    spec3 = CTSpec("garcia_contrast", base2, 5, "Head C+ 1.25", 20, 128, 0.7, 1.25, 0.0, True,
                   "IOMERON 350", 108.0, (-2.0, 8.0), "CT.{n}.{instance:04d}.dcm")
    contrast, _ = ct_series(out, spec3, st2, ph2, seed, planted, tissue_hu=85.0)
    exams.append({
        "exam": p2.folder, "dir": str(base2), "patient_id": p2.patient_id, "layout": "flat",
        "series": [
            scout_series(out, base2 / "CT.1.0001.dcm", st2, ph2, seed, 1, planted) | {"kind": "localizer"},
            tilt | {"kind": "ct_axial"},
            contrast | {"kind": "ct_axial"},
            _dose_report(out, base2 / "CT.999.0001.dcm", st2, seed, planted) | {"kind": "dose_report"},
        ],
    })
    return exams
