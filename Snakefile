# dicomprep: clinical DICOM exports -> shareable research cohorts.
# The chain (ARCHITECTURE.md), one rule per step:
#   demo_input? -> index -> select_units (checkpoint)
#   -> per unit: deidentify -> convert_dcm2niix | convert_ncct | decode_seg | export_hdf5 -> qc_unit
#   -> publish (share/ = the selected units' outputs) -> audit, share_tables, hdf5_cohort, report -> verify
# Rules are thin; every rule calls one script that calls dicomprep.stages.
import os

from snakemake.utils import min_version, validate

min_version("9.0")


configfile: os.path.join(workflow.basedir, "config", "config.yaml")


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/index.smk"
include: "workflow/rules/unit.smk"
include: "workflow/rules/cohort.smk"
include: "workflow/rules/verify.smk"


rule all:
    input:
        L.verified,
        L.series_csv,
        [L.report_html] if config["qc"]["enabled"] else [],
    default_target: True
