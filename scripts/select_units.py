# Thin entry point of rule `select_units`: unpack `snakemake`, call the package.
from dicomprep.entry import run

run(snakemake, "dicomprep.stages:select_units")  # noqa: F821
