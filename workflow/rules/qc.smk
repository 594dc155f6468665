# The share/ tables and the cohort report (unit QC runs in process_unit).


def all_unit_outputs(wildcards):
    """Every unit's stage outputs: tables and report wait for all units."""
    table = units_table()
    return [path.format(unit=u) for u in table["unit"] for path in UNIT_OUTPUTS.values()]


rule share_tables:
    input:
        stages=all_unit_outputs,
        units=PRIVATE / "units.csv",
        audit=SHARE / "audit.yaml",
    output:
        series=report(SHARE / "tables" / "series.csv", category="Tables",
                      labels={"table": "series (de-identified)"}),
    log:
        LOGS / "tables.log",
    params:
        out_dir=str(OUT),
    script:
        "../../scripts/share_tables.py"


rule report:
    input:
        stages=all_unit_outputs,
        series=SHARE / "tables" / "series.csv",
        audit=SHARE / "audit.yaml",
        cohort=[SHARE / "hdf5" / "cohort.h5"] if config["export"]["hdf5"]["enabled"] else [],
    output:
        html=report(SHARE / "qc" / "report.html", category="Cohort report",
                    labels={"page": "dicomprep cohort report"}),
        gallery=report(directory(SHARE / "qc" / "gallery"), patterns=["{name}.png"],
                       category="QC pictures"),
    log:
        LOGS / "report.log",
    params:
        out_dir=str(OUT),
    script:
        "../../scripts/report.py"
