# One job per unit runs the unit's stages in order (see src/dicomprep/pipeline.py):
# de-identify -> dcm2niix (+ STEAM b-values) -> CT volumes -> DICOM-SEG masks
# -> HDF5 -> unit QC. Each stage writes its own manifest and log.
from dicomprep.pipeline import stage_outputs

UNIT_OUTPUTS = {name: str(OUT / rel) for name, rel in stage_outputs("{unit}", config).items()}


rule process_unit:
    input:
        instances=UNIT_INSTANCES,
    output:
        **UNIT_OUTPUTS,
    log:
        LOGS / "units" / "{unit}.log",
    params:
        out_dir=str(OUT),
        unit=lambda w: w.unit,
        demo=DEMO,
        settings=UNIT_SETTINGS,
    threads: 2
    resources:
        mem_mb=8000,
    script:
        "../../scripts/process_unit.py"
