# Thin entry point of rule `share_tables`: unpack `snakemake`, call the package.
from dicomprep.entry import run

run(snakemake, "dicomprep.stages:share_tables")  # noqa: F821
