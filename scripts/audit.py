# Thin entry point: unpack `snakemake`, call the package.
from dicomprep.entry import run

run(snakemake, "dicomprep.deid.audit:audit_rule")  # noqa: F821
