"""The notebooks as stored: executed, with the figures README.md's notebook table promises.

`make test` executes them (notebooks/conftest.py, the same check on fresh outputs); these tests read
the stored files, so a notebook edited without `make notebooks` fails here in milliseconds.
"""
import glob
import os
import re
import sys
import tempfile

import nbformat
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "notebooks"))
import run_notebooks as rn  # noqa: E402

NOTEBOOKS = sorted(glob.glob(os.path.join(ROOT, "notebooks", "*.ipynb")))
STEM = lambda path: os.path.splitext(os.path.basename(path))[0]  # noqa: E731
MAX_BYTES = 400_000  # per stored notebook: tiny models, small figures


def test_readme_table_lists_every_notebook_and_promises_pictures():
    promised = rn.promised_figures()
    assert sorted(promised) == [STEM(p) for p in NOTEBOOKS], promised
    assert sum(promised.values()) >= 8, promised
    for stem in ("01_quickstart", "02_train_small", "03_masked_modeling", "04_retrieval_search"):
        assert promised[stem] >= 1, f"{stem} shows pictures; the README's table says {promised[stem]}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=STEM)
def test_stored_with_outputs_and_promised_figures(path):
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    unrun = [i for i, c in enumerate(code) if c.execution_count is None]
    assert not unrun, f"{STEM(path)}: code cells {unrun} stored unexecuted: run `make notebooks`"
    assert [c.execution_count for c in code] == list(range(1, len(code) + 1)), \
        f"{STEM(path)}: cells stored out of order: run `make notebooks`"
    errors = [o.ename for c in code for o in c.outputs if o.output_type == "error"]
    assert not errors, f"{STEM(path)}: stored with errors {errors}"
    want = rn.promised_figures()[STEM(path)]
    assert rn.image_outputs(nb) >= want, \
        f"{STEM(path)}: {rn.image_outputs(nb)} image outputs stored, README.md promises {want}"
    assert os.path.getsize(path) < MAX_BYTES, f"{STEM(path)}: {os.path.getsize(path)} bytes"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=STEM)
def test_stored_outputs_have_no_volatile_metadata_or_temp_paths(path):
    nb = nbformat.read(path, as_version=4)
    assert set(nb.metadata.get("language_info", {})) <= {"name"}, nb.metadata.language_info
    timed = [i for i, c in enumerate(nb.cells) if "execution" in c.metadata]
    assert not timed, f"{STEM(path)}: cells {timed} store execution timings"
    texts = [o.get("text", "") + str(o.get("data", {}).get("text/plain", ""))
             for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    tmp = tempfile.gettempdir()
    assert not [t for t in texts if tmp + os.sep in t], f"{STEM(path)}: an output prints a temp path"


@pytest.mark.parametrize("path", NOTEBOOKS + [os.path.join(ROOT, "mmfm", f)
                                              for f in ("notebook_utils.py", "notebook_inference.py")],
                         ids=os.path.basename)
def test_no_headless_backend_forced(path):
    with open(path) as f:
        text = f.read()
    assert not re.search(r"matplotlib\.use\(|MPLBACKEND", text), \
        f"{os.path.basename(path)} forces a matplotlib backend: Jupyter would show no figures"


def test_promised_figures_parses_the_table(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("| notebook | shows | figures |\n|---|---|---|\n"
                      "| [01_a](notebooks/01_a.ipynb) | a grid | 2 |\n"
                      "| [02_b](notebooks/02_b.ipynb) | text only | 0 |\n"
                      "see [01_a](notebooks/01_a.ipynb) | 5 |\n")
    assert rn.promised_figures(str(readme)) == {"01_a": 2, "02_b": 0}
