"""DINOv2 self-distillation on the shards; exports the teacher backbone as the encoder."""

import json
import sys

from snakemake_interface_executor_plugins.settings import DeploymentMethod

from unipipe.ssl.cli import launch_command

# The interpreter, chosen as Snakemake's script: directive chooses it: the rule's conda
# environment when conda deploys software, else the one running Snakemake (a venv's
# snakemake is often started without the venv on PATH).
PRETRAIN_PYTHON = (
    "python"
    if DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method
    else sys.executable
)


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
        overrides=json.dumps(config["pretrain"].get("overrides") or {}),
        seed=config["seed"],
        # The interpreter, under `srun --nodes=N --ntasks-per-node=G ...` when the profile
        # sets resource mpi (one task per GPU); see unipipe.ssl.cli.launch_command. A
        # function of resources, so where and on how many tasks it runs is no rerun trigger.
        launch=lambda w, threads, resources: launch_command(
            resources, threads=threads, python=PRETRAIN_PYTHON
        ),
    shell:
        "{params.launch} -m unipipe.ssl.cli --index {input.index:q} --config {input.config:q}"
        " --overrides {params.overrides:q} --out-dir {params.out_dir:q}"
        " --encoder-safetensors {output.weights:q} --encoder-json {output.encoder:q}"
        " --metrics-csv {output.metrics:q} --sidecar {output.sidecar:q}"
        " --seed {params.seed} --threads {threads} --log {log:q}"
