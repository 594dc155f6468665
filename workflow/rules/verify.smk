# The last rule: scan everything under share/ for identifiers the private
# index knows; fail the run on a hit.


def everything_in_share(wildcards):
    out = [str(SHARE / "tables" / "series.csv"), str(SHARE / "audit.yaml")]
    if stage_on("qc", "enabled"):
        out.append(str(SHARE / "qc" / "report.html"))
    else:
        out.extend(all_unit_outputs(wildcards))
    if stage_on("export", "hdf5", "enabled"):
        out.append(str(SHARE / "hdf5" / "cohort.h5"))
    return out


rule verify:
    input:
        share=everything_in_share,
    output:
        result=SHARE / "verification.json",
    log:
        LOGS / "verify.log",
    params:
        out_dir=str(OUT),
        enforce=ANON,
    script:
        "../../scripts/verify.py"
