# dicomprep: clinical DICOM exports -> shareable research cohorts.
# The chain (see ARCHITECTURE.md):
#   discover+index -> select (checkpoint) -> deidentify -> convert -> qc -> verify
# Rules are thin; every rule calls one script that calls the package.
from snakemake.utils import min_version, validate

min_version("9.0")


configfile: workflow.basedir + "/config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/index.smk"
include: "workflow/rules/unit.smk"
include: "workflow/rules/deidentify.smk"
include: "workflow/rules/export.smk"
include: "workflow/rules/qc.smk"
include: "workflow/rules/verify.smk"


rule all:
    input:
        final_targets,
    default_target: True
