"""One unit, all its stages, in one job.

Snakemake costs ~0.3 s per ``script:`` job at run time and a few ms per job
when it plans the DAG, so a unit's stages run in one job (ARCHITECTURE.md: "one
job handles one unit"): de-identify → dcm2niix → CT → segmentations → HDF5 →
unit QC. Each stage keeps its own manifest (docs/contracts.md) and its own log
file. A stage that fails records the failure in its manifest and the unit's
other stages still run; ``private/units/{unit}/stages.json`` says what ran,
how long it took, and what failed.
"""
from __future__ import annotations

import importlib
import json
import shutil
import time
import traceback
from pathlib import Path
from typing import Callable

import pandas as pd

from .dicomio import atomic_path, write_text
from .errors import DicomprepError
from .logs import get_logger

#: (stage name, "module:function", manifest path relative to OUT, log suffix, enabled?)
STAGES: list[tuple[str, str, str, Callable[[dict], bool]]] = [
    ("deid", "dicomprep.deid.engine:deidentify_unit_rule", "private/deid/{unit}/manifest.parquet",
     lambda c: bool(c["anonymisation"])),
    ("dcm2niix", "dicomprep.convert.dcm2niix:convert_unit_rule", "private/convert/{unit}/dcm2niix.parquet",
     lambda c: bool(c["convert"]["dcm2niix"]["enabled"])),
    ("ncct", "dicomprep.convert.ncct:convert_unit_rule", "private/convert/{unit}/ncct.parquet",
     lambda c: bool(c["convert"]["ncct"]["enabled"])),
    ("seg", "dicomprep.convert.seg:convert_unit_rule", "private/convert/{unit}/seg.parquet",
     lambda c: bool(c["seg"]["enabled"])),
    ("hdf5", "dicomprep.export.hdf5:export_unit_rule", "share/hdf5/{unit}.h5",
     lambda c: bool(c["export"]["hdf5"]["enabled"])),
    ("qc", "dicomprep.qc.checks:qc_unit_rule", "share/qc/{unit}/qc.json",
     lambda c: bool(c["qc"]["enabled"])),
]


def listed_outputs(out_dir: Path, table: pd.DataFrame) -> list[Path]:
    """Files a stage manifest lists: ``outputs`` (``;``-joined, relative to OUT)
    and, for de-identification, ``output_path`` (absolute)."""
    files: list[Path] = []
    for entry in table.get("outputs", pd.Series(dtype=object)).fillna(""):
        files += [Path(out_dir) / rel.strip() for rel in str(entry).split(";") if rel.strip()]
    for entry in table.get("output_path", pd.Series(dtype=object)).fillna(""):
        if str(entry).strip():
            files.append(Path(str(entry).strip()))
    return files


def remove_listed_outputs(out_dir: str | Path, manifest: str | Path | pd.DataFrame) -> int:
    """Delete the share/ files a previous manifest (a path or a table) listed, so a
    re-run leaves no stale outputs; returns how many were removed."""
    out_dir = Path(out_dir)
    if not isinstance(manifest, pd.DataFrame):
        path = Path(manifest)
        if not path.is_file():
            return 0
        try:
            manifest = pd.read_parquet(path)
        except Exception:  # unreadable old manifest: nothing known to remove
            return 0
    removed = 0
    for file in listed_outputs(out_dir, manifest):
        try:
            file.resolve().relative_to((out_dir / "share").resolve())
        except ValueError:
            continue  # only ever delete inside share/
        if file.is_file():
            file.unlink()
            removed += 1
    return removed


def outputs_record(out_dir: Path, unit: str, stage: str) -> Path:
    """Where a stage's last manifest is kept outside Snakemake's declared outputs
    (Snakemake deletes those before a job runs, so the job cannot read them)."""
    return Path(out_dir) / "private" / "units" / unit / "previous" / f"{stage}.parquet"


def stage_outputs(unit: str, config: dict) -> dict[str, str]:
    """The declared output of every enabled stage of a unit (relative to OUT)."""
    return {name: rel.format(unit=unit) for name, _, rel, on in STAGES if on(config)}


