"""The compare_encoders rule in the DAG: which encoder pairs and protocols are planned."""

from __future__ import annotations

import re

from tests.workflow.dag import TEST_SLIDES, make_workdir, snakemake


def _planned_comparisons(proc) -> list[str]:
    """Output paths of the compare_encoders jobs a dry run plans, sorted."""
    text = proc.stdout + proc.stderr
    return sorted(set(re.findall(r"results/eval/compare/\S+?\.json", text)))


def test_compare_dag_pairs_and_protocols(tmp_path):
    """The demo's two encoders are compared once, on protocols with per-sample predictions."""
    workdir = make_workdir(tmp_path / "run", TEST_SLIDES)
    proc = snakemake(workdir, "-n")
    assert _planned_comparisons(proc) == [
        f"results/eval/compare/tcga_luadlusc_demo/{p}/dino_demo__vs__random_init.json"
        for p in ("knn", "linear", "simpleshot")
    ]


def test_compare_dag_refuses_reserved_encoder_name(tmp_path):
    """An encoder called `compare` would share results/eval/compare/; start-up refuses it."""
    workdir = make_workdir(tmp_path / "run", TEST_SLIDES)
    config = tmp_path / "encoders.yaml"
    config.write_text("encoders:\n  compare: {kind: random, pretrain_config: "
                      "config/pretrain/tiny_cpu.yaml}\nevaluate:\n"
                      "  encoders: [compare, random_init]\n")  # fmt: skip
    proc = snakemake(workdir, "-n", configfiles=(config,), check=False)
    assert proc.returncode != 0
    assert "the name 'compare' is reserved" in proc.stdout + proc.stderr
