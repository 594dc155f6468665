# Thin entry point of rule `decode_seg`: unpack `snakemake`, call the package.
from dicomprep.entry import run

run(snakemake, "dicomprep.stages:decode_seg")  # noqa: F821
