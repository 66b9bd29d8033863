"""What the Snakefile imports when it parses: every Snakemake start and every cluster job pays it."""

from __future__ import annotations

import ast
import subprocess
import sys

from tests.conftest import REPO

# Each costs seconds to import and is needed only by the jobs that train, embed, cluster or plot.
HEAVY = ("timm", "torchvision", "sklearn", "matplotlib", "lightning")


def _snakefile_imports() -> list[str]:
    """The unipipe modules that the Snakefile and its rule files import at parse time."""
    modules = set()
    for path in [REPO / "Snakefile", *sorted((REPO / "workflow/rules").glob("*.smk"))]:
        for line in path.read_text().splitlines():
            # Rule files are not Python; their top-level import lines are.
            if line.startswith(("import ", "from ")):
                for node in ast.walk(ast.parse(line)):
                    if isinstance(node, ast.ImportFrom) and node.module:
                        modules.add(node.module)
                    elif isinstance(node, ast.Import):
                        modules.update(alias.name for alias in node.names)
    return sorted(m for m in modules if m.startswith("unipipe"))


def test_snakefile_parse_imports_no_training_or_plotting_stack():
    modules = _snakefile_imports()
    assert "unipipe.ssl.config" in modules
    assert "unipipe.embed.encoders" in modules
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        f"print(sorted(h for h in {HEAVY!r} if h in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]", out.stdout
