# Discovery + index (incremental, cached) and the select checkpoint, which
# decides the units and which stages each unit has work for.


rule demo_input:
    output:
        flag=OUT / "demo-input" / ".complete",
    log:
        L.log("demo"),
    conda:
        ENVS / "dicomprep.yaml"
    script:
        "../../scripts/demo_input.py"


rule index:
    input:
        flag=[OUT / "demo-input" / ".complete"] if DEMO else [],
    output:
        instances=L.instances_table,
        series=L.series_table,
        unreadable=L.unreadable_table,
    log:
        L.log("index"),
    benchmark:
        L.benchmark("index")
    params:
        input_dir=input_folder,
        input_state=INPUT_STATE,
        settings=settings("index"),
    threads: config["index"]["workers"]
    resources:
        mem_mb=4000,
        runtime=60,
    conda:
        ENVS / "dicomprep.yaml"
    script:
        "../../scripts/index.py"


checkpoint select_units:
    input:
        instances=rules.index.output.instances,
        series=rules.index.output.series,
    output:
        units=L.units_table,
    log:
        L.log("select"),
    params:
        demo=DEMO,
        settings=settings("select"),
    conda:
        ENVS / "dicomprep.yaml"
    script:
        "../../scripts/select_units.py"
