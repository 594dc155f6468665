# Thin entry point of rule `audit`: unpack `snakemake`, call the package.
from dicomprep.entry import run

run(snakemake, "dicomprep.stages:audit")  # noqa: F821
