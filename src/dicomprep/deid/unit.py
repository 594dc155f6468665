"""De-identify one unit: series filters, document kinds, series folders, the manifest.

:func:`deidentify_unit` filters a unit's series (:func:`series_filter_reasons`:
BurnedInAnnotation (0028,0301), localizers, dose reports, secondary captures,
documents and reports by SOP class, PS3.4 B.5), de-identifies every remaining
file into ``share/dicom/<unit>/<series_id>/NNNN.dcm``, quarantines files whose
de-identification fails, and returns the manifest, counts and the unit's
crosswalk rows (docs/contracts.md).
"""
from __future__ import annotations

import io
import math
from collections import Counter
from pathlib import Path
from typing import Any

import pandas as pd
import pydicom
from pydicom.dataset import Dataset

from .. import dicomio
from ..errors import DicomprepError, UnreadableDicom
from ..geometry import as_floats, slice_normal
from ..logs import get_logger
from . import pixels, pseudonym
from .dataset import DeidentificationFailed, Deidentifier
from .instance import deidentify_file

#: Modalities whose images commonly carry burned-in text (PS3.3 C.7.6.1.1.5).
BURN_IN_MODALITIES = {"SC", "US", "OT", "XC", "ES", "GM", "SM", "DOC"}


def _first(values: pd.Series) -> Any:
    values = values.dropna()
    return values.iloc[0] if len(values) else None


def segmentation_source_series(instances: pd.DataFrame) -> set[str]:
    """SeriesInstanceUIDs the unit's SEG objects reference.

    From the Referenced Series Sequence (0008,1115) of each SEG, else the
    series holding the SOP instances in the frames' Source Image Sequence
    (0008,2112). A SEG's source must stay shareable, however few its slices.
    """
    segs = instances[instances.get("kind", pd.Series(dtype=object)) == "seg"] if "kind" in instances else instances.iloc[0:0]
    referenced: set[str] = set()
    sop_to_series = dict(zip(instances.get("SOPInstanceUID", []), instances.get("SeriesInstanceUID", [])))
    for path in segs.get("path", []):
        try:
            ds = dicomio.read_dataset(path, stop_before_pixels=True)
        except Exception:  # an unreadable SEG is handled (and reported) by the SEG stage
            continue
        for item in getattr(ds, "ReferencedSeriesSequence", None) or []:
            if getattr(item, "SeriesInstanceUID", None):
                referenced.add(str(item.SeriesInstanceUID))
        for frame in getattr(ds, "PerFrameFunctionalGroupsSequence", None) or []:
            for deriv in getattr(frame, "DerivationImageSequence", None) or []:
                for src in getattr(deriv, "SourceImageSequence", None) or []:
                    series = sop_to_series.get(str(getattr(src, "ReferencedSOPInstanceUID", "")))
                    if series:
                        referenced.add(str(series))
    return referenced


#: SOP Class UID roots of documents and reports (PS3.4 B.5): Encapsulated PDF/CDA/STL/OBJ/MTL,
#: every Structured Report class and Key Object Selection, presentation states.
ENCAPSULATED_DOC_ROOT = "1.2.840.10008.5.1.4.1.1.104."
SR_ROOT = "1.2.840.10008.5.1.4.1.1.88."
PR_ROOT = "1.2.840.10008.5.1.4.1.1.11."
#: Presentation-state attributes that carry free text (PS3.3 C.10.5 Graphic Annotation,
#: C.10.7 Graphic Layer, C.11.10 Presentation State Identification).
PR_TEXT_TAGS = (0x00700008, 0x00700006, 0x00700068, 0x00700081, 0x00700084)
STRUCTURED_REPORT_MODES = ("drop", "clean")


def document_kind(sop_class: str, modality: str = "", kind: str = "") -> str | None:
    """``document``, ``structured_report``, ``presentation_state`` or None (an image)."""
    sop, modality = str(sop_class or ""), str(modality or "").upper()
    if sop.startswith(ENCAPSULATED_DOC_ROOT) or modality == "DOC":
        return "document"
    if sop.startswith(SR_ROOT) or modality in ("SR", "KO") or kind in ("structured_report", "dose_report"):
        return "structured_report"
    if sop.startswith(PR_ROOT) or modality == "PR" or kind == "presentation_state":
        return "presentation_state"
    return None