def _failed_manifest(path: Path, unit_instances: pd.DataFrame, stage: str, reason: str) -> None:
    """A stage crashed: every series of the unit gets a 'failed' row with the reason
    (an HDF5 or JSON output records the failure in its attributes / fields)."""
    if path.suffix == ".h5":
        import h5py

        with atomic_path(path) as tmp:
            with h5py.File(tmp, "w") as h5:
                h5.attrs["status"] = "failed"
                h5.attrs["reason"] = reason
        return
    if path.suffix == ".json":
        write_text(path, json.dumps({"status": "failed", "reason": reason}, indent=1))
        return
    series = unit_instances.drop_duplicates("series_key")
    table = pd.DataFrame({
        "series_key": series["series_key"].values,
        "series_id": series["series_id"].values if "series_id" in series else "",
        "status": "failed", "reason": reason, "outputs": "",
    })
    if stage == "deid":
        table = pd.DataFrame({"path": unit_instances["path"].values, "series_key": unit_instances["series_key"].values,
                              "series_id": unit_instances.get("series_id", pd.Series([""] * len(unit_instances))).values,
                              "output_path": "", "status": "quarantined", "reason": reason})
    with atomic_path(path) as tmp:
        table.to_parquet(tmp, index=False)


def process_unit(*, out_dir, unit: str, config: dict, log=None, demo: bool = False, threads: int = 1, **_) -> dict:
    """Run every enabled stage of one unit in order; return the stage summary."""
    from .select import load_unit_instances

    out_dir = Path(out_dir)
    logs = out_dir / "private" / "logs"
    logger = get_logger("unit", log)
    summary: dict[str, dict] = {}
    t_unit = time.perf_counter()
    for name, target, rel, on in STAGES:
        if not on(config):
            continue
        output = out_dir / rel.format(unit=unit)
        stage_log = logs / name / f"{unit}.log"
        module_name, func_name = target.split(":")
        record = outputs_record(out_dir, unit, name)
        n_stale = remove_listed_outputs(out_dir, record)
        if n_stale:
            logger.info("unit %s: removed %d output(s) of the previous %s run", unit, n_stale, name)
        t0 = time.perf_counter()
        try:
            func = getattr(importlib.import_module(module_name), func_name)
            func(out_dir=str(out_dir), unit=unit, config=config, demo=demo,
                 output={"manifest": str(output), "h5": str(output), "qc": str(output)},
                 log=str(stage_log), wildcards={"unit": unit}, threads=threads)
            if not output.exists():
                raise DicomprepError(f"stage {name} finished without writing {rel.format(unit='<unit>')}")
            summary[name] = {"status": "done", "seconds": round(time.perf_counter() - t0, 2)}
            if output.suffix == ".parquet":
                record.parent.mkdir(parents=True, exist_ok=True)
                with atomic_path(record) as tmp:
                    shutil.copyfile(output, tmp)
        except Exception as exc:  # a stage's crash must not stop the unit's other stages
            reason = f"{name} stage failed: {type(exc).__name__}: {exc}"
            is_user_error = isinstance(exc, DicomprepError)
            get_logger(name, stage_log, stderr=False).error(
                reason + ("" if is_user_error else "\n" + traceback.format_exc()))
            logger.error("unit %s: %s (details in private/logs/%s/%s.log)", unit, reason, name, unit)
            _failed_manifest(output, load_unit_instances(out_dir, unit), name, reason)
            summary[name] = {"status": "failed", "seconds": round(time.perf_counter() - t0, 2), "reason": reason}
    total = time.perf_counter() - t_unit
    write_text(out_dir / "private" / "units" / unit / "stages.json", json.dumps(summary, indent=1))
    done = ", ".join(f"{k} {v['status']} ({v['seconds']} s)" for k, v in summary.items())
    logger.info("unit %s: %s; %.1f s in all", unit, done, total)
    return summary


def process_unit_rule(**kwargs):
    process_unit(**{k: v for k, v in kwargs.items() if k in ("out_dir", "unit", "config", "log", "demo", "threads")})
