# Thin entry point: unpack `snakemake`, call the package.
from dicomprep.entry import run

run(snakemake, "dicomprep.export.hdf5:export_unit_rule")  # noqa: F821
