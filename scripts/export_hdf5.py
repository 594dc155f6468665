# Thin entry point of rule `export_hdf5`: unpack `snakemake`, call the package.
from dicomprep.entry import run

run(snakemake, "dicomprep.stages:export_hdf5")  # noqa: F821
