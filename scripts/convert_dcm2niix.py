# Thin entry point of rule `convert_dcm2niix`: unpack `snakemake`, call the package.
from dicomprep.entry import run

run(snakemake, "dicomprep.stages:convert_dcm2niix")  # noqa: F821
