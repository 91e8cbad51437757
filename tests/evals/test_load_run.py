"""`checkpoint.load_run`: the one read-only way to use a trained run.

`mmfm export` and `mmfm eval --checkpoint` run from an unrelated directory with the training data
moved away: they succeed, change nothing in the run directory and recreate no data.
"""
import hashlib
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from mmfm import checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _snapshot(d):
    out = {}
    for base, dirs, files in os.walk(d):
        for name in dirs + files:
            p = os.path.join(base, name)
            st = os.stat(p)
            digest = hashlib.sha256(open(p, "rb").read()).hexdigest() if os.path.isfile(p) else ""
            out[os.path.relpath(p, d)] = (st.st_mtime_ns, st.st_size, digest)
    return out


@pytest.fixture
def run_without_data(tiny_run):
    """The tiny run with its data directory moved away for the test."""
    workdir, data_dir, config = tiny_run
    hidden = data_dir + ".hidden"
    os.rename(data_dir, hidden)
    try:
        yield workdir, data_dir, config
    finally:
        if os.path.exists(data_dir):
            shutil.rmtree(data_dir)
        os.rename(hidden, data_dir)


def test_load_run_records_what_the_run_needs(tiny_run):
    workdir, _, config = tiny_run
    run = checkpoint.load_run(workdir)
    assert run.step == config.total_steps and run.workdir == os.path.abspath(workdir)
    assert os.path.isabs(run.config["data"]["dir"])
    assert run.tokenizer_file.startswith(os.path.join(run.root, "assets"))
    assert set(run.zeroshot) == {"color", "shape"} and all(run.zeroshot["shape"])
    assert run.preprocess["image_size"] == config.data.image_size
    # Params equal the full state's params as saved.
    _, state = checkpoint.load_state(workdir)
    for a, b in zip(*(map(np.asarray, __import__("jax").tree.leaves(t))
                      for t in (run.params, state["params"]))):
        np.testing.assert_array_equal(a, b)
    meta_only = checkpoint.load_run(os.path.join(workdir, "checkpoints", "2"), params=False)
    assert meta_only.step == 2 and meta_only.params is None
    with pytest.raises(FileNotFoundError, match="step 3 is not a finalised checkpoint"):
        checkpoint.load_run(workdir, step=3)


def test_export_and_eval_elsewhere_without_data_change_nothing(run_without_data, tmp_path):
    workdir, data_dir, _ = run_without_data
    before = _snapshot(workdir)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
    export = subprocess.run([sys.executable, "-c", "from mmfm.cli import main; main()", "export",
                             "--workdir", workdir, "--out", "exp"], cwd=elsewhere, env=env,
                            capture_output=True, text=True, timeout=300)
    assert export.returncode == 0, export.stderr[-3000:]
    meta = json.load(open(elsewhere / "exp" / "config.json"))
    assert meta["source"]["step"] == 4 and os.path.isfile(elsewhere / "exp" / meta["tokenizer"]["file"])

    script = ("import sys, tensorflow_datasets as tfds\nfrom mmfm import cli\n"
              f"sys.argv = ['mmfm', 'eval', '--config', {ROOT + '/tests/evals/catalog_eval_config.py'!r}, "
              f"'--checkpoint', {workdir!r}, '--out', 'ev']\n"
              "with tfds.testing.mock_data(num_examples=12):\n    cli.main()\n")
    ev = subprocess.run([sys.executable, "-c", script], cwd=elsewhere, env=env,
                        capture_output=True, text=True, timeout=600)
    assert ev.returncode == 0, ev.stderr[-3000:]
    saved = json.load(open(elsewhere / "ev" / "eval_results.json"))
    assert saved["step"] == 4 and "c10_zeroshot/top1" in saved["metrics"]

    assert _snapshot(workdir) == before, "a read changed the run directory"
    assert not os.path.exists(data_dir), "a read rebuilt the training data"
    assert sorted(os.listdir(elsewhere)) == ["ev", "exp"]
