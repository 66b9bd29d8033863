"""One job per encoder x task x protocol, from cached embeddings (ROI, slide, segmentation)."""


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
    wildcard_constraints:
        task=task_ids("roi"),
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


# images: one heatmap JPEG per test slide, declared as a folder so that a failed job leaves
# none of it behind (only when unipipe.report.heatmaps is installed).
rule evaluate_slides:
    input:
        manifest=lambda w: f"{TASKS[w.task].path}/{MANIFEST_NAME}",
        bags=get_slide_bags,
    output:
        **(
            {"images": directory(f"{RESULTS}/eval/{{encoder}}/{{task}}/{{protocol}}/heatmaps")}
            if HEATMAPS
            else {}
        ),
        metrics=f"{RESULTS}/eval/{{encoder}}/{{task}}/{{protocol}}/metrics.json",
        predictions=f"{RESULTS}/eval/{{encoder}}/{{task}}/{{protocol}}/predictions.parquet",
        heatmaps=f"{RESULTS}/eval/{{encoder}}/{{task}}/{{protocol}}/heatmaps.parquet",
        sidecar=f"{RESULTS}/eval/{{encoder}}/{{task}}/{{protocol}}/evaluate.json",
    log:
        "logs/evaluate_slides/{encoder}/{task}/{protocol}.log",
    benchmark:
        f"{RESULTS}/benchmarks/evaluate_slides/{{encoder}}/{{task}}/{{protocol}}.tsv"
    wildcard_constraints:
        task=task_ids("slide"),
        protocol="|".join(LEVEL_PROTOCOLS["slide"]),
    conda:
        f"{ENVS}/eval.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        task=lambda w: task_spec(w.task),
        protocol_params=lambda w: slide_protocol_params(w.protocol),
        seed=config["seed"],
        bags=lambda w: {s: slide_bags(w.encoder, w.task)[s] for s in slide_task_wsis(w.task)},
        heatmap_slides=lambda w: heatmap_slides(w.task),
    script:
        "../scripts/evaluate_slides.py"


rule evaluate_segmentation:
    input:
        encoder=get_encoder_inputs,
        data=lambda w: TASKS[w.task].path,
    output:
        metrics=f"{RESULTS}/eval/{{encoder}}/{{task}}/segmentation_probe/metrics.json",
        sidecar=f"{RESULTS}/eval/{{encoder}}/{{task}}/segmentation_probe/evaluate.json",
    log:
        "logs/evaluate_segmentation/{encoder}/{task}.log",
    benchmark:
        f"{RESULTS}/benchmarks/evaluate_segmentation/{{encoder}}/{{task}}.tsv"
    wildcard_constraints:
        task=task_ids("segmentation"),
    conda:
        f"{ENVS}/eval.yaml"
    threads: config["embed"]["threads"]
    resources:
        mem_mb=8000,
        runtime=60,
    params:
        task=lambda w: task_spec(w.task),
        encoder_spec=lambda w: encoder_spec(w.encoder),
        protocol_params=lambda w: protocol_params("segmentation_probe"),
        seed=config["seed"],
    script:
        "../scripts/evaluate_segmentation.py"
