# Shared by all the rule files (config validation, the output layout, the unit
# table the select checkpoint writes, per-stage settings fingerprints).
from pathlib import Path

from snakemake.exceptions import WorkflowError

from dicomprep import workflow_support as ws
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
    try:
        ws.check_secret(config, demo=DEMO, cluster=workflow.non_local_exec)
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


def unit_list():
    return list(units_table()["unit"])


def stage_output(stage, unit):
    """A stage's directory and its completion mark: both are requested, so a stage
    whose mark is missing (a killed run) is re-run, not trusted."""
    return [str(L.stage_dir(stage, unit)), str(L.stage_done(stage, unit))]


def selected_units():
    """units.csv for per-unit input functions: per-unit jobs exist only once the
    checkpoint has run (publish asked for them through units_table), so this
    reads the file directly, without a checkpoint lookup per job (cached on mtime)."""
    return ws.read_units(L.units_table)


def unit_has(stage):
    """Input function: the unit's stage output, if the unit has work for ``stage``."""

    def inner(wildcards):
        if stage in ws.unit_stages(selected_units(), wildcards.unit):
            return stage_output(stage, wildcards.unit)
        return []

    return inner


def deid_input(wildcards):
    """What converters read: the de-identified copies (or nothing extra without de-identification)."""
    return stage_output("deid", wildcards.unit) if ANON else []


def all_stage_dirs(*stages):
    """Input function: every selected unit's stage outputs (of ``stages``, default all)."""
    wanted = stages or UNIT_STAGES

    def inner(wildcards):
        table = units_table()
        return [p for u in table["unit"] for s in ws.unit_stages(table, u) if s in wanted
                for p in stage_output(s, u)]

    return inner


def settings(stage):
    """Fingerprint of the config a stage's outputs depend on (a param: a change re-runs the stage)."""
    return ws.stage_settings(config, stage)


def resources_for(stage):
    return ws.STAGE_RESOURCES[stage]


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
