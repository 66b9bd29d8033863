"""Curation, one job chain per slide: tissue, artefacts, tiles, clustered selection, shards."""


rule segment_tissue:
    input:
        slide=get_slide_input,
    output:
        mask=f"{RESULTS}/curate/{{slide}}/tissue.png",
        geojson=f"{RESULTS}/curate/{{slide}}/tissue.geojson",
        preview=f"{RESULTS}/curate/{{slide}}/tissue_preview.jpg",
        sidecar=f"{RESULTS}/curate/{{slide}}/segment_tissue.json",
    log:
        "logs/segment_tissue/{slide}.log",
    benchmark:
        f"{RESULTS}/benchmarks/segment_tissue/{{slide}}.tsv"
    group:
        CURATE_GROUP
    conda:
        f"{ENVS}/curate.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=20,
    params:
        slide_path=lambda w: slide_row(w)["path"],
        mpp=slide_mpp,
        tissue=config["curate"]["tissue"],
    script:
        "../scripts/segment_tissue.py"


rule detect_artefacts:
    input:
        slide=get_slide_input,
        tissue=rules.segment_tissue.output.mask,
    output:
        mask=f"{RESULTS}/curate/{{slide}}/artefacts.png",
        qc=f"{RESULTS}/curate/{{slide}}/qc.json",
        preview=f"{RESULTS}/curate/{{slide}}/artefacts_preview.jpg",
        sidecar=f"{RESULTS}/curate/{{slide}}/detect_artefacts.json",
    log:
        "logs/detect_artefacts/{slide}.log",
    benchmark:
        f"{RESULTS}/benchmarks/detect_artefacts/{{slide}}.tsv"
    group:
        CURATE_GROUP
    conda:
        f"{ENVS}/curate.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=20,
    params:
        slide_path=lambda w: slide_row(w)["path"],
        mpp=slide_mpp,
        artefacts=config["curate"]["artefacts"],
    script:
        "../scripts/detect_artefacts.py"


rule tile_slide:
    input:
        slide=get_slide_input,
        tissue=rules.segment_tissue.output.mask,
        artefacts=rules.detect_artefacts.output.mask,
    output:
        tiles=f"{RESULTS}/curate/{{slide}}/tiles.parquet",
        sidecar=f"{RESULTS}/curate/{{slide}}/tile_slide.json",
    log:
        "logs/tile_slide/{slide}.log",
    benchmark:
        f"{RESULTS}/benchmarks/tile_slide/{{slide}}.tsv"
    group:
        CURATE_GROUP
    conda:
        f"{ENVS}/curate.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=60,
    params:
        slide_path=lambda w: slide_row(w)["path"],
        mpp=slide_mpp,
        tiling=config["curate"]["tiling"],
        # Selection's features are computed in tile_slide's read of each tile.
        feature_size_px=config["curate"]["selection"]["feature_size_px"],
    script:
        "../scripts/tile_slide.py"


rule select_patches:
    input:
        slide=get_slide_input,
        tiles=rules.tile_slide.output.tiles,
    output:
        selected=f"{RESULTS}/curate/{{slide}}/selected.parquet",
        mosaic=f"{RESULTS}/curate/{{slide}}/mosaic.jpg",
        sidecar=f"{RESULTS}/curate/{{slide}}/select_patches.json",
    log:
        "logs/select_patches/{slide}.log",
    benchmark:
        f"{RESULTS}/benchmarks/select_patches/{{slide}}.tsv"
    group:
        CURATE_GROUP
    conda:
        f"{ENVS}/curate.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    params:
        slide_path=lambda w: slide_row(w)["path"],
        mpp=slide_mpp,
        selection=config["curate"]["selection"],
        seed=config["seed"],
    script:
        "../scripts/select_patches.py"


rule write_shards:
    input:
        slide=get_slide_input,
        selected=rules.select_patches.output.selected,
    output:
        # The store's root metadata stands for the store: a directory() output would get
        # a foreign .snakemake_timestamp file inside it. The store is written under a
        # temporary name and renamed whole, so zarr.json appears only with a complete store.
        shard=f"{RESULTS}/shards/{{slide}}.zarr/zarr.json",
        # Beside the other per-slide sidecars: under shards/ a slide named like a run-level
        # output (build_dataset) would make two rules claim one file.
        sidecar=f"{RESULTS}/curate/{{slide}}/write_shards.json",
    log:
        "logs/write_shards/{slide}.log",
    benchmark:
        f"{RESULTS}/benchmarks/write_shards/{{slide}}.tsv"
    group:
        CURATE_GROUP
    conda:
        f"{ENVS}/curate.yaml"
    threads: 1
    resources:
        mem_mb=3000,
        runtime=60,
    params:
        slide_path=lambda w: slide_row(w)["path"],
        mpp=slide_mpp,
        shards=config["curate"]["shards"],
        tissue_type=lambda w: slide_text(w, "tissue_type"),
    script:
        "../scripts/write_shards.py"


rule build_dataset:
    input:
        shards=expand(rules.write_shards.output.shard, slide=SLIDES.index),
    output:
        index=f"{RESULTS}/shards/index.parquet",
        summary=f"{RESULTS}/shards/summary.png",
        sidecar=f"{RESULTS}/shards/build_dataset.json",
    log:
        "logs/build_dataset/build_dataset.log",
    benchmark:
        f"{RESULTS}/benchmarks/build_dataset/build_dataset.tsv"
    conda:
        f"{ENVS}/curate.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    script:
        "../scripts/build_dataset.py"
