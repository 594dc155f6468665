# Shared by all the rule files (config validation, the output layout, the unit
# table the select checkpoint writes, per-stage settings fingerprints).
import os
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError

from dicomprep import workflow_support as ws
from dicomprep.cluster import on_cluster
from dicomprep.config import validate_workflow_config
from dicomprep.errors import ConfigError
from dicomprep.paths import UNIT_STAGES, layout

try:
    validate_workflow_config(config, workflow.basedir, validate)
except ConfigError as err:
    raise WorkflowError(str(err)) from None

OUT = Path(config["output_dir"]).resolve()
L = layout(OUT)
DEMO = config["input_dir"] == "demo"
INPUT = (OUT / "demo-input") if DEMO else Path(config["input_dir"]).resolve()
ANON = bool(config["anonymisation"])
ENVS = Path(workflow.basedir) / "envs"
MAIN = workflow.is_main_process

if ANON and MAIN:  # refuse to start without a secret (the demo has its own, and says so)
    try:  # the executor is picked after parsing: ask the command line which one it names
        ws.check_secret(config, demo=DEMO, cluster=on_cluster(sys.argv, os.environ))
    except ConfigError as err:
        raise WorkflowError(str(err)) from None

# Jobs import dicomprep from the same source as this Snakefile, also inside the
# rules' conda environments (which hold its dependencies).
ws.expose_package(OUT)

# The index re-runs when the input tree changed (paths, sizes, mtimes: a stat
# walk, no file is opened), so an unchanged input leaves the checkpoint settled
# and `--report`, `--summary` and `-n` show the whole chain.
INPUT_STATE = "demo" if DEMO else ws.input_state(INPUT, enabled=config["refresh_index"] and MAIN)

wildcard_constraints:
    unit=r"[^/]+/[^/]+/[^/]+/[^/]+",


def units_table():
    """The selected units (``private/units.csv``), once the select checkpoint has run."""
    return ws.read_units(checkpoints.select_units.get().output.units)


def stage_mark(stage, unit):
    """What downstream rules request of a stage: its completion mark, written last
    by the same job that declares the stage directory. A stage killed mid-way has
    no mark, so it is re-run, not trusted (one file per stage, not two, keeps the
    dry run of a large cohort cheap)."""
    return str(L.stage_done(stage, unit))


def selected_units():
    """units.csv for per-unit input functions: per-unit jobs exist only once the
    checkpoint has run (publish asked for them through units_table), so this
    reads the file directly, without a checkpoint lookup per job (cached on mtime)."""
    return ws.read_units(L.units_table)


def converted_outputs(wildcards):
    """Input function (unpacked) of qc_unit: the unit's converter stages, by name
    (their completion marks); a stage the unit has no work for is an empty list.
    One call per unit: input functions are what a dry run of many units spends
    its time on."""
    stages = ws.unit_stages(selected_units(), wildcards.unit)
    return {s: [stage_mark(s, wildcards.unit)] if s in stages else [] for s in ("dcm2niix", "ncct", "seg")}


#: What a unit's converters wait for: its de-identified copies (the deid stage's
#: mark) or, without de-identification, its instance list. A pattern, not a
#: function: it costs the dry run nothing per unit.
UNIT_SOURCE = stage_mark("deid", "{unit}") if ANON else str(L.unit_instances("{unit}"))


def all_stage_marks(wildcards):
    """Input function of publish: every selected unit's stage marks."""
    table = units_table()
    return [stage_mark(s, u) for u in table["unit"] for s in ws.unit_stages(table, u)]


def settings(stage):
    """Fingerprint of the config a stage's outputs depend on (a param: a change re-runs the stage)."""
    return ws.stage_settings(config, stage)


STAGE_THREADS = {stage: r["threads"] for stage, r in ws.STAGE_RESOURCES.items()}


def stage_resources(stage):
    """A stage's ``resources:``: memory and runtime grow with the attempt (a job a
    cluster killed for memory or time is retried larger). Not only on a cluster:
    the executor is chosen after the Snakefile is parsed (workflow.non_local_exec
    is False here even under --executor slurm)."""
    return ws.stage_resources(stage, per_attempt=True)


def everything_in_share(wildcards):
    """What the verify step scans after: every cohort file of share/ and the publish record."""
    out = [str(L.published), str(L.series_csv), str(L.audit_yaml)]
    if config["qc"]["enabled"]:
        out.append(str(L.report_html))
    if config["export"]["hdf5"]["enabled"]:
        out.append(str(L.cohort_h5))
    if ws.bids_enabled(config):
        out.append(str(L.bids_table))
    return out


def input_folder(wildcards):
    """The input tree (the demo's is made inside OUT by demo_input)."""
    return str(INPUT)
