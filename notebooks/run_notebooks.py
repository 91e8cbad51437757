"""Executes the notebooks in a Jupyter kernel, as a reader's Jupyter would (inline figures).

    python notebooks/run_notebooks.py --inplace notebooks/*.ipynb   # `make notebooks`: store the outputs

`make test` runs the same `execute` through notebooks/conftest.py, which fails a notebook that
errors, shows fewer figures than README.md's notebook table promises, or leaves files in notebooks/.
Outputs are stored without volatile metadata (no cell timings, no Python version).
"""
from __future__ import annotations

import argparse
import os
import re
import sys
from typing import Optional

import nbformat
from nbclient import NotebookClient

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
CELL_TIMEOUT_S = 900  # per cell: the first notebook to run trains the shared tiny model
# Files the kernel may leave next to the notebooks (all gitignored).
IGNORED = {"__pycache__", ".ipynb_checkpoints"}


def image_outputs(nb) -> int:
    """Number of `image/png` outputs (inline matplotlib figures) in an executed notebook."""
    return sum("image/png" in out.get("data", {})
               for cell in nb.cells if cell.cell_type == "code" for out in cell.get("outputs", []))


def promised_figures(readme: str = README) -> dict[str, int]:
    """README.md's notebook table as {notebook stem: figures it promises}, e.g. {"01_quickstart": 3}.

    Rows look like `| [01_quickstart](notebooks/01_quickstart.ipynb) | shows ... | 3 |`.
    """
    row = re.compile(r"^\|\s*\[[^\]]+\]\(notebooks/([\w-]+)\.ipynb\)\s*\|.*\|\s*(\d+)\s*\|\s*$")
    with open(readme) as f:
        found = [row.match(line.strip()) for line in f]
    return {m.group(1): int(m.group(2)) for m in found if m}


def strip_volatile(nb) -> None:
    """Drops metadata that changes on every run without the outputs changing."""
    nb.metadata.pop("widgets", None)
    if "language_info" in nb.metadata:
        nb.metadata.language_info = {"name": nb.metadata.language_info.get("name", "python")}
    for cell in nb.cells:
        cell.metadata.pop("execution", None)


def execute(path: str, *, timeout: int = CELL_TIMEOUT_S):
    """Runs every cell of the notebook at `path` in a fresh python3 kernel, with the notebook's
    directory as working directory; returns the executed notebook (outputs filled in).

    Raises nbclient's CellExecutionError (naming the cell and its traceback) on the first error.
    """
    # XLA's C++ warnings (e.g. SPMD rematerialisation notes) carry timestamps and would be stored
    # as stderr outputs; a reader's own Jupyter still shows them.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", record_timing=False,
                            coalesce_streams=True,
                            resources={"metadata": {"path": os.path.dirname(os.path.abspath(path))}})
    client.execute()
    strip_volatile(nb)
    return nb


def new_files(directory: str, before: set[str]) -> list[str]:
    """Entries of `directory` not in `before`, ignoring caches (what a notebook left behind)."""
    return sorted(set(os.listdir(directory)) - before - IGNORED)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="+", help=".ipynb files to execute")
    parser.add_argument("--inplace", action="store_true",
                        help="write each executed notebook back over its source")
    args = parser.parse_args(argv)
    promised = promised_figures()
    failed = []
    for path in args.notebooks:
        nb = execute(path)
        stem = os.path.splitext(os.path.basename(path))[0]
        images, want = image_outputs(nb), promised.get(stem, 0)
        print(f"{path}: {images} image outputs (README promises {want})", flush=True)
        if images < want:
            failed.append(path)
        if args.inplace:
            nbformat.write(nb, path)
    if failed:
        print(f"fewer figures than README.md promises: {failed}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
