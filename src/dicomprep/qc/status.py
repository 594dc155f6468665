"""``dicomprep status OUT``: what is done and what failed, from the files alone."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..errors import DicomprepError
from ..paths import MANIFEST, layout
from ..workflow_support import unit_stages


def status_summary(out_dir: str | Path) -> dict:
    """Counts of units and stage results read from OUT's files (no workflow needed).

    A unit's stage is done when its stage directory holds its manifest, failed
    when its log exists without a manifest (Snakemake removed the outputs of the
    failed job), and pending otherwise.
    """
    lay = layout(out_dir)
    out = lay.root
    if not lay.units_table.is_file():
        if lay.instances_table.is_file():
            return {"index": "done", "units": 0, "note": "indexed, no units selected yet"}
        raise DicomprepError(f"{out} holds no dicomprep output (no private/units.csv). Run `dicomprep run INPUT {out}`.")
    units = pd.read_csv(lay.units_table, dtype=str, keep_default_na=False)
    if "stages" in units:   # unit_stages' lookup, built once (not once per unit: quadratic at 10,000 units)
        units.attrs["stages"] = dict(zip(units["unit"], units["stages"]))
    summary = {"units": len(units), "units_done": 0, "units_pending": 0, "stage_failures": {}, "failed_units": []}
    for unit in units["unit"]:
        stages = unit_stages(units, unit) if "stages" in units else []
        done = [s for s in stages if (lay.stage_dir(s, unit) / MANIFEST).is_file()
                or (s == "qc" and lay.stage_share("qc", unit).qc_json(unit).is_file())]
        bad = [s for s in stages if s not in done and lay.log(s, unit).is_file()]
        for name in bad:
            summary["stage_failures"][name] = summary["stage_failures"].get(name, 0) + 1
        if bad:
            summary["failed_units"].append({"unit": unit, "stages": bad})
        if stages and len(done) == len(stages):
            summary["units_done"] += 1
        elif not bad:
            summary["units_pending"] += 1
    summary["series_failures"] = series_failures(out, units["unit"])
    if lay.unreadable_table.is_file():
        summary["files_not_read"] = len(pd.read_csv(lay.unreadable_table))
    ver = lay.verification_json
    summary["verification"] = json.loads(ver.read_text()).get("status") if ver.is_file() else "not run"
    summary["report"] = str(lay.report_html) if lay.report_html.is_file() else "not written"
    return summary


def series_failures(out: Path, units) -> dict[str, int]:
    """Rows with status ``failed`` in the converters' manifests, per stage: a SEG
    without its source, a CT that cannot be stacked... (the stage itself ran)."""
    lay = layout(out)
    counts: dict[str, int] = {}
    for unit in units:
        for stage in ("dcm2niix", "ncct", "seg", "hdf5"):
            manifest = lay.stage_manifest(stage, unit)
            if not manifest.is_file():
                continue
            try:   # pyarrow, one column: a pandas read per manifest costs more than its rows at 10,000 units
                status = pq.read_table(manifest, columns=["status"]).column("status").cast(pa.string())
            except Exception:  # noqa: BLE001 - a broken manifest is the stage's own failure
                continue
            n = int(pc.sum(pc.equal(status, "failed")).as_py() or 0)
            if n:
                counts[stage] = counts.get(stage, 0) + n
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
        print(f"    {f['unit']}: {', '.join(f['stages'])} (see private/logs/<stage>/{f['unit']}.log; "
              "the same command re-runs it)")
    for name, n in sorted(s.get("series_failures", {}).items()):
        print(f"  {n} series/segmentation(s) not converted by stage {name}, each with a reason row "
              f"(private/stages/{name}/<unit>/manifest.parquet)")
    print(f"  leak verification: {s['verification']}; report: {s['report']}")
    return 1 if s["stage_failures"] or s["verification"] == "fail" else 0
