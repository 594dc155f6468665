# Thin entry point of rule `bids`: unpack `snakemake`, call the package.
from dicomprep.entry import run

run(snakemake, "dicomprep.stages:bids")  # noqa: F821
