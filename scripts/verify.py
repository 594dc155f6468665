# Thin entry point of rule `verify`: unpack `snakemake`, call the package.
from dicomprep.entry import run

run(snakemake, "dicomprep.stages:verify")  # noqa: F821
