# Thin entry point of rule `qc_unit`: unpack `snakemake`, call the package.
from dicomprep.entry import run

run(snakemake, "dicomprep.stages:qc_unit")  # noqa: F821
