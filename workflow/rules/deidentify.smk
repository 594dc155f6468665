# The cohort audit of de-identification (per-unit de-identification runs in
# process_unit, see unit.smk and src/dicomprep/deid/engine.py).


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
