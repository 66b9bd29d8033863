"""The run's report: metric table, curation previews, training curve, heatmaps, comparisons."""


rule report:
    input:
        metrics=get_eval_targets(),
        compare=COMPARE_TARGETS,
        # Not read by name: run_report finds the JPEGs beside each metrics.json.
        heatmaps=get_heatmap_targets(),
        curation=expand(
            f"{RESULTS}/curate/{{slide}}/{{name}}",
            slide=SLIDES.index,
            name=["tissue_preview.jpg", "artefacts_preview.jpg", "mosaic.jpg"],
        ),
        train_metrics=rules.pretrain.output.metrics,
        tasks=config["tasks"],
    output:
        summary=f"{RESULTS}/report/summary.csv",
        html=f"{RESULTS}/report/index.html",
        sidecar=f"{RESULTS}/report/sidecar.json",
    log:
        "logs/report/report.log",
    benchmark:
        f"{RESULTS}/benchmarks/report/report.tsv"
    conda:
        f"{ENVS}/eval.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        curate_dirs=lambda w, input: sorted({str(Path(p).parent) for p in input.curation}),
        out_dir=lambda w, output: str(Path(output.html).parent),
        data_root=config["evaluate"].get("data_root", "."),
    script:
        "../scripts/report.py"