def presentation_state_has_text(paths) -> bool:
    """Whether any of the presentation states holds text (text objects, annotation or
    layer descriptions, content description or creator) at any depth; an unreadable
    one counts as text."""
    def walk(d: Dataset) -> bool:
        for elem in d:
            tag = int(elem.tag)
            if elem.VR == "SQ":
                if (tag == 0x00700008 and elem.value) or any(walk(item) for item in elem.value or []):
                    return True
            elif tag in PR_TEXT_TAGS and str(elem.value or "").strip():
                return True
        return False

    for path in paths:
        try:
            ds = pydicom.dcmread(io.BytesIO(dicomio.read_bytes(path)), force=True, stop_before_pixels=True)
            if walk(ds):
                return True
        except Exception:
            return True
    return False


def series_filter_reasons(instances: pd.DataFrame, drop_cfg: dict | None,
                          keep_series_uids: set[str] | None = None, *,
                          structured_reports: str = "drop") -> dict[str, tuple[str, str]]:
    """``series_key -> (status, reason)`` for the series not to be shared.

    ``status`` is ``quarantined`` (BurnedInAnnotation YES, or absent on a modality
    that burns in text) or ``dropped`` (localizer, dose report, secondary capture,
    too few single-frame instances, a document or report). Series listed in
    ``deid.drop_series.allow`` (by SeriesInstanceUID or series_id) are kept. SEG
    objects, and the series in ``keep_series_uids`` (the sources SEGs reference),
    are never dropped for their instance count.

    Documents and reports, whatever their size (``structured_reports``, config
    ``deid.structured_reports``): Encapsulated PDF/CDA (and STL/OBJ/MTL) are never
    shared; SR of every SOP class, Key Object Selection and presentation states
    carrying text are not shared with ``drop`` (the default) and shared with their
    content cleaned with ``clean``.
    """
    if structured_reports not in STRUCTURED_REPORT_MODES:
        raise DicomprepError(f"config: deid.structured_reports is {structured_reports!r}; allowed values: "
                             f"{', '.join(STRUCTURED_REPORT_MODES)}.")
    cfg = {"max_instances": 10, "localizers": True, "dose_reports": True, "secondary_captures": True,
           "burned_in_annotation": True, "allow": []}
    cfg.update(drop_cfg or {})
    allow = {str(a) for a in cfg.get("allow") or []}
    out: dict[str, tuple[str, str]] = {}
    if instances.empty:
        return out
    for key, grp in instances.groupby("series_key", sort=True):
        if allow & {str(_first(grp.get("SeriesInstanceUID", pd.Series(dtype=object)))),
                    str(_first(grp.get("series_id", pd.Series(dtype=object))))}:
            continue
        kind = str(_first(grp["kind"]) if "kind" in grp else "") or ""
        modality = str(_first(grp["Modality"]) if "Modality" in grp else "" or "").upper()
        image_type = " ".join(str(v) for v in grp["ImageType"].dropna().unique()).upper() if "ImageType" in grp else ""
        burned = {str(v).strip().upper() for v in grp["BurnedInAnnotation"]} if "BurnedInAnnotation" in grp else {""}
        frames = pd.to_numeric(grp["NumberOfFrames"], errors="coerce").fillna(1) if "NumberOfFrames" in grp else pd.Series([1] * len(grp))
        sop = str(_first(grp["SOPClassUID"]) if "SOPClassUID" in grp else "" or "")
        doc = document_kind(sop, modality, kind)
        if kind == "dose_report" and cfg["dose_reports"]:
            doc = None  # the dose report filter below says why
        if doc == "document":
            out[key] = ("dropped", "document: an encapsulated document (PDF, CDA, 3-D model) is never shared: "
                                   "its content cannot be de-identified")
            continue
        if doc == "structured_report" and structured_reports != "clean":
            out[key] = ("dropped", "structured_report: structured report / key object selection not shared "
                                   "(deid.structured_reports: drop); set deid.structured_reports: clean to share "
                                   "it with its content tree cleaned")
            continue
        if doc == "presentation_state" and structured_reports != "clean" and "path" in grp \
                and presentation_state_has_text(list(grp["path"])):
            out[key] = ("dropped", "presentation_state_text: presentation state with text annotations not "
                                   "shared (deid.structured_reports: drop); set deid.structured_reports: clean "
                                   "to share it with its text replaced")
            continue
        burn_in_kind = modality in BURN_IN_MODALITIES or kind in ("secondary_capture", "dose_report")
        if cfg["burned_in_annotation"] and ("YES" in burned or (burn_in_kind and burned & {"", "NONE", "NAN"})):
            why = "BurnedInAnnotation YES" if "YES" in burned else f"BurnedInAnnotation absent on modality {modality or kind}"
            out[key] = ("quarantined", f"burned_in_annotation: {why}")
        elif cfg["localizers"] and (kind == "localizer" or "LOCALIZER" in image_type or "SCOUT" in image_type):
            out[key] = ("dropped", "localizer: localizer/scout series")
        elif cfg["dose_reports"] and kind == "dose_report":
            out[key] = ("dropped", "dose_report: dose report series")
        elif cfg["secondary_captures"] and kind == "secondary_capture":
            out[key] = ("dropped", "secondary_capture: secondary capture series")
        elif (kind != "seg" and doc is None and cfg["max_instances"] and len(grp) <= int(cfg["max_instances"])
              and str(_first(grp.get("SeriesInstanceUID", pd.Series(dtype=object)))) not in (keep_series_uids or set())
              and float(frames.max()) <= 1 and "MOSAIC" not in image_type):  # a mosaic holds many slices
            out[key] = ("dropped", f"too_few_instances: {len(grp)} single-frame instances <= {cfg['max_instances']}")
    return out


