# Thin entry point: unpack `snakemake`, call the package.
from dicomprep.entry import run

run(snakemake, "dicomprep.select:select_rule")  # noqa: F821
