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
    threads: STAGE_THREADS["deid"]
    resources:
        **stage_resources("deid"),
    group:
        "unit"
    conda:
        ENVS / "dicomprep.yaml"
    script:
        "../../scripts/deidentify.py"


rule convert_dcm2niix:
    input:
        source=UNIT_SOURCE,
    output:
        stage=directory(L.stage_dir("dcm2niix", "{unit}")),
        done=L.stage_done("dcm2niix", "{unit}"),
    log:
        L.log("dcm2niix", "{unit}"),
    benchmark:
        L.benchmark("dcm2niix", "{unit}")
    params:
        settings=settings("dcm2niix"),
    threads: STAGE_THREADS["dcm2niix"]
    resources:
        **stage_resources("dcm2niix"),
    group:
        "unit"
    conda:
        ENVS / "dcm2niix.yaml"
    script:
        "../../scripts/convert_dcm2niix.py"


rule convert_ncct:
    input:
        source=UNIT_SOURCE,
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
    threads: STAGE_THREADS["ncct"]
    resources:
        **stage_resources("ncct"),
    group:
        "unit"
    conda:
        ENVS / "dicomprep.yaml"
    script:
        "../../scripts/convert_ncct.py"


rule decode_seg:
    input:
        source=UNIT_SOURCE,
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
    threads: STAGE_THREADS["seg"]
    resources:
        **stage_resources("seg"),
    group:
        "unit"
    conda:
        ENVS / "dicomprep.yaml"
    script:
        "../../scripts/decode_seg.py"


rule export_hdf5:
    input:
        source=UNIT_SOURCE,
    output:
        stage=directory(L.stage_dir("hdf5", "{unit}")),
        done=L.stage_done("hdf5", "{unit}"),
    log:
        L.log("hdf5", "{unit}"),
    benchmark:
        L.benchmark("hdf5", "{unit}")
    params:
        settings=settings("hdf5"),
    threads: STAGE_THREADS["hdf5"]
    resources:
        **stage_resources("hdf5"),
    group:
        "unit"
    conda:
        ENVS / "dicomprep.yaml"
    script:
        "../../scripts/export_hdf5.py"


rule qc_unit:
    input:
        unpack(converted_outputs),
        source=UNIT_SOURCE,
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
    threads: STAGE_THREADS["qc"]
    resources:
        **stage_resources("qc"),
    group:
        "unit"
    conda:
        ENVS / "dicomprep.yaml"
    script:
        "../../scripts/qc_unit.py"