def reason_code(reason: str) -> str:
    """The identifier-free code before the colon of a reason (for counts and the audit)."""
    return reason.split(":", 1)[0].strip() if reason else ""


# --- a unit ----------------------------------------------------------------------------------

MANIFEST_COLUMNS = ["path", "series_key", "series_id", "output_path", "status", "reason", "burned_in_text"]
CROSSWALK_COLUMNS = ["kind", "original", "issuer", "pseudonym", "date_offset_days", "time_offset_seconds"]


def _order_key(row: pd.Series) -> tuple:
    """Stable order within a series: InstanceNumber, position along the slice normal, path."""
    inst = pd.to_numeric(row.get("InstanceNumber"), errors="coerce")
    inst = float(inst) if inst is not None and not (isinstance(inst, float) and math.isnan(inst)) else math.inf
    pos = 0.0
    ipp, iop = as_floats(row.get("ImagePositionPatient"), 3), as_floats(row.get("ImageOrientationPatient"), 6)
    if ipp is not None and iop is not None:
        try:
            pos = float(ipp @ slice_normal(iop))
        except Exception:
            pos = 0.0
    return (inst, round(pos, 3), str(row.get("path")))


def _series_folders(instances: pd.DataFrame, secret: bytes) -> dict[str, str]:
    """``series_key -> folder``: the share-safe ``series_id``; should two series of the
    unit share one (the index makes them unique), both get ``-`` + a keyed short id of
    their key (:func:`.pseudonym.disambiguate`: never an unkeyed hash of input values)."""
    first = instances.groupby("series_key", sort=True)["series_id"].first().astype(str)
    dup = first.duplicated(keep=False)
    return {key: (pseudonym.disambiguate(secret, sid, "series-folder", str(key)) if dup[key] else sid)
            for key, sid in first.items()}


