# Thin entry point: unpack `snakemake`, call the package.
from dicomprep.entry import run

run(snakemake, "dicomprep.qc.report:report_rule")  # noqa: F821
