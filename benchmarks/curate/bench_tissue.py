"""Benchmark of tissue segmentation + artefact detection in ms per megapixel of thumbnail.

Run: .venv/bin/python benchmarks/curate/bench_tissue.py [--repeats 5] [--threads 1]
Each bundled slide is rendered once at the thumbnail mpp (default config: 4.0 µm/px; the
CMU slide also at 2 and 8), then `segment_tissue` and `classify` (all artefact detectors)
run on it; slide reading is not timed. Wall and CPU (process) time are medians of the
repeats; CPU time is the fairer figure on a shared machine. Target: <= 40 ms/MPix.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import cv2

from unipipe.curate.artefacts import ArtefactParams, classify
from unipipe.curate.tissue import TissueParams, segment_tissue
from unipipe.slide import open_slide

SLIDES = Path(__file__).resolve().parents[2] / "resources" / "slides"
CASES = [
    ("CMU-1-Small-Region.svs", 2.0),
    ("CMU-1-Small-Region.svs", 4.0),
    ("CMU-1-Small-Region.svs", 8.0),
    ("CMU-1-Small-Region-dicom", 4.0),
    ("small_dicom.dcm", 4.0),
    ("OS-2-ndpi.ome.tif", 1.0),
]


def _time(fn, repeats: int) -> tuple[float, float]:
    """Median (wall, cpu) seconds of ``repeats`` calls after one warm-up call."""
    fn()
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return statistics.median(walls), statistics.median(cpus)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="OpenCV threads")
    args = parser.parse_args()
    cv2.setNumThreads(args.threads)

    print(
        "command: .venv/bin/python benchmarks/curate/bench_tissue.py "
        f"--repeats {args.repeats} --threads {args.threads}"
    )
    header = (
        "slide",
        "mpp",
        "MPix",
        "tissue ms/MPix",
        "artefacts ms/MPix",
        "total wall",
        "total cpu",
    )
    print("{:26s} {:>5s} {:>6s} {:>15s} {:>18s} {:>11s} {:>10s}".format(*header))
    for name, mpp in CASES:
        with open_slide(SLIDES / name) as slide:
            thumb = slide.read_thumbnail(mpp)
        mpix = thumb.shape[0] * thumb.shape[1] / 1e6
        tissue_params = TissueParams(thumb_mpp=mpp)
        tissue = segment_tissue(thumb, mpp=mpp, params=tissue_params).mask > 0
        wall_t, cpu_t = _time(
            lambda t=thumb, m=mpp, p=tissue_params: segment_tissue(t, mpp=m, params=p),
            args.repeats,
        )
        wall_a, cpu_a = _time(
            lambda t=thumb, k=tissue, m=mpp: classify(t, k, mpp=m, params=ArtefactParams()),
            args.repeats,
        )
        print(
            f"{name:26s} {mpp:5.1f} {mpix:6.2f} {1e3 * wall_t / mpix:15.1f} {1e3 * wall_a / mpix:18.1f} "
            f"{1e3 * (wall_t + wall_a) / mpix:11.1f} {1e3 * (cpu_t + cpu_a) / mpix:10.1f}"
        )


if __name__ == "__main__":
    main()
