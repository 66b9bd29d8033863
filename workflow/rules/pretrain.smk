"""DINOv2 self-distillation on the shards; exports the teacher backbone as the encoder."""


rule pretrain:
    input:
        index=rules.build_dataset.output.index,
        config=config["pretrain"]["config"],
    output:
        weights=f"{TRAIN_DIR}/encoder.safetensors",
        encoder=f"{TRAIN_DIR}/encoder.json",
        metrics=f"{TRAIN_DIR}/metrics.csv",
        sidecar=f"{TRAIN_DIR}/pretrain.json",
    log:
        f"logs/pretrain/{PRETRAIN_RUN}.log",
    benchmark:
        f"{RESULTS}/benchmarks/pretrain/{PRETRAIN_RUN}.tsv"
    conda:
        f"{ENVS}/train.yaml"
    threads: config["pretrain"]["threads"]
    resources:
        mem_mb=config["pretrain"]["mem_mb"],
        runtime=config["pretrain"]["runtime_min"],
        gpu=config["pretrain"]["gpus"],
    params:
        # Checkpoints are not a declared output: Snakemake would delete them before a
        # rerun, and they are what a requeued or interrupted job resumes from.
        out_dir=lambda w, output: str(Path(output.encoder).parent),
        overrides=config["pretrain"].get("overrides") or {},
        seed=config["seed"],
    script:
        "../scripts/pretrain.py"
