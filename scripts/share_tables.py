# Thin entry point: unpack `snakemake`, call the package.
from dicomprep.entry import run

run(snakemake, "dicomprep.tables:share_tables_rule")  # noqa: F821
