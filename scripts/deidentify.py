# Thin entry point: unpack `snakemake`, call the package.
from dicomprep.entry import run

run(snakemake, "dicomprep.deid.engine:deidentify_unit_rule")  # noqa: F821
