"""Share-safe unit keys and series ids: the pseudonymous names of share/.

A unit's key ``group/sequence/subject/scan`` is the Snakemake wildcard
``{unit}`` and names its folders in share/ (docs/contracts.md). Subject and
scan are keyed pseudonyms of the original folders (:mod:`dicomprep.deid.pseudonym`:
``patient_pseudonym`` of PatientID (0010,0020) + IssuerOfPatientID (0010,0021),
``short_id`` of the scan folder) unless ``deid.keep_folder_names`` or
anonymisation is off; series ids the index told apart with part of the
unkeyed series key get a keyed suffix instead.
"""
from __future__ import annotations

import hashlib
import re
from typing import Any

import pandas as pd

from .deid.pseudonym import disambiguate, keyed_name, patient_pseudonym, short_id
from .workflow_support import stages_for

UNIT_COLUMNS = [
    "unit", "group", "sequence", "subject", "scan", "orig_unit", "orig_subject",
    "orig_scan", "patient_pseudonym", "n_series", "n_instances", "kinds", "stages",
]


def slug(text: Any, fallback: str = "x") -> str:
    """Folder-safe token: letters, digits, ``.``, ``_`` and ``-`` only."""
    s = re.sub(r"[^A-Za-z0-9._-]+", "-", str(text or "")).strip("-._")
    return s or fallback


def unit_keys(series: pd.DataFrame, config: dict, secret: bytes | None) -> pd.DataFrame:
    """One row per original unit with its share-safe key (docs/contracts.md)."""
    keep_names = bool(config.get("deid", {}).get("keep_folder_names")) or secret is None
    rows = []
    for orig_unit, grp in series.groupby("orig_unit", sort=True):
        first = grp.sort_values(["StudyInstanceUID", "SeriesNumber"], na_position="last").iloc[0]
        pid = str(first.get("PatientID") or "")
        issuer = str(first.get("IssuerOfPatientID") or "")
        if secret is not None:
            pseudo = patient_pseudonym(secret, pid, issuer) if pid else "P" + short_id(secret, "subject", str(first["orig_subject"]), length=8)
        else:
            pseudo = ""
        if keep_names:
            subject, scan = slug(first["orig_subject"]), slug(first["orig_scan"])
        else:
            subject, scan = pseudo, "S" + short_id(secret, "scan", str(orig_unit))
        group, sequence = slug(first["orig_group"]), slug(first["orig_sequence"])
        rows.append({
            "unit": f"{group}/{sequence}/{subject}/{scan}",
            "group": group, "sequence": sequence, "subject": subject, "scan": scan,
            "orig_unit": orig_unit, "orig_subject": first["orig_subject"], "orig_scan": first["orig_scan"],
            "patient_pseudonym": pseudo, "n_series": len(grp),
            "n_instances": int(grp["n_instances"].sum()) if "n_instances" in grp else 0,
            "kinds": ";".join(sorted(set(map(str, grp["kind"])))) if "kind" in grp else "",
            "stages": ";".join(stages_for(set(map(str, grp["kind"])) if "kind" in grp else set(), config)),
        })
    units = pd.DataFrame(rows, columns=UNIT_COLUMNS)
    dup = units["unit"].duplicated(keep=False)
    if dup.any():
        # Two original units with the same folder names (keep_folder_names): disambiguate.
        units.loc[dup, "unit"] = units.loc[dup].apply(
            lambda r: disambiguate(secret, r["unit"], "unit", str(r["orig_unit"])) if secret is not None
            else f"{r['unit']}-{hashlib.sha1(str(r['orig_unit']).encode()).hexdigest()[:6]}", axis=1)
    return units


def keyed_series_ids(series: pd.DataFrame, instances: pd.DataFrame, secret: bytes | None
                     ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Series ids that the index told apart with part of the (unkeyed) series key
    (``s003-1a2b``, ``sNA-…``) get a keyed suffix instead: ``series_id`` names
    folders and files in share/ (pseudonym.keyed_name)."""
    if secret is None or series.empty:
        return series, instances
    new_ids = {}
    for key, sid in zip(series["series_key"].astype(str), series["series_id"].astype(str)):
        base, _, suffix = sid.partition("-")
        if suffix and key.startswith(suffix):
            new_ids[key] = f"{base}-{keyed_name(secret, 'series', key, length=len(suffix) if len(suffix) <= 6 else 8)}"
    if not new_ids:
        return series, instances
    series, instances = series.copy(), instances.copy()
    series["series_id"] = [new_ids.get(k, v) for k, v in zip(series["series_key"], series["series_id"])]
    if "series_id" in instances:
        instances["series_id"] = [new_ids.get(k, v) for k, v in zip(instances["series_key"], instances["series_id"])]
    return series, instances
