"""unipipe: curate WSIs, pretrain a ViT with DINOv2, embed and evaluate as UNI did."""

import time

from snakemake.utils import min_version

min_version("9.0")

# Wall-clock start of this invocation: onsuccess tells a rebuilt report from an old one.
START_TIME = time.time()


configfile: "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/curate.smk"
include: "workflow/rules/pretrain.smk"
include: "workflow/rules/embed.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/compare.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        get_final_outputs(),


onsuccess:
    _report = Path(f"{RESULTS}/report/index.html")
    if _report.exists():
        _fresh = _report.stat().st_mtime >= START_TIME
        _state = "written by this run" if _fresh else "from an earlier run, not rebuilt now"
        print(f"unipipe: report at {_report} ({_state})")


onerror:
    print("unipipe: some jobs failed; each job's log is under logs/<rule>/ (see above)")