def deidentify_unit(
    instances: pd.DataFrame,
    *,
    share_dir: str | Path,
    deid: Deidentifier,
    drop_cfg: dict | None = None,
    log=None,
    fallback_key: str = "",
) -> tuple[pd.DataFrame, dict, pd.DataFrame]:
    """De-identify one unit's instances into ``share_dir/<series_id>/NNNN.dcm``.

    Returns (manifest, counts, crosswalk rows). ``instances`` has at least
    ``path, series_key, series_id`` (and ``kind`` plus index columns for the
    series filters and the order).
    """
    logger = log or get_logger("deid")
    share_dir = Path(share_dir)
    if instances.empty:
        instances = pd.DataFrame(columns=["path", "series_key", "series_id", "kind"])
    filters = series_filter_reasons(instances, drop_cfg, segmentation_source_series(instances),
                                    structured_reports=deid.structured_reports)
    rows, cross = [], {}
    series_counts: Counter = Counter()
    files_quarantined: Counter = Counter()
    folder_of = _series_folders(instances, deid.secret)
    for key, grp in instances.groupby("series_key", sort=True):
        folder = folder_of[key]
        if key in filters:
            status, reason = filters[key]
            logger.info("series %s not shared: %s", folder, reason)
            series_counts[f"{status}:{reason_code(reason)}"] += 1
            rows += [{"path": p, "series_key": key, "series_id": folder, "output_path": "",
                      "status": status, "reason": reason} for p in grp["path"]]
            continue
        ordered = sorted((r for _, r in grp.iterrows()), key=_order_key)
        first_row = len(rows)
        for n, row in enumerate(ordered, start=1):
            dst = share_dir / folder / f"{n:04d}.dcm"
            try:
                info = deidentify_file(deid, row["path"], dst, fallback_key=fallback_key)
            except pixels.PixelsNotScreened as exc:  # not decodable to screen for burned-in text
                files_quarantined["pixels_not_screened"] += 1
                logger.warning("quarantined %s: %s", row["path"], exc)
                rows.append({"path": row["path"], "series_key": key, "series_id": folder,
                             "output_path": "", "status": "quarantined", "reason": str(exc)})
                continue
            except (DeidentificationFailed, UnreadableDicom) as exc:
                reason = f"deid_failed: {exc}"
                files_quarantined["deid_failed"] += 1
                logger.warning("quarantined %s: %s", row["path"], exc)
                rows.append({"path": row["path"], "series_key": key, "series_id": folder,
                             "output_path": "", "status": "quarantined", "reason": reason})
                continue
            patient = info["patient"]
            pkey = ("patient", patient.patient_id, patient.issuer)
            cross[pkey] = {"kind": "patient", "original": patient.patient_id, "issuer": patient.issuer,
                           "pseudonym": patient.pseudonym, "date_offset_days": patient.days,
                           "time_offset_seconds": patient.seconds}
            for kind in ("StudyInstanceUID", "SeriesInstanceUID"):
                if info[kind]:
                    cross[(kind, info[kind], "")] = {"kind": kind, "original": info[kind], "issuer": "",
                                                     "pseudonym": deid.new_uid(info[kind]),
                                                     "date_offset_days": "", "time_offset_seconds": ""}
            note = ""
            if deid.notes:  # attributes that did not parse: handled one by one, the file is written
                note = "value_not_parsed: " + "; ".join(deid.notes)
                logger.warning("%s written; %s", row["path"], "; ".join(deid.notes))
            rows.append({"path": row["path"], "series_key": key, "series_id": folder,
                         "output_path": str(dst), "status": "written", "reason": note,
                         "burned_in_text": pixels.manifest_value(info.get("burned_in_text"))})
        if deid.burned_in is not None:  # burned-in text, quarantine mode: withhold the series
            pixels.finish_series(rows[first_row:], deid.burned_in, logger, series_counts)
    manifest = pd.DataFrame(rows, columns=MANIFEST_COLUMNS)
    manifest["burned_in_text"] = manifest["burned_in_text"].fillna("")
    counts = {
        "instances": int(len(instances)),
        "written": int((manifest["status"] == "written").sum()),
        "dropped": int((manifest["status"] == "dropped").sum()),
        "quarantined": int((manifest["status"] == "quarantined").sum()),
        "actions": {k: int(v) for k, v in sorted(deid.counts.items()) if k != "instances"},
        "series_not_shared": dict(sorted(series_counts.items())),
        "files_quarantined": dict(sorted(files_quarantined.items())),
        **({"burned_in_text": pixels.unit_counts(deid.burned_in)} if deid.burned_in is not None else {}),
        "values_not_parsed": dict(sorted(deid.not_parsed.items())),
        "private_kept_by_entry": dict(sorted(deid.private_kept_by.items())),
    }
    crosswalk = pd.DataFrame(sorted(cross.values(), key=lambda r: (r["kind"], r["original"], r["issuer"])),
                             columns=CROSSWALK_COLUMNS)
    return manifest, counts, crosswalk


