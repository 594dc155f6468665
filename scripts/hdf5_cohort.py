# Thin entry point of rule `hdf5_cohort`: unpack `snakemake`, call the package.
from dicomprep.entry import run

run(snakemake, "dicomprep.stages:hdf5_cohort")  # noqa: F821
