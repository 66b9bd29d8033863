"""One job per encoder x task x protocol, from cached embeddings."""


rule evaluate:
    input:
        features=lambda w: f"{RESULTS}/embed/{w.encoder}/{w.task}/features.h5",
    output:
        metrics=f"{RESULTS}/eval/{{encoder}}/{{task}}/{{protocol}}/metrics.json",
        predictions=f"{RESULTS}/eval/{{encoder}}/{{task}}/{{protocol}}/predictions.parquet",
        sidecar=f"{RESULTS}/eval/{{encoder}}/{{task}}/{{protocol}}/evaluate.json",
    params:
        task=lambda w: TASKS[w.task],
        protocol_params=lambda w: config["evaluate"]["params"].get(w.protocol, {}),
        seed=config["seed"],
    log:
        "logs/evaluate/{encoder}/{task}/{protocol}.log",
    benchmark:
        f"{RESULTS}/benchmarks/evaluate/{{encoder}}/{{task}}/{{protocol}}.tsv"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        f"{ENVS}/eval.yaml"
    script:
        "../scripts/evaluate.py"
