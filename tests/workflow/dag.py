"""Running the project's Snakefile in a temporary folder, as the workflow tests do."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO, SLIDES

SNAKEMAKE = [sys.executable, "-m", "snakemake"]
TEST_SLIDES = {
    "CMU-1-Small-Region": SLIDES / "CMU-1-Small-Region.svs",
    "OS-1-detail": SLIDES / "OS-1-detail.ome.tif",
}


def make_workdir(root: Path, slides: dict[str, Path | str], mpp: dict[str, float] | None = None):
    """A run folder with config/ and resources/ linked in and its own slide manifest."""
    root.mkdir(parents=True, exist_ok=True)
    for name in ("config", "resources"):
        link = root / name
        if not link.exists():
            link.symlink_to(REPO / name)
    mpp = mpp or {}
    rows = ["slide_id\tpath\tmpp"]
    rows += [f"{sid}\t{path}\t{mpp.get(sid, '')}" for sid, path in slides.items()]
    (root / "slides.tsv").write_text("\n".join(rows) + "\n")
    return root


def snakemake(
    workdir: Path, *args: str, configfiles: tuple[Path, ...] = (), check: bool = True
) -> subprocess.CompletedProcess:
    """Run the project's Snakefile in ``workdir`` with the small test config."""
    cmd = [
        *SNAKEMAKE,
        "-s",
        str(REPO / "Snakefile"),
        "--directory",
        str(workdir),
        "--configfile",
        str(REPO / "config" / "test.yaml"),
        *map(str, configfiles),
        "--config",
        "slides=slides.tsv",
        "--cores",
        "2",
        *args,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake failed ({proc.returncode}):\n{proc.stderr[-6000:]}")
    return proc


def planned_rules(proc: subprocess.CompletedProcess) -> set[str]:
    """Rule names of the jobs a dry run plans, from its job-stats table."""
    text = proc.stdout + proc.stderr
    if "Nothing to be done" in text:
        return set()
    table = text.split("Job stats:", 1)[1].split("total", 1)[0]
    return {m.group(1) for m in re.finditer(r"^(\w+)\s+\d+\s*$", table, re.M)} - {"job"}
