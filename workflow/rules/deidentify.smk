# De-identification per unit (PS3.15 Annex E) and the cohort audit.


rule deidentify:
    input:
        instances=unit_input,
    output:
        manifest=PRIVATE / "deid" / "{unit}" / "manifest.parquet",
    log:
        LOGS / "deid" / "{unit}.log",
    params:
        out_dir=str(OUT),
        unit=lambda w: w.unit,
        demo=DEMO,
    script:
        "../../scripts/deidentify.py"


rule audit:
    input:
        manifests=per_unit(PRIVATE / "deid" / "{unit}" / "manifest.parquet") if ANON else [],
        units=PRIVATE / "units.csv",
    output:
        audit=SHARE / "audit.yaml",
        crosswalk=PRIVATE / "crosswalk.csv",
    log:
        LOGS / "audit.log",
    params:
        out_dir=str(OUT),
        demo=DEMO,
    script:
        "../../scripts/audit.py"
