# Conversion per unit: dcm2niix for every image series (with STEAM b-values),
# and the CT pipeline for axial non-contrast CT.


rule convert_dcm2niix:
    input:
        sources=dicom_sources,
    output:
        manifest=PRIVATE / "convert" / "{unit}" / "dcm2niix.parquet",
    log:
        LOGS / "convert" / "{unit}.dcm2niix.log",
    params:
        out_dir=str(OUT),
        unit=lambda w: w.unit,
    script:
        "../../scripts/convert_dcm2niix.py"


rule convert_ncct:
    input:
        sources=dicom_sources,
    output:
        manifest=PRIVATE / "convert" / "{unit}" / "ncct.parquet",
    log:
        LOGS / "convert" / "{unit}.ncct.log",
    params:
        out_dir=str(OUT),
        unit=lambda w: w.unit,
    resources:
        mem_mb=8000,
    script:
        "../../scripts/convert_ncct.py"
