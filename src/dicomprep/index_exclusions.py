"""Files of a series that cannot be used: duplicates, exclusions, partial outputs.

The series table's ``n_excluded`` / ``excluded_files`` list the files of a
series that are not among its instances (truncated, no pixel data, an
undecodable transfer syntax ...); a converter given them reports its output as
``partial`` (:func:`partial_reason`, docs/contracts.md). Repeated
SOPInstanceUIDs (0008,0018) within a series are left out (:func:`split_duplicates`).
"""
from __future__ import annotations

import pandas as pd

from .index_read import DICOMDIR_REASON, is_na as _na


def split_duplicates(instances: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Instances without repeated SOPInstanceUIDs, and ``path, relpath, reason`` rows for
    the repeats. Within one series, the first file by relpath keeps the
    SOPInstanceUID (0008,0018); every other file with it is left out ("duplicate
    SOPInstanceUID of <first file>"), so no stage ships the instance twice."""
    uid = instances["SOPInstanceUID"]
    dup = uid.notna() & instances.duplicated(["series_key", "SOPInstanceUID"], keep="first")
    if not dup.any():
        return instances, pd.DataFrame(columns=["path", "relpath", "reason"])
    first = (instances[uid.notna() & ~dup].set_index(["series_key", "SOPInstanceUID"])["relpath"])
    rows = instances.loc[dup, ["path", "relpath", "series_key", "SOPInstanceUID"]]
    reasons = [f"duplicate SOPInstanceUID of {first.get((k, u), '?')} (same series); the first file by path is kept"
               for k, u in zip(rows["series_key"], rows["SOPInstanceUID"])]
    out = rows[["path", "relpath"]].assign(reason=reasons).reset_index(drop=True)
    return instances[~dup].reset_index(drop=True), out


#: Reasons of files that never were instances of any series (not counted as missing).
_NOT_INSTANCE_PREFIXES = ("not DICOM: clutter", DICOMDIR_REASON, "not a DICOM file")


def add_exclusions(series: pd.DataFrame, instances: pd.DataFrame, unusable: pd.DataFrame) -> pd.DataFrame:
    """Columns ``n_excluded`` and ``excluded_files`` of the series table: the files of a
    series that are not among its instances because they cannot be used (truncated,
    no pixel data, undecodable transfer syntax ...), as ``name (reason)``.

    A file belongs to a series by its own header (SeriesInstanceUID + SeriesNumber
    within the folder's series) when that could be read, else by its folder when
    every instance in that folder is of one series. Empty (0-byte) files, clutter,
    DICOMDIRs, files that are no DICOM, and copies of an instance the series has
    (same SOPInstanceUID) are not counted. A converter given ``excluded_files``
    reports its output as built from fewer instances than the series has.
    """
    series = series.copy()
    series["n_excluded"] = 0
    series["excluded_files"] = ""
    if unusable is None or not len(unusable) or not len(instances):
        return series
    folder_of = instances["relpath"].map(lambda r: r.rsplit("/", 1)[0] if "/" in r else "")
    by_folder: dict[str, set] = {}
    for folder, key in zip(folder_of, instances["series_key"]):
        by_folder.setdefault(folder, set()).add(key)
    uid_of = dict(zip(series["series_key"], series["SeriesInstanceUID"]))
    number_of = dict(zip(series["series_key"], series["SeriesNumber"]))
    sops = instances.groupby("series_key")["SOPInstanceUID"].agg(lambda v: set(v.dropna()))
    found: dict[str, list[str]] = {}
    for r in unusable.to_dict("records"):
        reason = str(r.get("reason") or "")
        if not reason or reason.startswith(_NOT_INSTANCE_PREFIXES) or int(r.get("size") or 0) == 0:
            continue
        rel = str(r["relpath"])
        keys = by_folder.get(rel.rsplit("/", 1)[0] if "/" in rel else "", set())
        uid, number = r.get("SeriesInstanceUID"), r.get("SeriesNumber")
        if isinstance(uid, str) and uid:
            keys = {k for k in keys if uid_of.get(k) == uid}
            if len(keys) > 1 and not _na(number):
                keys = {k for k in keys if number_of.get(k) == number}
        if len(keys) != 1:
            continue
        key = next(iter(keys))
        if r.get("SOPInstanceUID") and r.get("SOPInstanceUID") in sops.get(key, set()):
            continue                                     # a (broken) copy of an instance the series has
        found.setdefault(key, []).append(f"{rel.rsplit('/', 1)[-1]}: {' '.join(reason.split())}")
    if found:
        series["n_excluded"] = series["series_key"].map(lambda k: len(found.get(k, []))).astype("int64")
        series["excluded_files"] = series["series_key"].map(lambda k: "\n".join(found.get(k, [])))
    return series


def split_excluded(text) -> list[tuple[str, str]]:
    """``(file name, reason)`` of each line of an ``excluded_files`` cell."""
    if text is None or (isinstance(text, float) and text != text):
        return []
    out = []
    for line in str(text).splitlines():
        name, _, reason = line.partition(": ")
        if line.strip():
            out.append((name.strip(), reason.strip()))
    return out


def partial_reason(n_used: int, excluded_files) -> str:
    """Reason of an output built from fewer files than its series has (the series'
    ``excluded_files``), or '' when none is missing. It gives the reasons, not
    the file names (input names stay private: they are in unreadable.csv and the
    logs), so the sentence is safe for share/ tables."""
    items = split_excluded(excluded_files)
    if not items:
        return ""
    counts: dict[str, int] = {}
    for _name, reason in items:
        counts[reason] = counts.get(reason, 0) + 1
    why = "; ".join(f"{n}× {r}" if n > 1 else r for r, n in counts.items())
    return (f"partial: built from {n_used} file(s); {len(items)} file(s) of the series could not be used "
            f"(the private index lists them in unreadable.csv): {why}")


def excluded_names(excluded_files) -> str:
    """The file names of an ``excluded_files`` cell, comma-separated (for private logs)."""
    return ", ".join(name for name, _ in split_excluded(excluded_files))
