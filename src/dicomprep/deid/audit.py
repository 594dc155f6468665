"""``share/audit.yaml`` (what was done, no identifiers) and ``private/crosswalk.csv``.

The audit records the profile and its source table, the options (with their
CID 7050 codes), the preset and its steps in order, library versions, the
secret's fingerprint (never the secret), counts summed over units (instances,
attributes per action, private attributes removed/kept) and series not shared
by reason code. It covers what the cDTI export's ``anon_pipeline.yml`` recorded
(each step done, in order). With ``anonymisation: false`` it says that nothing
was de-identified.

The crosswalk merges the per-unit ``private/stages/deid/<unit>/crosswalk.csv`` files
in a deterministic order (each unit job writes its own file, so parallel jobs
never append to one file).
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import json
from collections import Counter
from pathlib import Path
from typing import Any, Iterable

import pandas as pd
import yaml

from .. import dicomio
from ..logs import get_logger
from . import pseudonym
from .edits import audit_summary as audit_edits
from .presets import get_preset
from .unit import CROSSWALK_COLUMNS
from .profile import (
    ANNEX_E_TABLE, CID7050, ProfileOptions, allowlist_label, annex_e_version, default_allowlist_path,
    load_private_allowlist, load_private_allowlist_entries,
)

LIBRARIES = ("dicomprep", "pydicom", "dicom-anonymizer", "numpy", "pandas", "highdicom")


def library_versions() -> dict[str, str]:
    out = {}
    for name in LIBRARIES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def _as_list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, (str, Path)):
        return [str(value)]
    return [str(v) for v in value]


def sum_counts(counts: Iterable[dict]) -> dict:
    """Sum per-unit ``counts.json`` dicts (numbers added, nested dicts merged by key)."""
    total: dict = {}
    for c in counts:
        for key, value in c.items():
            if isinstance(value, dict):
                sub = total.setdefault(key, Counter())
                sub.update({k: int(v) for k, v in value.items()})
            else:
                total[key] = total.get(key, 0) + int(value)
    return {k: (dict(sorted(v.items())) if isinstance(v, Counter) else v) for k, v in sorted(total.items())}


def merge_crosswalks(paths: Iterable[Path]) -> pd.DataFrame:
    """One crosswalk from the units' files, deduplicated, in a stable order."""
    frames = [pd.read_csv(p, dtype=str, keep_default_na=False) for p in paths if Path(p).is_file()]
    if not frames:
        return pd.DataFrame(columns=CROSSWALK_COLUMNS)
    merged = pd.concat(frames, ignore_index=True).reindex(columns=CROSSWALK_COLUMNS).fillna("")
    merged = merged.drop_duplicates().sort_values(CROSSWALK_COLUMNS, kind="mergesort")
    return merged.reset_index(drop=True)


def build_audit(config: dict, unit_counts: list[dict], *, secret: bytes | None, n_units: int) -> dict:
    """The audit document (plain data, no identifiers)."""
    anonymisation = bool(config.get("anonymisation", True))
    deid_cfg = config.get("deid", {}) or {}
    doc: dict[str, Any] = {
        "anonymisation": anonymisation,
        "libraries": library_versions(),
    }
    if not anonymisation:
        doc["deidentified"] = False
        doc["note"] = ("anonymisation is off (config anonymisation: false): nothing was de-identified; "
                       "share/ holds data converted from the original DICOM.")
        doc["steps"] = []
        return doc
    preset = get_preset(deid_cfg.get("preset"))
    options = preset.adjust_options(ProfileOptions.from_config(deid_cfg.get("options")))
    allow_cfg = deid_cfg.get("private_allowlist")
    allow_path = Path(allow_cfg) if allow_cfg else default_allowlist_path()
    allowlist = load_private_allowlist(allow_path) if allow_path.is_file() else frozenset()
    totals = sum_counts(unit_counts)
    private_kept = not (preset.remove_all_private or not options.retain_safe_private)
    doc.update({
        "deidentified": bool(totals.get("written", 0)),
        "profile": {
            "name": "DICOM PS3.15 Annex E Basic Application Level Confidentiality Profile",
            "applied": not bool(deid_cfg.get("preset_only")),
            "table": annex_e_version(),
            "table_module": ANNEX_E_TABLE,
        },
        "options": options.as_dict(),
        "method_codes": [{"code": c, "scheme": "DCM", "meaning": m} for c, m in options.method_codes()],
        "preset": {"name": preset.name, "only": bool(deid_cfg.get("preset_only")),
                   "description": preset.description, "steps": list(preset.steps)},
        "private_allowlist": {
            "source": "shipped" if not allow_cfg else "user file",
            "entries": len(allowlist) if private_kept else 0,
            "sha256": hashlib.sha256(allow_path.read_bytes()).hexdigest() if allow_path.is_file() else "",
            # every entry that kept an element, with the source that vouches for it
            "kept": kept_entries(allow_path, totals.get("private_kept_by_entry", {})) if private_kept else [],
        },
        "secret_fingerprint": pseudonym.secret_fingerprint(secret) if secret else None,
        "units": n_units,
        "counts": {k: v for k, v in totals.items()
                   if k not in ("series_not_shared", "files_quarantined", "values_not_parsed",
                                "private_kept_by_entry")},
        "series_not_shared": totals.get("series_not_shared", {}),
        "files_quarantined": totals.get("files_quarantined", {}),
        # attributes whose value did not parse as its VR (e.g. ``***`` in a date): handled one
        # by one under the profile's action (a shift that cannot apply empties the value)
        "values_not_parsed": totals.get("values_not_parsed", {}),
        # values the user declared not identifying: the leak verifier does not search them
        "verify": {"safe_values": sorted({str(v) for v in ((config.get("verify") or {}).get("safe_values") or [])})},
        "drop_series": {k: v for k, v in (deid_cfg.get("drop_series") or {}).items() if k != "allow"},
        "edits": audit_edits(config),
        "structured_reports": str(deid_cfg.get("structured_reports") or "drop"),
        "steps": audit_steps(options, preset, bool(deid_cfg.get("preset_only")), private_kept)
        + [structured_reports_step(str(deid_cfg.get("structured_reports") or "drop"))],
    })
    return doc


