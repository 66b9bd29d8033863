"""Config and manifest validation, shared paths and input functions."""

import logging
from pathlib import Path

import pandas as pd
import yaml
from snakemake.utils import validate

from unipipe.config import build_params
from unipipe.evaluate.protocols import PROTOCOLS
from unipipe.evaluate.run import BootstrapParams
from unipipe.evaluate.tasks import load_task_registry, task_status
from unipipe.ssl.config import PretrainConfig
from unipipe.manifest import read_manifest

_log = logging.getLogger("unipipe.workflow")

validate(config, schema="../schemas/config.schema.yaml")

RESULTS = config["results_dir"].rstrip("/")
ENVS = "../../envs"


SLIDES = read_manifest(config["slides"])
# The checks above are explicit; the schema documents the same columns for other tools.
validate(
    SLIDES.assign(mpp=SLIDES["mpp"].astype(object).where(SLIDES["mpp"].notna(), None)),
    schema="../schemas/slides.schema.yaml",
)

for _sid, _row in SLIDES.iterrows():
    if not Path(_row["path"]).exists():
        # Not fatal here: that slide's own jobs fail with the fix, the rest run (--keep-going).
        _log.warning(
            "slide %r: %s does not exist; fix the path column of %s",
            _sid,
            _row["path"],
            config["slides"],
        )


wildcard_constraints:
    slide="|".join(map(str, SLIDES.index)) if len(SLIDES) else "[^/]+",
    encoder="[A-Za-z0-9._-]+",
    task="[A-Za-z0-9._-]+",
    protocol="[A-Za-z0-9._-]+",


TASKS = {
    task.id: task
    for task in load_task_registry(config["tasks"], config["evaluate"].get("data_root", "."))
}

for _tid in config["evaluate"]["tasks"]:
    if _tid not in TASKS:
        raise ValueError(
            f"config evaluate.tasks names {_tid!r}, which is not in {config['tasks']}; "
            f"known tasks: {sorted(TASKS)}"
        )


def _ready_tasks():
    """Requested tasks whose data is present; the others are logged and shown in the report."""
    ready = []
    for task_id in config["evaluate"]["tasks"]:
        status, reason = task_status(TASKS[task_id])
        if status == "ready" and TASKS[task_id].level != "roi":
            # The library evaluates slide and segmentation tasks; the rules do not yet.
            status, reason = "skipped", f"{TASKS[task_id].level}-level tasks have no rules yet"
        if status == "ready":
            ready.append(task_id)
        else:
            _log.warning("task %r skipped: %s", task_id, reason)
    return ready


READY_TASKS = _ready_tasks()


for _name in config["evaluate"]["encoders"]:
    if _name not in config["encoders"]:
        raise ValueError(
            f"config evaluate.encoders names {_name!r}, which is not under `encoders:`; "
            f"defined: {sorted(config['encoders'])}"
        )


def _check_evaluate_params():
    """Refuse unknown protocols and protocol parameters before any job runs."""
    params = config["evaluate"].get("params") or {}
    for name in config["evaluate"].get("protocols") or []:
        if name not in PROTOCOLS:
            raise ValueError(
                f"config evaluate.protocols names {name!r}; known protocols: {sorted(PROTOCOLS)}"
            )
    for name, section in params.items():
        if name == "bootstrap":
            build_params(BootstrapParams, section, "evaluate.params.bootstrap")
        elif name in PROTOCOLS:
            build_params(PROTOCOLS[name].params_cls, section, f"evaluate.params.{name}")
        elif name not in SLIDE_LEVEL_PARAMS:
            raise ValueError(
                f"config evaluate.params has {name!r}, which is no protocol; "
                f"known: {sorted([*PROTOCOLS, 'bootstrap', *SLIDE_LEVEL_PARAMS])}"
            )


# Sections read by the library's slide-level and segmentation evaluation (no rules yet).
SLIDE_LEVEL_PARAMS = ("abmil", "mi_simpleshot", "slides", "segmentation_probe")
_check_evaluate_params()
# The recipe and its overrides are resolved now, so a typo fails here, not after curation.
PretrainConfig.from_yaml(config["pretrain"]["config"], config["pretrain"].get("overrides"))


def slide_row(wildcards):
    return SLIDES.loc[wildcards.slide]


def slide_mpp(wildcards):
    """The manifest's mpp override for a slide, or None to use the file's metadata."""
    mpp = SLIDES.loc[wildcards.slide].get("mpp")
    return None if pd.isna(mpp) else float(mpp)


def slide_text(wildcards, column):
    """A free-text manifest column of a slide, or "" when absent."""
    value = SLIDES.loc[wildcards.slide].get(column)
    return "" if value is None or pd.isna(value) else str(value)


def get_slide_input(wildcards):
    """The slide file as a job input, so a changed slide reruns its chain.

    A missing path is left out of the inputs: the job then runs and fails with a message
    naming the slide and the fix, instead of Snakemake refusing the whole DAG.
    """
    path = SLIDES.loc[wildcards.slide, "path"]
    return [path] if Path(path).exists() else []


CURATE_GROUP = "curate_slide" if config["execution"]["group_curation"] else None

PRETRAIN_RUN = config["pretrain"]["run"]
TRAIN_DIR = f"{RESULTS}/train/{PRETRAIN_RUN}"


def encoder_spec(name):
    """The encoder's config entry with run names turned into encoder.json paths."""
    spec = dict(config["encoders"][name])
    if spec["kind"] == "pretrained" and "run" in spec:
        spec["encoder_json"] = f"{RESULTS}/train/{spec.pop('run')}/encoder.json"
    if spec["kind"] == "random" and "pretrain_config" in spec:
        # The baseline is the architecture a recipe trains, at random init.
        with open(spec.pop("pretrain_config")) as fh:
            model = yaml.safe_load(fh)["model"]
        spec = {
            "arch": model["arch"],
            "kwargs": dict(model.get("kwargs") or {}),
            "mean": model["mean"],
            "std": model["std"],
            **spec,
        }
    return spec


def get_encoder_inputs(wildcards):
    spec = encoder_spec(wildcards.encoder)
    files = [spec["encoder_json"]] if spec["kind"] == "pretrained" else []
    if spec["kind"] == "checkpoint":
        files.append(spec["path"])
    return files


def task_spec(task_id):
    return TASKS[task_id].as_spec()


def protocol_params(protocol):
    """This protocol's parameters and the bootstrap's: a change elsewhere reruns nothing here."""
    params = config["evaluate"].get("params") or {}
    return {protocol: params.get(protocol) or {}, "bootstrap": params.get("bootstrap") or {}}


def eval_protocols(task_id):
    return config["evaluate"].get("protocols") or list(TASKS[task_id].protocols)


def get_eval_targets():
    return [
        f"{RESULTS}/eval/{encoder}/{task}/{protocol}/metrics.json"
        for task in READY_TASKS
        for encoder in config["evaluate"]["encoders"]
        for protocol in eval_protocols(task)
    ]


def get_final_outputs():
    return [
        f"{RESULTS}/shards/index.parquet",
        f"{TRAIN_DIR}/encoder.json",
        *get_eval_targets(),
        f"{RESULTS}/report/index.html",
    ]
