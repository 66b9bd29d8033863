"""Embedding ROI datasets with each configured encoder (features as h5)."""


rule embed_rois:
    input:
        encoder=get_encoder_inputs,
        data=lambda w: [TASKS[w.dataset].path] if Path(TASKS[w.dataset].path).exists() else [],
    output:
        features=f"{RESULTS}/embed/{{encoder}}/{{dataset}}/features.h5",
        sidecar=f"{RESULTS}/embed/{{encoder}}/{{dataset}}/embed_rois.json",
    log:
        "logs/embed_rois/{encoder}/{dataset}.log",
    benchmark:
        f"{RESULTS}/benchmarks/embed_rois/{{encoder}}/{{dataset}}.tsv"
    conda:
        f"{ENVS}/train.yaml"
    threads: config["embed"]["threads"]
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        dataset=lambda w: task_spec(w.dataset),
        encoder_spec=lambda w: encoder_spec(w.encoder),
        embed=config["embed"],
    script:
        "../scripts/embed_rois.py"
