# Thin entry point of rule `convert_ncct`: unpack `snakemake`, call the package.
from dicomprep.entry import run

run(snakemake, "dicomprep.stages:convert_ncct")  # noqa: F821
