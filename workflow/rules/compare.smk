"""Paired permutation tests between every two evaluated encoders on the same task."""

import re

from unipipe.report.compare import COMPARABLE_PROTOCOLS, comparison_paths

if "compare" in config["evaluate"]["encoders"]:
    # results/eval/compare/ holds the comparisons.
    raise ValueError("config encoders: the name 'compare' is reserved; rename that encoder")

# Encoder names joined by "__vs__": the wildcards match only evaluated encoders, so a name
# that itself contains "__vs__" cannot split two ways.
_COMPARED = "|".join(map(re.escape, sorted(config["evaluate"]["encoders"])))

# The report's input: every ready task x comparable protocol x encoder pair (a < b by name).
COMPARE_TARGETS = comparison_paths(
    RESULTS, {task: eval_protocols(task) for task in READY_TASKS}, config["evaluate"]["encoders"]
)


rule compare_encoders:
    input:
        a=f"{RESULTS}/eval/{{a}}/{{task}}/{{protocol}}/predictions.parquet",
        b=f"{RESULTS}/eval/{{b}}/{{task}}/{{protocol}}/predictions.parquet",
    output:
        f"{RESULTS}/eval/compare/{{task}}/{{protocol}}/{{a}}__vs__{{b}}.json",
    log:
        "logs/compare_encoders/{task}/{protocol}/{a}__vs__{b}.log",
    benchmark:
        f"{RESULTS}/benchmarks/compare_encoders/{{task}}/{{protocol}}/{{a}}__vs__{{b}}.tsv"
    wildcard_constraints:
        a=_COMPARED,
        b=_COMPARED,
        protocol="|".join(COMPARABLE_PROTOCOLS),
    conda:
        f"{ENVS}/eval.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        # The headline metric of the task is the one tested.
        metric=lambda w: TASKS[w.task].metrics[0],
        n_permutations=(config["evaluate"].get("compare") or {}).get("n_permutations", 1000),
        seed=config["seed"],
    script:
        "../scripts/compare_encoders.py"
