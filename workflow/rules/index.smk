# discover + index (incremental, cached) and the select checkpoint.


rule demo_input:
    output:
        flag=OUT / "demo-input" / ".complete",
    log:
        LOGS / "demo.log",
    params:
        out_dir=str(OUT / "demo-input"),
    script:
        "../../scripts/demo.py"


rule index:
    input:
        flag=[OUT / "demo-input" / ".complete"] if DEMO else [],
    output:
        instances=PRIVATE / "index" / "instances.parquet",
        series=PRIVATE / "index" / "series.parquet",
        unreadable=PRIVATE / "index" / "unreadable.csv",
    log:
        LOGS / "index.log",
    params:
        input_dir=str(INPUT),
        out_dir=str(OUT),
        invocation=INVOCATION,
    threads: config["index"]["workers"]
    script:
        "../../scripts/index.py"


checkpoint select_units:
    input:
        instances=rules.index.output.instances,
        series=rules.index.output.series,
    output:
        units=PRIVATE / "units.csv",
    log:
        LOGS / "select.log",
    params:
        out_dir=str(OUT),
        demo=DEMO,
    script:
        "../../scripts/select.py"
