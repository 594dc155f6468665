# Helpers shared by all rule files: config validation, paths, unit targets.
import sys
import time
from pathlib import Path

from snakemake.exceptions import WorkflowError

from dicomprep.config import check_config, coerce_command_line_values
from dicomprep.errors import ConfigError

coerce_command_line_values(config)
try:
    validate(config, schema=str(Path(workflow.basedir) / "config" / "schema.yaml"))
except Exception as exc:  # re-explain the schema error as one sentence naming the key
    from dicomprep.config import validate_config

    try:
        validate_config(config)
    except ConfigError as err:
        raise WorkflowError(str(err)) from None
    raise WorkflowError(f"config: {exc}") from None
try:
    check_config(config)
except ConfigError as err:
    raise WorkflowError(str(err)) from None

OUT = Path(config["output_dir"]).resolve()
DEMO = config["input_dir"] == "demo"
INPUT = (OUT / "demo-input") if DEMO else Path(config["input_dir"]).resolve()
SHARE = OUT / "share"
PRIVATE = OUT / "private"
LOGS = PRIVATE / "logs"
ANON = bool(config["anonymisation"])
SCRIPTS = Path(workflow.basedir) / "scripts"
if ANON:  # refuse to start without a secret (the demo has its own, and says so)
    from dicomprep.deid.pseudonym import load_secret

    try:
        load_secret(config["deid"]["secret_file"], demo=DEMO)
    except ConfigError as err:
        raise WorkflowError(str(err)) from None
    if DEMO:
        print("dicomprep: the demo cohort uses the fixed demo secret; never use it for real data.", file=sys.stderr)
# A new value per invocation makes the (incremental, cached) index re-run,
# so new and removed files are picked up without globbing at parse time.
INVOCATION = time.time_ns() if config["refresh_index"] else 0

def unit_settings():
    """Fingerprint of the settings a unit's outputs depend on: as a param of
    process_unit, a change re-runs the units (Snakemake's params trigger);
    ``overwrite: true`` makes it new at every invocation."""
    import hashlib
    import json

    keys = ("anonymisation", "layout", "deid", "convert", "seg", "export", "qc")
    text = json.dumps({k: config[k] for k in keys}, sort_keys=True, default=str)
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    return f"{digest}-{time.time_ns()}" if config["overwrite"] else digest


UNIT_SETTINGS = unit_settings()

wildcard_constraints:
    unit=r"[^/]+/[^/]+/[^/]+/[^/]+",


_UNITS_CACHE = {}


def units_table():
    """The selected units, after the select checkpoint has run (read once per change)."""
    import pandas as pd

    path = Path(checkpoints.select_units.get().output.units)
    stamp = (str(path), path.stat().st_mtime_ns)
    if stamp not in _UNITS_CACHE:
        _UNITS_CACHE.clear()
        _UNITS_CACHE[stamp] = pd.read_csv(path, dtype=str, keep_default_na=False)
    return _UNITS_CACHE[stamp]


def unit_list():
    return list(units_table()["unit"])


# Per-unit inputs are plain patterns, never checkpoint lookups: per-unit jobs
# only exist after the checkpoint, and a lookup per job makes DAG building slow.
#: The unit's own instance list (the checkpoint rewrites it only on change).
UNIT_INSTANCES = str(PRIVATE / "units" / "{unit}" / "instances.parquet")
#: What converters read: the de-identification manifest, or the originals.
DICOM_SOURCES = str(PRIVATE / "deid" / "{unit}" / "manifest.parquet") if ANON else UNIT_INSTANCES


def per_unit(pattern):
    """Expand a per-unit path pattern over the selected units."""

    def inner(wildcards):
        return [str(pattern).format(unit=u) for u in unit_list()]

    return inner


def stage_on(*keys):
    node = config
    for k in keys:
        node = node[k]
    return bool(node)


def final_targets(wildcards):
    targets = [str(SHARE / "verification.json"), str(SHARE / "tables" / "series.csv")]
    if stage_on("qc", "enabled"):
        targets.append(str(SHARE / "qc" / "report.html"))
    return targets
