# The last rule: every file under share/ must belong to a selected unit (or be
# a cohort file), and no identifier the private index knows may appear in any
# of them (names, IDs, dates, UIDs, folder names). A hit fails the run.


def everything_in_share(wildcards):
    out = [str(L.published), str(L.series_csv), str(L.audit_yaml)]
    if config["qc"]["enabled"]:
        out.append(str(L.report_html))
    if config["export"]["hdf5"]["enabled"]:
        out.append(str(L.cohort_h5))
    return out


rule verify:
    input:
        share=everything_in_share,
        units=L.units_table,
    output:
        result=L.verification_json,
    log:
        L.log("verify"),
    benchmark:
        L.benchmark("verify")
    params:
        out_dir=str(OUT),
        enforce=ANON,
    threads: 2
    resources:
        mem_mb=4000,
        runtime=60,
    conda:
        ENVS / "dicomprep.yaml"
    script:
        "../../scripts/verify.py"
