# The cohort HDF5 file: external links to every unit's file (written by process_unit).


rule hdf5_cohort:
    input:
        units=per_unit(SHARE / "hdf5" / "{unit}.h5"),
    output:
        cohort=SHARE / "hdf5" / "cohort.h5",
        index=SHARE / "tables" / "hdf5_index.csv",
    log:
        LOGS / "export" / "cohort.log",
    params:
        out_dir=str(OUT),
    script:
        "../../scripts/hdf5_cohort.py"
