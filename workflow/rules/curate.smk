"""Curation, one job chain per slide: tissue, artefacts, tiles, clustered selection, shards."""

# Memory of the curation jobs, measured per rule (peak RSS, benchmarks/curate/
# bench_end_to_end.py, "End to end" in benchmarks/README.md): a fixed part (Python and
# libraries, bounded read caches) plus a part per megapixel of the thumbnail the masks are
# drawn on (curate.tissue.thumb_mpp); nothing grows with the slide's own pixels. The
# thumbnail is bounded by CURATE_MAX_SCAN_MM2, the scanned area of the largest slide the
# requests cover: 625 mm² (25 x 25 mm, e.g. 100,000 x 100,000 px at 0.25 µm/px), 39 MPix
# at 4 µm/px. mem_mb = 1.25 * (fixed + per_mpix * 625 / thumb_mpp²), rounded up to 100 MB.
# Larger scans: raise CURATE_MAX_SCAN_MM2 or a profile's set-resources. tile_slide and
# write_shards' fixed parts include the batched reads' 256 MB tile budget
# (unipipe.slide.READ_CACHE_BYTES), which a 100,000 px wide slide can fill; write_shards'
# also grows with curate.shards.patches_per_shard.
CURATE_MAX_SCAN_MM2 = 625.0
_CURATE_THUMB_MPIX = CURATE_MAX_SCAN_MM2 / config["curate"]["tissue"]["thumb_mpp"] ** 2
# write_shards holds one shard of the largest spec's patches, raw and encoded.
_CURATE_SHARD_MB = (
    2
    * config["curate"]["shards"]["patches_per_shard"]
    * max(spec["size_px"] for spec in config["curate"]["tiling"]["specs"]) ** 2
    * 3
    / 2**20
)
CURATE_MEM_MB = {
    name: int(-(-1.25 * (fixed_mb + per_mpix_mb * _CURATE_THUMB_MPIX) // 100) * 100)
    for name, (fixed_mb, per_mpix_mb) in {
        "segment_tissue": (290, 14),
        "detect_artefacts": (290, 14),
        "tile_slide": (560, 6),
        "select_patches": (330, 2),
        "write_shards": (570 + _CURATE_SHARD_MB, 0),
    }.items()
}


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
        mem_mb=CURATE_MEM_MB["segment_tissue"],
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
        mem_mb=CURATE_MEM_MB["detect_artefacts"],
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
        mem_mb=CURATE_MEM_MB["tile_slide"],
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
        mem_mb=CURATE_MEM_MB["select_patches"],
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
        mem_mb=CURATE_MEM_MB["write_shards"],
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
