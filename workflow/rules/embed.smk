"""Embedding with each configured encoder: ROI datasets (features.h5) and slide-task WSIs (bags)."""


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


rule tile_eval_slide:
    input:
        slide=lambda w: wsi_row(w)["slide_path"],
    output:
        **{
            role: f"{RESULTS}/embed/tiles/{{task}}/{{wsi}}/{name}"
            for role, name in WSI_TILE_FILES.items()
        },
    log:
        "logs/tile_eval_slide/{task}/{wsi}.log",
    benchmark:
        f"{RESULTS}/benchmarks/tile_eval_slide/{{task}}/{{wsi}}.tsv"
    conda:
        f"{ENVS}/curate.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=60,
    params:
        mpp=wsi_mpp,
        tissue=config["curate"]["tissue"],
        artefacts=config["curate"]["artefacts"],
        tiling=config["curate"]["tiling"],
    script:
        "../scripts/tile_eval_slide.py"


rule embed_slide:
    input:
        encoder=get_encoder_inputs,
        slide=lambda w: wsi_row(w)["slide_path"],
        tiles=rules.tile_eval_slide.output.tiles,
    output:
        bag=f"{RESULTS}/embed/{{encoder}}/{{task}}/slides/{{wsi}}.h5",
        sidecar=f"{RESULTS}/embed/{{encoder}}/{{task}}/slides/{{wsi}}.json",
    log:
        "logs/embed_slide/{encoder}/{task}/{wsi}.log",
    benchmark:
        f"{RESULTS}/benchmarks/embed_slide/{{encoder}}/{{task}}/{{wsi}}.tsv"
    conda:
        f"{ENVS}/train.yaml"
    threads: config["embed"]["threads"]
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        mpp=wsi_mpp,
        encoder_spec=lambda w: encoder_spec(w.encoder),
        embed=config["embed"],
    script:
        "../scripts/embed_slide.py"
