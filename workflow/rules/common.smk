"""Config and manifest validation, shared paths and input functions."""

import importlib.util
import logging
import re
from pathlib import Path

import pandas as pd
import yaml
from snakemake.utils import validate

from unipipe.config import build_params
from unipipe.curate.artefacts import ArtefactParams
from unipipe.curate.selection import SelectionParams
from unipipe.curate.shards import ShardParams
from unipipe.curate.tiling import TilingParams
from unipipe.curate.tissue import TissueParams
from unipipe.embed.encoders import check_checkpoint_path
from unipipe.embed.tiles import WSI_TILE_FILES
from unipipe.errors import ConfigError
from unipipe.evaluate.protocols import PROTOCOLS
from unipipe.evaluate.run import BootstrapParams
from unipipe.evaluate.segmentation import SegProbeParams
from unipipe.evaluate.slide_manifest import MANIFEST_NAME, read_slide_manifest
from unipipe.evaluate.slides import SLIDE_PARAM_SECTIONS, SLIDE_PROTOCOLS, SLIDE_PROTOCOL_SECTIONS
from unipipe.evaluate.tasks import load_task_registry, task_status
from unipipe.ssl.config import PretrainConfig, check_curated_specs
from unipipe.manifest import read_manifest

_log = logging.getLogger("unipipe.workflow")

validate(config, schema="../schemas/config.schema.yaml")

RESULTS = config["results_dir"].rstrip("/")
if not RESULTS or Path(RESULTS).resolve() == Path(Path(RESULTS).resolve().anchor):
    # Every stage writes below it: the root would scatter curate/, train/, ... over it.
    raise ValueError(
        f"config results_dir is {config['results_dir']!r}, the filesystem root; "
        "set it to a folder such as results"
    )


def require_file(key, path):
    """Stop at start-up when a config key names a file that is not there."""
    if not Path(path).is_file():
        what = "is a folder" if Path(path).is_dir() else "does not exist"
        raise ValueError(f"config {key}: {path} {what}; point the key at an existing file")


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
    dataset="[A-Za-z0-9._-]+",
    protocol="[A-Za-z0-9._-]+",
    wsi="[A-Za-z0-9._-]+",


require_file("tasks", config["tasks"])
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


# Protocols each task level can run: ROI ones from the registry, slide ones from the slide
# stage, the segmentation probe alone. evaluate.protocols is filtered by these per task.
LEVEL_PROTOCOLS = {
    "roi": tuple(PROTOCOLS),
    "slide": tuple(SLIDE_PROTOCOLS),
    "segmentation": ("segmentation_probe",),
}


def eval_protocols(task_id):
    """The task's protocols, or those of evaluate.protocols its level can run."""
    wanted = config["evaluate"].get("protocols") or list(TASKS[task_id].protocols)
    return [p for p in wanted if p in LEVEL_PROTOCOLS[TASKS[task_id].level]]


def _ready_tasks():
    """Requested tasks whose data is present; the others are logged and shown in the report."""
    ready = []
    for task_id in config["evaluate"]["tasks"]:
        status, reason = task_status(TASKS[task_id])
        if status == "ready" and not eval_protocols(task_id):
            status = "skipped"
            reason = (
                f"none of evaluate.protocols applies to {TASKS[task_id].level}-level tasks "
                f"(those: {list(LEVEL_PROTOCOLS[TASKS[task_id].level])})"
            )
        if status == "ready":
            ready.append(task_id)
        else:
            _log.warning("task %r skipped: %s", task_id, reason)
    return ready


READY_TASKS = _ready_tasks()


def task_ids(level):
    """Wildcard pattern of the registry's task ids of one level (never matches when none)."""
    ids = [re.escape(t) for t, task in TASKS.items() if task.level == level]
    return "|".join(ids) if ids else "(?!)"


for _name in config["evaluate"]["encoders"]:
    if _name not in config["encoders"]:
        raise ValueError(
            f"config evaluate.encoders names {_name!r}, which is not under `encoders:`; "
            f"defined: {sorted(config['encoders'])}"
        )
    if _name == "tiles":
        # results/embed/tiles/ holds the tile tables of slide-task WSIs.
        raise ValueError("config encoders: the name 'tiles' is reserved; rename that encoder")


