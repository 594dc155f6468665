# A unit's chain, one rule per stage. Each writes one directory,
# private/stages/<stage>/<unit>/ (manifest.parquet + share/...), which Snakemake
# removes before a re-run and after a failure; `publish` puts the share/ part in
# place. A unit gets a job only for the stages it has work for (units.csv).
# On a cluster a unit's jobs are submitted together (group "unit").


rule deidentify:
    input:
        instances=L.unit_instances("{unit}"),
    output:
        stage=directory(L.stage_dir("deid", "{unit}")),
        done=L.stage_done("deid", "{unit}"),
    log:
        L.log("deid", "{unit}"),
    benchmark:
        L.benchmark("deid", "{unit}")
    params:
        demo=DEMO,
        settings=settings("deid"),
    threads: resources_for("deid")["threads"]
    resources:
        mem_mb=lambda wc, attempt: resources_for("deid")["mem_mb"] * attempt,
        runtime=lambda wc, attempt: resources_for("deid")["runtime"] * attempt,
    group:
        "unit"
    conda:
        ENVS / "dicomprep.yaml"
    script:
        "../../scripts/deidentify.py"


rule convert_dcm2niix:
    input:
        instances=L.unit_instances("{unit}"),
        deid=deid_input,
    output:
        stage=directory(L.stage_dir("dcm2niix", "{unit}")),
        done=L.stage_done("dcm2niix", "{unit}"),
    log:
        L.log("dcm2niix", "{unit}"),
    benchmark:
        L.benchmark("dcm2niix", "{unit}")
    params:
        settings=settings("dcm2niix"),
    threads: resources_for("dcm2niix")["threads"]
    resources:
        mem_mb=lambda wc, attempt: resources_for("dcm2niix")["mem_mb"] * attempt,
        runtime=lambda wc, attempt: resources_for("dcm2niix")["runtime"] * attempt,
    group:
        "unit"
    conda:
        ENVS / "dcm2niix.yaml"
    script:
        "../../scripts/convert_dcm2niix.py"


rule convert_ncct:
    input:
        instances=L.unit_instances("{unit}"),
        deid=deid_input,
    output:
        stage=directory(L.stage_dir("ncct", "{unit}")),
        done=L.stage_done("ncct", "{unit}"),
    log:
        L.log("ncct", "{unit}"),
    benchmark:
        L.benchmark("ncct", "{unit}")
    params:
        demo=DEMO,
        settings=settings("ncct"),
    threads: resources_for("ncct")["threads"]
    resources:
        mem_mb=lambda wc, attempt: resources_for("ncct")["mem_mb"] * attempt,
        runtime=lambda wc, attempt: resources_for("ncct")["runtime"] * attempt,
    group:
        "unit"
    conda:
        ENVS / "dicomprep.yaml"
    script:
        "../../scripts/convert_ncct.py"


rule decode_seg:
    input:
        instances=L.unit_instances("{unit}"),
        deid=deid_input,
    output:
        stage=directory(L.stage_dir("seg", "{unit}")),
        done=L.stage_done("seg", "{unit}"),
    log:
        L.log("seg", "{unit}"),
    benchmark:
        L.benchmark("seg", "{unit}")
    params:
        demo=DEMO,
        settings=settings("seg"),
    threads: resources_for("seg")["threads"]
    resources:
        mem_mb=lambda wc, attempt: resources_for("seg")["mem_mb"] * attempt,
        runtime=lambda wc, attempt: resources_for("seg")["runtime"] * attempt,
    group:
        "unit"
    conda:
        ENVS / "dicomprep.yaml"
    script:
        "../../scripts/decode_seg.py"


rule export_hdf5:
    input:
        instances=L.unit_instances("{unit}"),
        deid=deid_input,
    output:
        stage=directory(L.stage_dir("hdf5", "{unit}")),
        done=L.stage_done("hdf5", "{unit}"),
    log:
        L.log("hdf5", "{unit}"),
    benchmark:
        L.benchmark("hdf5", "{unit}")
    params:
        settings=settings("hdf5"),
    threads: resources_for("hdf5")["threads"]
    resources:
        mem_mb=lambda wc, attempt: resources_for("hdf5")["mem_mb"] * attempt,
        runtime=lambda wc, attempt: resources_for("hdf5")["runtime"] * attempt,
    group:
        "unit"
    conda:
        ENVS / "dicomprep.yaml"
    script:
        "../../scripts/export_hdf5.py"


rule qc_unit:
    input:
        instances=L.unit_instances("{unit}"),
        deid=deid_input,
        dcm2niix=unit_has("dcm2niix"),
        ncct=unit_has("ncct"),
        seg=unit_has("seg"),
    output:
        stage=report(
            directory(L.stage_dir("qc", "{unit}")),
            patterns=["{name}.png"],
            category="QC pictures",
            subcategory="{unit}",
        ),
        done=L.stage_done("qc", "{unit}"),
    log:
        L.log("qc", "{unit}"),
    benchmark:
        L.benchmark("qc", "{unit}")
    params:
        settings=settings("qc"),
    threads: resources_for("qc")["threads"]
    resources:
        mem_mb=lambda wc, attempt: resources_for("qc")["mem_mb"] * attempt,
        runtime=lambda wc, attempt: resources_for("qc")["runtime"] * attempt,
    group:
        "unit"
    conda:
        ENVS / "dicomprep.yaml"
    script:
        "../../scripts/qc_unit.py"
