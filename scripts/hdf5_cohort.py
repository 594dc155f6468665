# Thin entry point: unpack `snakemake`, call the package.
from dicomprep.entry import run

run(snakemake, "dicomprep.export.hdf5:cohort_rule")  # noqa: F821