def _read_slide_tables():
    """Each ready slide task's slides.csv, checked for every evaluated encoder's bags.

    A bad manifest (missing column or file, a case in two splits, a label or split value
    the task does not use, a class without training slides, one test class) stops the run
    here, naming the CSV and the line, before any slide is embedded.
    """
    tables = {}
    for task_id in READY_TASKS:
        if TASKS[task_id].level != "slide":
            continue
        csv = Path(TASKS[task_id].path) / MANIFEST_NAME
        for encoder in config["evaluate"]["encoders"]:
            read_slide_manifest(csv, encoder=encoder)
        task = TASKS[task_id]
        table = read_slide_manifest(csv, classes=task.classes, split=task.split)
        tables[task_id] = table.set_index("slide_id", drop=False)
    return tables


SLIDE_TABLES = _read_slide_tables()


def slide_table(task_id):
    """The checked slides.csv of a ready slide task; a target of a skipped one says why."""
    if task_id not in SLIDE_TABLES:
        status, reason = task_status(TASKS[task_id])
        if task_id not in config["evaluate"]["tasks"]:
            reason = "it is not in config evaluate.tasks; add it there to evaluate it"
        elif status == "ready":
            reason = f"none of evaluate.protocols applies to {TASKS[task_id].level}-level tasks"
        raise ValueError(f"task {task_id!r} is skipped, so it has no outputs: {reason}")
    return SLIDE_TABLES[task_id]


def _check_evaluate_params():
    """Refuse unknown protocols and protocol parameters before any job runs."""
    params = config["evaluate"].get("params") or {}
    known = [p for level in LEVEL_PROTOCOLS.values() for p in level]
    for name in config["evaluate"].get("protocols") or []:
        if name not in known:
            raise ValueError(
                f"config evaluate.protocols names {name!r}; known protocols: {sorted(known)}"
            )
    for name, section in params.items():
        if name not in PARAM_SECTIONS:
            raise ValueError(
                f"config evaluate.params has {name!r}, which is no protocol; "
                f"known: {sorted(PARAM_SECTIONS)}"
            )
        build_params(PARAM_SECTIONS[name], section, f"evaluate.params.{name}")


# evaluate.params section -> the dataclass its job builds; all are built once here.
PARAM_SECTIONS = {
    **{name: protocol.params_cls for name, protocol in PROTOCOLS.items()},
    **SLIDE_PARAM_SECTIONS,
    "segmentation_probe": SegProbeParams,
    "bootstrap": BootstrapParams,
}
_check_evaluate_params()
# The recipe and its overrides are resolved now, so a typo fails here, not after curation.
require_file("pretrain.config", config["pretrain"]["config"])
PRETRAIN_RECIPE = PretrainConfig.from_yaml(
    config["pretrain"]["config"], config["pretrain"].get("overrides")
)
# curate.* section -> the dataclass its curation jobs build; built here too, so a bad value
# stops the run at start-up instead of failing in every slide's job.
CURATE_PARAM_SECTIONS = {
    "tissue": TissueParams,
    "artefacts": ArtefactParams,
    "tiling": TilingParams,
    "selection": SelectionParams,
    "shards": ShardParams,
}
CURATE_PARAMS = {
    _section: build_params(_cls, config["curate"][_section], f"curate.{_section}")
    for _section, _cls in CURATE_PARAM_SECTIONS.items()
}
# Pretraining checks its tile specs against the shards too, but only once every slide is
# curated; a spec this curation does not cut is known now.
try:
    check_curated_specs(PRETRAIN_RECIPE, CURATE_PARAMS["tiling"].specs)
except ConfigError as err:
    raise ConfigError(
        f"recipe {config['pretrain']['config']} (pretrain.config, pretrain.overrides) "
        f"against curate.tiling.specs: {err}"
    ) from err


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


def check_encoder_files(name):
    """Refuse an encoder whose files are missing and that this workflow does not make.

    Only cheap checks (the file is there); whether a checkpoint loads into its arch is
    checked by the embedding job, which reads it anyway.
    """
    spec = config["encoders"][name]
    if spec["kind"] == "checkpoint":
        check_checkpoint_path(name, spec["path"])
    elif spec["kind"] == "random" and "pretrain_config" in spec:
        require_file(f"encoders.{name}.pretrain_config", spec["pretrain_config"])
    elif spec["kind"] == "pretrained" and "encoder_json" in spec:
        if Path(spec["encoder_json"]) != Path(f"{RESULTS}/train/{PRETRAIN_RUN}/encoder.json"):
            require_file(f"encoders.{name}.encoder_json", spec["encoder_json"])
    elif spec["kind"] == "pretrained" and spec["run"] != PRETRAIN_RUN:
        json_path = f"{RESULTS}/train/{spec['run']}/encoder.json"
        if not Path(json_path).is_file():
            raise ValueError(
                f"config encoders.{name}.run is {spec['run']!r}, but this workflow trains "
                f"pretrain.run {PRETRAIN_RUN!r} and {json_path} does not exist; set run: "
                f"{PRETRAIN_RUN}, train that run first (pretrain.run: {spec['run']}), or "
                "give encoder_json"
            )


