# Thin entry point of rule `publish`: unpack `snakemake`, call the package.
from dicomprep.entry import run

run(snakemake, "dicomprep.stages:publish")  # noqa: F821
