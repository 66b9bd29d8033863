"""The run's report: metric table, curation previews, training curve."""


rule report:
    input:
        metrics=get_eval_targets(),
        curation=expand(
            f"{RESULTS}/curate/{{slide}}/{{name}}",
            slide=SLIDES.index,
            name=["tissue_preview.jpg", "artefacts_preview.jpg", "mosaic.jpg"],
        ),
        train_metrics=rules.pretrain.output.metrics,
    output:
        summary=f"{RESULTS}/report/summary.csv",
        html=f"{RESULTS}/report/index.html",
    params:
        curate_dirs=[curate_dir(slide) for slide in SLIDES.index],
        out_dir=f"{RESULTS}/report",
    log:
        "logs/report/report.log",
    benchmark:
        f"{RESULTS}/benchmarks/report/report.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        f"{ENVS}/eval.yaml"
    script:
        "../scripts/report.py"
