"""One job per encoder x task x protocol, from cached embeddings."""


rule evaluate:
    input:
        features=lambda w: f"{RESULTS}/embed/{w.encoder}/{w.task}/features.h5",
    output:
        metrics=f"{RESULTS}/eval/{{encoder}}/{{task}}/{{protocol}}/metrics.json",
        predictions=f"{RESULTS}/eval/{{encoder}}/{{task}}/{{protocol}}/predictions.parquet",
        sidecar=f"{RESULTS}/eval/{{encoder}}/{{task}}/{{protocol}}/evaluate.json",
    log:
        "logs/evaluate/{encoder}/{task}/{protocol}.log",
    benchmark:
        f"{RESULTS}/benchmarks/evaluate/{{encoder}}/{{task}}/{{protocol}}.tsv"
    conda:
        f"{ENVS}/eval.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        task=lambda w: task_spec(w.task),
        protocol_params=lambda w: protocol_params(w.protocol),
        seed=config["seed"],
    script:
        "../scripts/evaluate.py"
