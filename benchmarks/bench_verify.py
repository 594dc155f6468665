"""Leak-verifier speed: trie regex (ours) vs. one search per identifier (baseline).

Builds, in a temporary folder, the private index of every DICOM file of
``dcm_qa_nih/In`` (608 files, ~1,200 identifiers incl. every original UID) and a
share/ tree of the same files blanked of identifiers plus one JSON sidecar per
file, then times:

* ``collect_identifiers`` (header walk of every input file) cold and cached;
* ``verify_share`` over the whole share/ tree (ours);
* the baseline: for every file, ``needle in data.lower()`` for every encoded
  identifier (the obvious loop; C-speed substring search, no boundaries).

Usage: python benchmarks/bench_verify.py [DATA_DIR]
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import pandas as pd  # noqa: E402
import pydicom  # noqa: E402

from dicomprep.verify.collect import collect_identifiers  # noqa: E402
from dicomprep.verify.identifiers import IdentifierSet, date_spellings, parse_date  # noqa: E402
from dicomprep.verify.matcher import _encodings  # noqa: E402
from dicomprep.verify.share import verify_share  # noqa: E402


def build(data: Path, out: Path) -> int:
    files = sorted(p for p in (data / "dcm_qa_nih" / "In").rglob("*.dcm"))
    rows = []
    share = out / "share" / "dicom"
    for i, f in enumerate(files):
        ds = pydicom.dcmread(f)
        rel = f.relative_to(data / "dcm_qa_nih" / "In")
        rows.append({"path": str(f), "size": f.stat().st_size, "mtime_ns": f.stat().st_mtime_ns,
                     "orig_subject": rel.parts[0], "orig_scan": rel.parts[1],
                     "PatientName": str(ds.PatientName), "PatientID": ds.PatientID,
                     "SOPInstanceUID": ds.SOPInstanceUID, "StudyDate": ds.StudyDate})
        for elem in list(ds.iterall()):
            if elem.VR in ("PN", "DA", "TM", "DT", "UI") and "ClassUID" not in (elem.keyword or ""):
                elem.value = ""
        for kw in ("InstitutionName", "InstitutionAddress", "InstitutionalDepartmentName",
                   "StationName", "DeviceSerialNumber", "PatientID", "PerformedProcedureStepID",
                   "ProtocolName", "SeriesDescription", "StudyID", "PerformedStationName"):
            if kw in ds:
                delattr(ds, kw)
        ds.remove_private_tags()
        ds.file_meta.MediaStorageSOPInstanceUID = f"2.25.{i + 1}"
        ds.file_meta.pop("SourceApplicationEntityTitle", None)
        dst = share / f"u{i % 8}" / f"{i:04d}.dcm"
        dst.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(dst, enforce_file_format=True)
        (dst.with_suffix(".json")).write_text(json.dumps({"SeriesNumber": int(ds.SeriesNumber),
                                                          "EchoTime": 0.03, "ImageType": list(ds.ImageType)}))
    (out / "private" / "index").mkdir(parents=True)
    pd.DataFrame(rows).to_parquet(out / "private" / "index" / "instances.parquet")
    return len(files)


def baseline(share: Path, ids: IdentifierSet) -> int:
    needles = set()
    for kind, values in ids.values.items():
        for v in values:
            spellings = ([s for s in date_spellings(parse_date(v))] if kind == "date" else [v])
            for s in spellings:
                needles |= _encodings(s)
    hits = 0
    for p in share.rglob("*"):
        if p.is_file() and p.name != "verification.json":
            data = p.read_bytes().lower()
            hits += sum(1 for n in needles if n in data)
    return hits


def main() -> None:
    data = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(os.environ.get("DICOMPREP_TESTDATA", ROOT.parent / "shared" / "data"))
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "OUT"
        n = build(data, out)
        t = time.perf_counter(); ids = collect_identifiers(out); cold = time.perf_counter() - t
        t = time.perf_counter(); collect_identifiers(out); warm = time.perf_counter() - t
        nfiles = sum(1 for p in (out / "share").rglob("*") if p.is_file())
        mb = sum(p.stat().st_size for p in (out / "share").rglob("*") if p.is_file()) / 1e6
        t = time.perf_counter(); res = verify_share(out, ids=ids); ours = time.perf_counter() - t
        t = time.perf_counter(); base_hits = baseline(out / "share", ids); base = time.perf_counter() - t
        print(f"inputs {n} files; identifiers {len(ids)} ({ids.counts()})")
        print(f"collect_identifiers: cold {cold:.2f} s ({n / cold:.0f} files/s), cached {warm:.2f} s")
        print(f"share/: {nfiles} files, {mb:.1f} MB; status {res['status']}, hits {len(res['hits'])}")
        print(f"ours     verify_share: {ours:.2f} s  {nfiles / ours:.0f} files/s  {mb / ours:.1f} MB/s")
        print(f"baseline per-needle:   {base:.2f} s  {nfiles / base:.0f} files/s  (substring hits {base_hits})")
        print(f"ratio baseline/ours: {base / ours:.1f}x")
        # thousands of identifiers: a large cohort's index (synthetic extra UIDs, names, IDs)
        for i in range(5000):
            ids.add("uid", f"1.3.12.2.1107.5.2.19.{10_000 + i}.{20190000000000 + i * 7919}")
        for i in range(1000):
            ids.add("name", f"Family{i:04d}x^Given{i:04d}y")
            ids.add("id", f"PID{i:06d}")
            ids.add("date", f"{1930 + i % 80}{1 + i % 12:02d}{1 + i % 28:02d}")
        t = time.perf_counter(); verify_share(out, ids=ids); ours = time.perf_counter() - t
        t = time.perf_counter(); baseline(out / "share", ids); base = time.perf_counter() - t
        print(f"with {len(ids)} identifiers: ours {ours:.2f} s, baseline {base:.2f} s, "
              f"ratio {base / ours:.1f}x")


if __name__ == "__main__":
    main()
