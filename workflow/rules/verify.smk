# The last rule: every file under share/ must belong to a selected unit (or be
# a cohort file), and no identifier the private index knows may appear in any
# of them (names, IDs, dates, UIDs, folder names). A hit fails the run.


rule verify:
    input:
        share=everything_in_share,
    output:
        verified=L.verified,
    log:
        L.log("verify"),
    benchmark:
        L.benchmark("verify")
    params:
        enforce=ANON,
    threads: 2
    resources:
        mem_mb=4000,
        runtime=60,
    conda:
        ENVS / "dicomprep.yaml"
    script:
        "../../scripts/verify.py"
