# Thin entry point of rule `demo_input`: unpack `snakemake`, call the package.
from dicomprep.entry import run

run(snakemake, "dicomprep.stages:demo_input")  # noqa: F821
