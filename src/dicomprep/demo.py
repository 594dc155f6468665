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

Modules: :mod:`.demo_headers` (people, sites, planted identifiers, the header
modules every series shares), :mod:`.demo_cdti`, :mod:`.demo_ct` and
:mod:`.demo_xnat` (one per part of the cohort); this one builds them in a
staging folder and moves the result into place.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from .demo_cdti import CDTI_SPECS, diffusion_series
from .demo_ct import ct_exams
from .demo_headers import PEOPLE, UID_ROOT, Planted, save_text
from .demo_xnat import xnat_session
from .errors import DicomprepError

MANIFEST_NAME = "demo_manifest.json"
STAGING_PREFIX = ".demo-build-"
#: Top-level entries make_demo owns (and may replace on a re-build).
DEMO_ENTRIES = ("cdti_siteA", "cdti_siteB", "ct_exams", "xnat", "README.txt", MANIFEST_NAME)


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
    save_text(out / "README.txt",
          "Synthetic dicomprep demo cohort. Every person, institution and value is fictitious.\n")
    cdti = [diffusion_series(out, spec, seed, planted) for spec in CDTI_SPECS]
    ct = ct_exams(out, seed, planted)
    xnat = xnat_session(out, seed, planted)
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
    save_text(out / MANIFEST_NAME, json.dumps(manifest, indent=1, ensure_ascii=False) + "\n")
    return manifest