def kept_entries(allow_path: Path, kept: dict) -> list[dict]:
    """The allowlist entries that kept elements: label, name, source (PS3.15 Table
    E.3.10-1 or the dcm2niix constant that reads it) and how many elements."""
    entries = load_private_allowlist_entries(allow_path) if allow_path.is_file() else {}
    by_label = {allowlist_label(k): v for k, v in entries.items()}
    out = []
    for label, count in sorted(kept.items()):
        info = by_label.get(label, {})
        out.append({"entry": label, "name": info.get("name", ""), "source": info.get("source", "unknown"),
                    "elements": int(count)})
    return out


def structured_reports_step(mode: str) -> str:
    """The audit step for documents and reports (``deid.structured_reports``)."""
    if mode == "clean":
        return ("encapsulated documents (PDF, CDA) not shared; structured reports, key object selections and "
                "presentation states shared with their content cleaned at every depth (PS3.15 Clean Structured "
                "Content: TEXT items replaced, PNAME items, observers and organisations replaced or removed, "
                "DATE/DATETIME/TIME shifted, UIDREF replaced)")
    return ("encapsulated documents (PDF, CDA), structured reports, key object selections and presentation "
            "states carrying text not shared, whatever their series size")


def audit_steps(options: ProfileOptions, preset, preset_only: bool, private_kept: bool) -> list[str]:
    """Each step done, in order (the cDTI ``anon_pipeline.yml`` list, and more)."""
    steps = [
        "series filtering: localizers, dose reports, secondary captures, small single-frame series dropped; "
        "burned-in annotation quarantined",
    ]
    if not preset_only:
        steps.append("PS3.15 Annex E basic profile applied to every attribute at every depth")
    steps += [f"preset {preset.name}: {s}" for s in preset.steps]
    steps.append("PatientID and PatientName replaced by the keyed patient pseudonym")
    steps.append("UIDs kept" if options.retain_uids else
                 "UIDs replaced by keyed 2.25 UIDs (file meta and all depths), references kept consistent")
    steps.append("dates and times shifted by the per-patient offset" if options.retain_longitudinal_modified_dates
                 else "dates and times removed or replaced")
    steps.append("private attributes removed except the allowlist (creator + element)" if private_kept
                 else "all private attributes removed")
    if options.clean_graphics:
        steps.append("overlays (60xx) and curves (50xx) removed")
    steps.append("OriginalAttributesSequence removed")
    steps.append("PatientIdentityRemoved, DeidentificationMethod(+CodeSequence), "
                 "LongitudinalTemporalInformationModified set")
    steps.append("pixel data carried unchanged (copied byte for byte; hash checked on the pydicom path)")
    steps.append("identifying strings and UIDs inside kept private blobs (e.g. Siemens CSA) "
                 "overwritten in place, same length")
    return steps


def withdrawn_summary(path: Path) -> list[dict]:
    """What ``publish`` removed from share/ (``private/withdrawn.csv``), per run and unit:
    ``[{when, unit, files}]`` (unit keys are pseudonymous)."""
    if not Path(path).is_file():
        return []
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    if table.empty:
        return []
    grouped = table.groupby(["when", "unit"], sort=True).size()
    return [{"when": when, "unit": unit or "(cohort)", "files": int(n)} for (when, unit), n in grouped.items()]


def write_audit(config: dict, deid_dirs: list[Path], *, audit_path: Path, crosswalk_path: Path,
                withdrawn_path: Path, demo: bool = False, log=None) -> dict:
    """``share/audit.yaml`` + ``private/crosswalk.csv`` from the units' de-identification
    stage directories (``counts.json``, ``crosswalk.csv``) and the withdrawal record."""
    logger = log or get_logger("audit")
    unit_counts = [json.loads((d / "counts.json").read_text()) for d in deid_dirs if (d / "counts.json").is_file()]
    secret = None
    if config.get("anonymisation", True):
        secret = pseudonym.load_secret((config.get("deid") or {}).get("secret_file"), demo=demo)
    doc = build_audit(config, unit_counts, secret=secret, n_units=len(deid_dirs))
    withdrawn = withdrawn_summary(withdrawn_path)
    if withdrawn:
        doc["withdrawn"] = withdrawn
    crosswalk = merge_crosswalks(d / "crosswalk.csv" for d in deid_dirs)
    with dicomio.atomic_path(crosswalk_path) as tmp:
        crosswalk.to_csv(tmp, index=False)
    dicomio.write_text(audit_path, yaml.safe_dump(doc, sort_keys=False, allow_unicode=False))
    logger.info("audit: %d units, %d instances written", len(deid_dirs), doc.get("counts", {}).get("written", 0))
    return doc


__all__ = ["write_audit", "build_audit", "merge_crosswalks", "sum_counts", "withdrawn_summary", "CID7050"]
