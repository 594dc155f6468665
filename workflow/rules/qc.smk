# Quality control per unit, the share/ tables and the cohort report.


def unit_stage_manifests(wildcards):
    """Every per-unit output a unit's QC looks at (the enabled stages)."""
    base = PRIVATE / "convert" / wildcards.unit
    out = [unit_input(wildcards)]
    if ANON:
        out.append(str(PRIVATE / "deid" / wildcards.unit / "manifest.parquet"))
    if stage_on("convert", "dcm2niix", "enabled"):
        out.append(str(base / "dcm2niix.parquet"))
    if stage_on("convert", "ncct", "enabled"):
        out.append(str(base / "ncct.parquet"))
    if stage_on("seg", "enabled"):
        out.append(str(base / "seg.parquet"))
    if stage_on("export", "hdf5", "enabled"):
        out.append(str(SHARE / "hdf5" / f"{wildcards.unit}.h5"))
    return out


rule qc_unit:
    input:
        stages=unit_stage_manifests,
    output:
        qc=SHARE / "qc" / "{unit}" / "qc.json",
    log:
        LOGS / "qc" / "{unit}.log",
    params:
        out_dir=str(OUT),
        unit=lambda w: w.unit,
    script:
        "../../scripts/qc_unit.py"


def all_unit_outputs(wildcards):
    units = unit_list()
    out = []
    for u in units:
        out.extend(unit_stage_manifests(type("W", (), {"unit": u})()))
    return out


rule share_tables:
    input:
        stages=all_unit_outputs,
        units=PRIVATE / "units.csv",
        audit=SHARE / "audit.yaml",
    output:
        series=SHARE / "tables" / "series.csv",
    log:
        LOGS / "tables.log",
    params:
        out_dir=str(OUT),
    script:
        "../../scripts/share_tables.py"


rule report:
    input:
        qc=per_unit(SHARE / "qc" / "{unit}" / "qc.json"),
        series=SHARE / "tables" / "series.csv",
        audit=SHARE / "audit.yaml",
        cohort=[SHARE / "hdf5" / "cohort.h5"] if config["export"]["hdf5"]["enabled"] else [],
    output:
        html=SHARE / "qc" / "report.html",
    log:
        LOGS / "report.log",
    params:
        out_dir=str(OUT),
    script:
        "../../scripts/report.py"
