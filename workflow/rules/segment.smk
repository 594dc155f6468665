# DICOM-SEG decoding per unit onto the source series' grid.


rule convert_seg:
    input:
        sources=dicom_sources,
    output:
        manifest=PRIVATE / "convert" / "{unit}" / "seg.parquet",
    log:
        LOGS / "convert" / "{unit}.seg.log",
    params:
        out_dir=str(OUT),
        unit=lambda w: w.unit,
    script:
        "../../scripts/convert_seg.py"
