"""Demo cohort (a): cardiac diffusion series, spin echo and STEAM, with a derived
ADC map (see :mod:`dicomprep.demo` for what each series exercises).

Diffusion attributes at top level as Siemens XA interoperability exports write
them: DiffusionBValue (0018,9087), DiffusionDirectionality (0018,9075),
DiffusionGradientDirectionSequence (0018,9076) > DiffusionGradientOrientation
(0018,9089); NominalInterval (0018,1062) = the RR interval in ms.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence

from .demo_headers import (
    MR_IMAGE_STORAGE, PEOPLE, SITES, Person, Planted, Study, dated_uid, demo_uid, file_dataset, instance_times,
    pixels_mono16, plant_header, save_dataset, series_header,
)


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


def diffusion_series(out: Path, spec: DiffusionSpec, seed: int, planted: Planted) -> dict:
    """One cDTI series (and its ADC map when ``spec`` asks); returns its manifest entry."""
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
        ds = file_dataset(MR_IMAGE_STORAGE, demo_uid(seed, "sop", series_uid, instance))
        ds.SOPClassUID = MR_IMAGE_STORAGE
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
        where = f"{rel_dir}"
        plant_header(ds, study, planted, where)
        ds.ImageType = ["ORIGINAL", "PRIMARY", "DIFFUSION", "NONE"]
        series_header(ds, modality="MR", series_uid=series_uid, series_number=spec.series_number,
                       description="cDTI_STEAM" if seq == "STEAM" else "cDTI_SE_M012",
                       date=spec.study_date, time_s=series_time, frame_uid=frame_uid,
                       planted=planted, where=where)
        instance_times(ds, spec.study_date, t, t + 2.0)
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
        pixels_mono16(ds, pixels, signed=False, bits_stored=12)
        name = _cdti_file_name(spec, person, instance, ds.AcquisitionTime)
        save_dataset(ds, out / rel_dir / name)
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
        pixels_mono16(ds, np.round(myo * 1600 + 30).astype(np.uint16), signed=False, bits_stored=12)
        name = _cdti_file_name(spec, person, sl + 1, ds.AcquisitionTime).replace(
            f".{spec.series_number:04d}.", f".{number:04d}.")
        save_dataset(ds, out / rel_dir / name)
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