def get_encoder_inputs(wildcards):
    check_encoder_files(wildcards.encoder)
    spec = encoder_spec(wildcards.encoder)
    files = [spec["encoder_json"]] if spec["kind"] == "pretrained" else []
    if spec["kind"] == "checkpoint":
        files.append(spec["path"])
    return files


for _name in config["evaluate"]["encoders"]:
    check_encoder_files(_name)


def task_spec(task_id):
    return TASKS[task_id].as_spec()


def protocol_params(protocol):
    """This protocol's parameters and the bootstrap's: a change elsewhere reruns nothing here."""
    params = config["evaluate"].get("params") or {}
    return {protocol: params.get(protocol) or {}, "bootstrap": params.get("bootstrap") or {}}


def slide_protocol_params(protocol):
    """A slide protocol's parameters, the validation hold-out's and the bootstrap's."""
    params = config["evaluate"].get("params") or {}
    return {
        **{name: params.get(name) or {} for name in SLIDE_PROTOCOL_SECTIONS[protocol]},
        "slides": params.get("slides") or {},
        "bootstrap": params.get("bootstrap") or {},
    }


def slide_task_wsis(task_id):
    """Slide ids of a slide task's rows that name a WSI (embedded by this workflow)."""
    table = slide_table(task_id)
    return sorted(table.index[table["slide_path"] != ""])


def wsi_row(wildcards):
    """slides.csv row of one WSI of a slide task."""
    if wildcards.wsi not in slide_task_wsis(wildcards.task):
        raise ValueError(
            f"{wildcards.wsi!r} is no slide_path row of task {wildcards.task!r} "
            f"({Path(TASKS[wildcards.task].path) / MANIFEST_NAME})"
        )
    return slide_table(wildcards.task).loc[wildcards.wsi]


def wsi_mpp(wildcards):
    """The slides.csv mpp of a WSI, or None to use the file's metadata."""
    mpp = wsi_row(wildcards)["mpp"]
    return None if pd.isna(mpp) else float(mpp)


def slide_bags(encoder, task_id):
    """slide_id -> this encoder's bag: embedded by embed_slide or prebuilt (features_h5)."""
    table = slide_table(task_id)
    bags = {}
    for slide_id, row in table.iterrows():
        if row["slide_path"]:
            bags[slide_id] = f"{RESULTS}/embed/{encoder}/{task_id}/slides/{slide_id}.h5"
        else:
            bags[slide_id] = row["features_h5"].replace("{encoder}", encoder)
    return bags


def get_slide_bags(wildcards):
    return list(slide_bags(wildcards.encoder, wildcards.task).values())


def heatmap_slides(task_id):
    """slide_id -> (WSI path or None, mpp or None): the thumbnails heatmaps are drawn on."""
    table = slide_table(task_id)
    return {
        slide_id: (row["slide_path"] or None, None if pd.isna(row["mpp"]) else float(row["mpp"]))
        for slide_id, row in table.iterrows()
    }


# Heatmap images come from unipipe.report.heatmaps; without it only heatmaps.parquet is made.
HEATMAPS = importlib.util.find_spec("unipipe.report.heatmaps") is not None


def get_eval_targets():
    """metrics.json of every ready task x evaluated encoder x protocol (the report's input)."""
    return [
        f"{RESULTS}/eval/{encoder}/{task}/{protocol}/metrics.json"
        for task in READY_TASKS
        for encoder in config["evaluate"]["encoders"]
        for protocol in eval_protocols(task)
    ]


def get_heatmap_targets():
    """Heatmap folders of every slide task x encoder x protocol (none without the renderer)."""
    if not HEATMAPS:
        return []
    return [
        f"{RESULTS}/eval/{encoder}/{task}/{protocol}/heatmaps"
        for task in READY_TASKS
        if TASKS[task].level == "slide"
        for encoder in config["evaluate"]["encoders"]
        for protocol in eval_protocols(task)
    ]


def get_final_outputs():
    return [
        f"{RESULTS}/shards/index.parquet",
        f"{TRAIN_DIR}/encoder.json",
        *get_eval_targets(),
        *get_heatmap_targets(),
        f"{RESULTS}/report/index.html",
    ]
