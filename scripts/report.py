# Thin entry point of rule `report`: unpack `snakemake`, call the package.
from dicomprep.entry import run

run(snakemake, "dicomprep.stages:report")  # noqa: F821
