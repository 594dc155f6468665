"""Demo cohort (c): an XNAT session (SCANS + ASSESSORS) with highdicom SEG
assessors and cat:Catalog XML files (see :mod:`dicomprep.demo`).
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from .demo_ct import CTSpec, Phantom, ct_series, ct_study, scout_series, slice_points
from .demo_headers import PEOPLE, Planted, Study, demo_uid, save_dataset, save_text, tm_text


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
    seg.InstanceCreationTime = tm_text(time_s)
    seg.ContentDate = date
    seg.ContentTime = tm_text(time_s)
    seg.SeriesDate = date
    seg.SeriesTime = tm_text(time_s)
    dim_uid = demo_uid(seed, "dimension-organisation", key)
    for elem in seg.iterall():
        if elem.keyword == "DimensionOrganizationUID":
            elem.value = dim_uid
        elif elem.keyword == "ContributionDateTime":  # ContributingEquipmentSequence
            elem.value = date + tm_text(time_s)


def _write_seg(path: Path, source: list[Dataset], masks: np.ndarray, segments: list[dict],
               *, seed: int, key: str, series_number: int, description: str, creator: str,
               study: Study, time_s: float) -> dict:
    """A BINARY highdicom Segmentation of ``source`` (frames in source order)."""
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
        content_date=study.date, content_time=tm_text(time_s))
    _fix_seg_determinism(seg_ds, seed, key, study.date, time_s)
    save_dataset(seg_ds, path)
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


def xnat_session(out: Path, seed: int, planted: Planted) -> dict:
    """The XNAT session (scans, SEG assessors, catalogs); returns its manifest entry."""
    p = PEOPLE["ostergaard"]
    study = ct_study("ostergaard", "xnat", "20190405", seed)
    subject = p.folder
    session = f"{p.folder}_CT_{study.date}"
    base = Path("xnat") / XNAT_PROJECT / subject / session
    planted.add("folder", subject, f"{base}: XNAT subject folder")
    planted.add("folder", session, f"{base}: XNAT session folder")
    ph = Phantom((0.0, -5.0, 30.0), (22.0, 20.0, 20.0), 2.5, (6.0, -9.0, 31.0), 3.0)
    scout = scout_series(out, base / "SCANS" / "1" / "DICOM" / f"{session}.CT.Topogram.1.1.dcm",
                   study, ph, seed, 1, planted)
    scan_dir = base / "SCANS" / "2" / "DICOM"
    spec = CTSpec("xnat_ct", scan_dir, 2, "HEAD_AX_1.25", 12, 64, 0.8, 1.25, 0.0, False, None,
                  23.125, (0.0, -5.0), session + ".CT.HEAD_AX.{n}.{instance}." + study.date + ".dcm")
    ct, datasets = ct_series(out, spec, study, ph, seed, planted)
    save_text(out / scan_dir / "scan_2_catalog.xml", _catalog_xml("DICOM", [
        {"uri": Path(s["file"]).name, "id": demo_uid(seed, "sop", ct["series_uid"], s["instance"]),
         "content": "RAW", "created_by": "xnat_import", "created_time": "2019-04-05T12:01:33.120+02:00",
         "event_id": "100231", "digest": hashlib.md5(Path(s["file"]).name.encode()).hexdigest()}
        for s in sorted(ct["slices"], key=lambda s: s["instance"])]))

    # Masks on the source grid, frames in position order (the order passed to highdicom).
    order = sorted(range(len(datasets)), key=lambda k: float(datasets[k].ImagePositionPatient[2]))
    source = [datasets[k] for k in order]
    row, col = np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0])
    pts = np.stack([slice_points(np.array(ds.ImagePositionPatient, float), row, col, 0.8, 64)
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
        save_text(out / seg_dir / "SEG_catalog.xml", _catalog_xml("SEG", entries))
        assessors.append({"name": assessor, "dir": str(seg_dir), "created_by": user,
                          "created_time": created, "catalog": str(seg_dir / "SEG_catalog.xml"),
                          "segmentations": segs})
    return {"project": XNAT_PROJECT, "subject": subject, "session": session, "dir": str(base),
            "patient_id": p.patient_id,
            "scans": [scout | {"scan": "1", "kind": "localizer"}, ct | {"scan": "2", "kind": "ct_axial"}],
            "assessors": assessors}
