# Cohort-level rules: put the selected units' stage outputs in share/ (and
# nothing else), then the audit, tables, cohort HDF5 file and report.


localrules:
    demo_input,
    index,
    select_units,
    publish,
    audit,
    share_tables,
    hdf5_cohort,
    bids,
    report,
    verify,


rule publish:
    input:
        stages=all_stage_marks,
        units=L.units_table,
    output:
        published=L.published,
    log:
        L.log("publish"),
    benchmark:
        L.benchmark("publish")
    conda:
        ENVS / "dicomprep.yaml"
    script:
        "../../scripts/publish.py"


rule audit:
    input:
        published=L.published,
    output:
        audit=L.audit_yaml,
        crosswalk=L.crosswalk,
    log:
        L.log("audit"),
    params:
        demo=DEMO,
    conda:
        ENVS / "dicomprep.yaml"
    script:
        "../../scripts/audit.py"


rule share_tables:
    input:
        published=L.published,
    output:
        series=report(L.series_csv, category="Tables", labels={"table": "series (de-identified)"}),
        series_parquet=L.series_parquet,
        ct_index=L.ct_index,
    log:
        L.log("tables"),
    conda:
        ENVS / "dicomprep.yaml"
    script:
        "../../scripts/share_tables.py"


rule hdf5_cohort:
    input:
        published=L.published,
    output:
        cohort=L.cohort_h5,
        index=L.hdf5_index,
    log:
        L.log("hdf5_cohort"),
    conda:
        ENVS / "dicomprep.yaml"
    script:
        "../../scripts/hdf5_cohort.py"


rule bids:
    input:
        published=L.published,
    output:
        table=L.bids_table,
    log:
        L.log("bids"),
    conda:
        ENVS / "dicomprep.yaml"
    script:
        "../../scripts/bids.py"


rule report:
    input:
        published=L.published,
        series=L.series_csv,
        audit=L.audit_yaml,
        cohort=[L.cohort_h5] if config["export"]["hdf5"]["enabled"] else [],
        bids=[L.bids_table] if ws.bids_enabled(config) else [],
    output:
        html=report(L.report_html, category="Cohort report", labels={"page": "dicomprep cohort report"}),
    log:
        L.log("report"),
    benchmark:
        L.benchmark("report")
    threads: 2
    conda:
        ENVS / "dicomprep.yaml"
    script:
        "../../scripts/report.py"
