# Thin entry point of rule `index`: unpack `snakemake`, call the package.
from dicomprep.entry import run

run(snakemake, "dicomprep.stages:index")  # noqa: F821
