# Pixel exports: one HDF5 per unit and a cohort file of external links.


rule export_hdf5:
    input:
        sources=dicom_sources,
    output:
        h5=SHARE / "hdf5" / "{unit}.h5",
    log:
        LOGS / "export" / "{unit}.hdf5.log",
    params:
        out_dir=str(OUT),
        unit=lambda w: w.unit,
    script:
        "../../scripts/export_hdf5.py"


rule hdf5_cohort:
    input:
        units=per_unit(SHARE / "hdf5" / "{unit}.h5"),
    output:
        cohort=SHARE / "hdf5" / "cohort.h5",
    log:
        LOGS / "export" / "cohort.log",
    params:
        out_dir=str(OUT),
    script:
        "../../scripts/hdf5_cohort.py"
