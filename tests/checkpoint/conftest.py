"""Shared fixtures for the checkpoint tests: tiny data built once, a `train` subprocess runner.

Runs are real `python -m mmfm.train` subprocesses on the tiny demo config, so SIGKILL/SIGTERM hit
a real training process. Schedule: total_steps=48 with --max_steps=40, so the 40 trained steps
are the same as in a 40-step run except for the LR schedule, and the ~40 s end-of-training eval
(run only at total_steps) is skipped.
"""
import json
import os
import shutil
import subprocess
import sys

import jax
import pytest

from tests.subprocess_env import failure_report

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STEPS = 40
BASE = ("--config.total_steps=48", "--config.checkpoint_every=5", "--config.log_every=1",
        "--config.keep_checkpoints=3")


@pytest.fixture(scope="session")
def ckpt_data_dir(tmp_path_factory):
    """captioned_shapes at the tiny config's size (MMFM_TEST_DATA_DIR reuses one across sessions)."""
    d = os.environ.get("MMFM_TEST_DATA_DIR") or str(tmp_path_factory.mktemp("shapes"))
    from mmfm.data.synthetic import prepare_captioned_shapes
    prepare_captioned_shapes(d, image_size=32, num_train=256, num_test=64, seed=0)
    return d


def train_cmd(workdir, data_dir, *overrides, max_steps=STEPS):
    return [sys.executable, "-m", "mmfm.train", "--config", "experiments/configs/demo.py:tiny",
            "--workdir", str(workdir), f"--config.data.dir={data_dir}", *BASE, *overrides,
            f"--max_steps={max_steps}"]


# One persistent compilation cache per test session: the first run compiles, later runs load the
# same executables (identical code, so bit-exactness is unaffected) and start ~4x faster.
# Multi-device runs get it too: a multi-device XLA:CPU step loaded from the cache deadlocks
# (jaxlib 0.10.2), so mmfm's guard (mmfm/compile_cache.py) turns it off in those processes, and
# these runs check that it does.
_CACHE = os.environ.get("MMFM_TEST_JAX_CACHE") or os.path.join(
    "/tmp", f"mmfm_ckpt_test_jax_cache_{os.getpid()}")


def train_env(devices=1, **extra):
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
               TF_CPP_MIN_LOG_LEVEL="3", JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=_CACHE,
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1")
    env.pop("MMFM_TEST_KILL_AT_STEP", None)
    env.update({k: str(v) for k, v in extra.items()})
    return env


def run_train(workdir, data_dir, *overrides, devices=1, max_steps=STEPS, timeout=180, **env):
    """Runs training to completion (or until killed); returns the CompletedProcess (text output)."""
    return subprocess.run(train_cmd(workdir, data_dir, *overrides, max_steps=max_steps), cwd=REPO,
                          env=train_env(devices, **env), capture_output=True, text=True,
                          timeout=timeout)


def flat_leaves(tree) -> dict:
    """{"params/img/cls": leaf, ...}: every leaf by its path (dict keys, attributes, indices)."""
    def name(k):
        return str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))))
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {"/".join(name(k) for k in path): leaf for path, leaf in leaves}


def read_metrics(workdir, kind="train"):
    """metrics.jsonl records of one kind, in file order."""
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [r for r in map(json.loads, f) if r["kind"] == kind]


@pytest.fixture(scope="session", autouse=True)
def _remove_compile_cache():
    yield
    if not os.environ.get("MMFM_TEST_JAX_CACHE"):
        shutil.rmtree(_CACHE, ignore_errors=True)


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory, ckpt_data_dir):
    """An uninterrupted 40-step one-device run: its workdir."""
    w = tmp_path_factory.mktemp("reference")
    p = run_train(w, ckpt_data_dir)
    assert p.returncode == 0, failure_report(p)
    return str(w)
