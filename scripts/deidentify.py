# Thin entry point of rule `deidentify`: unpack `snakemake`, call the package.
from dicomprep.entry import run

run(snakemake, "dicomprep.stages:deidentify")  # noqa: F821
