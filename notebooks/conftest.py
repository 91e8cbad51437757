"""`pytest notebooks` (part of `make test`) executes each notebook once, through run_notebooks.py.

A notebook fails when a cell errors, when it shows fewer figures (image/png outputs) than README.md's
notebook table promises, or when it leaves files in notebooks/ (data belongs in $MMFM_NOTEBOOK_DIR).
With `--nbmake` this collector steps aside and nbmake runs them (no figure check).
"""
import os

import pytest
from nbclient.exceptions import CellExecutionError

import run_notebooks as rn


def pytest_collect_file(file_path, parent):
    if file_path.suffix == ".ipynb" and not getattr(parent.config.option, "nbmake", False):
        return NotebookFile.from_parent(parent, path=file_path)


class NotebookFile(pytest.File):
    def collect(self):
        yield NotebookItem.from_parent(self, name=self.path.name)


class NotebookItem(pytest.Item):
    def runtest(self):
        folder = str(self.path.parent)
        before = set(os.listdir(folder))
        nb = rn.execute(str(self.path))
        images = rn.image_outputs(nb)
        want = rn.promised_figures().get(self.path.stem, 0)
        assert images >= want, (f"{self.path.name} showed {images} figures (image/png outputs); "
                                f"README.md's notebook table promises {want}")
        left = rn.new_files(folder, before)
        assert not left, f"running the notebooks left {left} in {folder}: use nbu.workspace()"

    def repr_failure(self, excinfo, style=None):
        if isinstance(excinfo.value, (CellExecutionError, AssertionError)):
            return str(excinfo.value)
        return super().repr_failure(excinfo, style)

    def reportinfo(self):
        return self.path, 0, self.name
