"""unipipe: curate WSIs, pretrain a ViT with DINOv2, embed and evaluate as UNI did."""

from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/curate.smk"
include: "workflow/rules/pretrain.smk"
include: "workflow/rules/embed.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        get_final_outputs(),


onsuccess:
    if Path(f"{RESULTS}/report/index.html").exists():
        print(f"unipipe: report at {RESULTS}/report/index.html")


onerror:
    print("unipipe: some jobs failed; each job's log is under logs/<rule>/ (see above)")
