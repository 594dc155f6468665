"""What each rule directive costs Snakemake's dry run, against a bare Snakefile.

Issue 11 asks `snakemake -n` of the stage chain to stay near a bare Snakefile
(a checkpoint and six one-line rules per unit). The same issue asks every stage
rule for ``log:``, ``benchmark:``, ``threads:``, ``resources:``, ``conda:`` and
settings ``params:``. This script measures, in one run and on the same number
of units, what those directives cost Snakemake itself, with no dicomprep code
in the Snakefile:

- ``bare``: the baseline of ``bench_dryrun.py`` (``shell: "touch {output}"``);
- ``mandated``: the same six rules with the directives issue 11 asks for;
- ``mandated+script``: and the work done by a ``script:`` (as dicomprep's rules);
- ``dicomprep-shaped``: and a completion mark beside the stage output, unit
  ``group:`` and attempt-scaled ``resources:`` functions (as dicomprep's rules);
- ``shaped-no-mark``, ``shaped-no-group``, ``shaped-no-attempt``: each of
  those three left out in turn;
- ``dicomprep``: the real workflow on a synthetic index (``bench_dryrun.py``).

Each is run ``BENCH_REPEATS`` times (default 3), interleaved; the minimum CPU
time (user + system of the child) of each is printed with its ratio to bare.

    python benchmarks/bench_dryrun_features.py [N_UNITS]
"""
from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_dryrun  # noqa: E402

STAGES = ["dcm2niix", "ncct", "seg", "hdf5"]


def _rule(name: str, inputs: str, features: set[str]) -> str:
    lines = [f"rule {name}:", f"    input: {inputs}", "    output:", f'        stage="stages/{name}/{{unit}}.out",']
    if "mark" in features:
        lines.append(f'        done="stages/{name}/{{unit}}.done",')
    if "mandated" in features:
        lines += [f'    log: "logs/{name}/{{unit}}.log"', f'    benchmark: "benchmarks/{name}/{{unit}}.tsv"',
                  '    params: settings="0123456789abcdef", demo=False', "    threads: 1",
                  '    conda: "env.yaml"']
        if "attempt" in features:
            lines.append("    resources: mem_mb=lambda wildcards, attempt: 2000 * attempt, "
                         "runtime=lambda wildcards, attempt: 10 * attempt")
        else:
            lines.append("    resources: mem_mb=2000, runtime=10")
    if "group" in features:
        lines.append('    group: "unit"')
    lines.append('    script: "stage.py"' if "script" in features else '    shell: "touch {output}"')
    return "\n".join(lines) + "\n"


def snakefile(features: set[str]) -> str:
    """A checkpoint and six rules per unit, with the given directives."""
    head = bench_dryrun.BARE_SNAKEFILE.split("rule deid:")[0]
    deps = 'expand("stages/{s}/{{unit}}.out", s=STAGES)'
    rules = [_rule("deid", '"units.csv"', features)]
    rules += [_rule(s, '"stages/deid/{unit}.out"', features) for s in STAGES]
    rules.append(_rule("qc", deps, features))
    return head + "\n".join(rules)


VARIANTS = {
    "bare": set(),
    "mandated": {"mandated"},
    "mandated+script": {"mandated", "script"},
    "dicomprep-shaped": {"mandated", "script", "mark", "group", "attempt"},
    "shaped-no-mark": {"mandated", "script", "group", "attempt"},
    "shaped-no-group": {"mandated", "script", "mark", "attempt"},
    "shaped-no-attempt": {"mandated", "script", "mark", "group"},
}
if os.environ.get("BENCH_VARIANTS"):  # a subset, e.g. BENCH_VARIANTS=bare,mandated
    VARIANTS = {k: v for k, v in VARIANTS.items() if k in os.environ["BENCH_VARIANTS"].split(",")}


def write_variant(folder: Path, features: set[str], n_units: int) -> Path:
    folder.mkdir(parents=True)
    (folder / "Snakefile").write_text(snakefile(features))
    (folder / "units.csv").write_text("unit\n" + "".join(f"u{i}\n" for i in range(n_units)))
    (folder / "stage.py").write_text("pass\n")
    (folder / "env.yaml").write_text("channels: [conda-forge]\ndependencies: [python=3.11]\n")
    return folder / "Snakefile"


def main() -> None:
    n_units = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    repeats = int(os.environ.get("BENCH_REPEATS", "3"))
    best: dict[str, tuple[float, float, int]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        files = {name: write_variant(tmp / name.replace("+", "_"), f, n_units) for name, f in VARIANTS.items()}
        inp = tmp / "in"
        inp.mkdir()
        big = tmp / "big"
        bench_dryrun.synthetic_index(big, n_units)
        for f in (big / "private" / "index").iterdir():  # older than the unit table
            t = time.time() - 3600
            os.utime(f, (t, t))
        for _ in range(repeats):
            for name, path in files.items():
                result = bench_dryrun.bare_dry_run(path)
                best[name] = min(best.get(name, result), result, key=lambda r: r[1])
            result = bench_dryrun.dry_run(big, inp)
            best["dicomprep"] = min(best.get("dicomprep", result), result, key=lambda r: r[1])
    base = best["bare"][1]
    print(f"dry run of {n_units} units, minimum of {repeats} interleaved runs (CPU seconds):")
    for name, (wall, cpu, jobs) in best.items():
        print(f"  {name:18s} {jobs:6d} jobs  {cpu:6.1f} s CPU  {wall:6.1f} s wall  {cpu / base:5.2f}x bare")


if __name__ == "__main__":
    main()
