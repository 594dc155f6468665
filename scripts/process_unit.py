# Thin entry point: unpack `snakemake`, call the package.
from dicomprep.entry import run

run(snakemake, "dicomprep.pipeline:process_unit_rule")  # noqa: F821
