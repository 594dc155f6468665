"""``dicomprep status OUT``: what is done and what failed, from the files alone."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from ..errors import DicomprepError


def status_summary(out_dir: str | Path) -> dict:
    """Counts of units and stage results read from OUT's files (no workflow needed)."""
    out = Path(out_dir)
    units_csv = out / "private" / "units.csv"
    if not units_csv.is_file():
        idx = out / "private" / "index" / "instances.parquet"
        if idx.is_file():
            return {"index": "done", "units": 0, "note": "indexed, no units selected yet"}
        raise DicomprepError(f"{out} holds no dicomprep output (no private/units.csv). Run `dicomprep run INPUT {out}`.")
    units = pd.read_csv(units_csv, dtype=str, keep_default_na=False)
    summary = {"units": len(units), "units_done": 0, "units_pending": 0, "stage_failures": {}, "failed_units": []}
    for unit in units["unit"]:
        stages = out / "private" / "units" / unit / "stages.json"
        if not stages.is_file():
            summary["units_pending"] += 1
            continue
        summary["units_done"] += 1
        data = json.loads(stages.read_text())
        bad = [name for name, s in data.items() if s.get("status") != "done"]
        for name in bad:
            summary["stage_failures"][name] = summary["stage_failures"].get(name, 0) + 1
        if bad:
            summary["failed_units"].append({"unit": unit, "stages": bad})
    summary["series_failures"] = series_failures(out, units["unit"])
    unreadable = out / "private" / "index" / "unreadable.csv"
    if unreadable.is_file():
        summary["files_not_read"] = len(pd.read_csv(unreadable))
    ver = out / "share" / "verification.json"
    summary["verification"] = json.loads(ver.read_text()).get("status") if ver.is_file() else "not run"
    summary["report"] = str(out / "share" / "qc" / "report.html") if (out / "share" / "qc" / "report.html").is_file() else "not written"
    return summary


def series_failures(out: Path, units) -> dict[str, int]:
    """Rows with status ``failed`` in the converters' manifests
    (``private/convert/{unit}/{stage}.parquet``), per stage: a SEG without its
    source, a CT that cannot be stacked... The unit's stage itself ran ("done")."""
    counts: dict[str, int] = {}
    for unit in units:
        for manifest in sorted((out / "private" / "convert" / unit).glob("*.parquet")):
            try:
                status = pd.read_parquet(manifest, columns=["status"])["status"]
            except Exception:  # noqa: BLE001 - a broken manifest is the stage's own failure
                continue
            n = int((status.astype(str) == "failed").sum())
            if n:
                counts[manifest.stem] = counts.get(manifest.stem, 0) + n
    return counts


def status_command(out_dir: Path) -> int:
    s = status_summary(out_dir)
    if "units_done" not in s:
        print(f"{out_dir}: {s.get('note')}")
        return 0
    print(f"{out_dir}: {s['units_done']} of {s['units']} units done, {s['units_pending']} pending")
    if s.get("files_not_read"):
        print(f"  {s['files_not_read']} input files not read (private/index/unreadable.csv)")
    for name, n in sorted(s["stage_failures"].items()):
        print(f"  stage {name} failed in {n} unit(s)")
    for f in s["failed_units"][:20]:
        print(f"    {f['unit']}: {', '.join(f['stages'])} (see private/logs/<stage>/{f['unit']}.log)")
    for name, n in sorted(s.get("series_failures", {}).items()):
        print(f"  {n} series/segmentation(s) not converted by stage {name}, each with a reason row "
              f"(private/convert/<unit>/{name}.parquet)")
    print(f"  leak verification: {s['verification']}; report: {s['report']}")
    return 1 if s["stage_failures"] or s["verification"] == "fail" else 0
