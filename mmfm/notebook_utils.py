"""Helpers behind the notebooks in `notebooks/`: arrays in, arrays out, no plotting.

The notebooks only import mmfm; every step with logic lives here (or elsewhere in the library) so it
is tested and importable from Colab. Plotting stays in the notebooks.

    from mmfm import notebook_utils as nbu
    assets = nbu.demo_assets()          # data + a small trained model + its export (cached, locked)
    test = nbu.test_set(assets, 64)     # {"image": uint8 [n,S,S,3], "caption": [...], "shape": ...}
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib.util
import json
import logging
import os
import sys
import tempfile
from typing import Any, Optional

import numpy as np

from mmfm import fileio

log = logging.getLogger("mmfm")

# The notebooks' shared model: the demo objective (CLIP + MAE + MLM) at the tiny size, trained long
# enough (about a minute on 2 CPU cores) that retrieval and reconstructions are better than chance.
# total_steps is one more than the steps run, so the loop's end-of-run eval (probes: slow on CPU) is
# skipped; the notebooks evaluate what they show themselves.
NOTEBOOK_STEPS = 300
NOTEBOOK_MODEL = dict(total_steps=NOTEBOOK_STEPS + 1, batch_size=64, log_every=50,
                      checkpoint_every=NOTEBOOK_STEPS,
                      **{"data.num_train": 4096, "data.num_test": 256, "optim.lr": 3e-3,
                         "optim.warmup_steps": 40})


def repo_root(start: Optional[str] = None) -> str:
    """The mmfm checkout (the directory holding experiments/configs), searched upwards from `start`
    (default: the working directory, then this file's location)."""
    for base in ([start] if start else []) + [os.getcwd(), os.path.dirname(os.path.abspath(__file__))]:
        d = os.path.abspath(base)
        while True:
            if os.path.isdir(os.path.join(d, "experiments", "configs")):
                return d
            parent = os.path.dirname(d)
            if parent == d:
                break
            d = parent
    raise FileNotFoundError("experiments/configs not found above the working directory: run from "
                            "an mmfm checkout")


def load_config(spec: str, overrides: Optional[dict] = None):
    """Experiment config from `FILE[:arg]` (as `--config` takes it), with dotted-key overrides.

    `spec` is a path relative to the repo root or absolute, e.g. "experiments/configs/demo.py:tiny".
    Overrides are applied like `--config.a.b=v` on the locked config: an unknown key raises a
    KeyError naming it.
    """
    path, _, arg = spec.partition(":")
    root = repo_root()
    full = path if os.path.isabs(path) else os.path.join(root, path)
    if not os.path.isfile(full):
        raise FileNotFoundError(f"config file {path!r} not found (looked in {root})")
    if root not in sys.path:  # a config may import its neighbours as `experiments.configs.X`
        sys.path.insert(0, root)
    mod_spec = importlib.util.spec_from_file_location(f"_mmfm_config_{abs(hash(full))}", full)
    module = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(module)
    config = module.get_config(arg or None)
    for key, value in (overrides or {}).items():
        set_dotted(config, key, value)
    return config


def set_dotted(config, key: str, value: Any) -> None:
    """config['a']['b'] = value for key 'a.b'; unknown keys raise KeyError listing the valid ones."""
    *parents, last = key.split(".")
    node = config
    for i, part in enumerate(parents + [last]):
        valid = list(node.keys()) if hasattr(node, "keys") else []
        if part not in valid:
            where = ".".join(parents[:i] + [part])
            raise KeyError(f"config key {where!r} does not exist; valid at this level: {sorted(valid)}")
        if i < len(parents):
            node = node[part]
    node[last] = value  # a locked ConfigDict accepts existing keys (type-checked)


def workspace(name: str = "") -> str:
    """Scratch space shared by the notebooks: $MMFM_NOTEBOOK_DIR or <tmp>/mmfm-notebooks."""
    base = os.environ.get("MMFM_NOTEBOOK_DIR") or os.path.join(tempfile.gettempdir(), "mmfm-notebooks")
    path = os.path.join(base, name) if name else base
    os.makedirs(path, exist_ok=True)
    return path


@contextlib.contextmanager
def _file_lock(path: str):
    """Exclusive lock so notebooks run in parallel (pytest -n 2) train the shared model once."""
    import fcntl

    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def quiet_logs() -> None:
    """Silence library INFO chatter (TFDS progress bars, absl) so notebook outputs stay readable."""
    for name in ("absl", "jax._src", "orbax", "tensorflow_datasets", "grain"):
        logging.getLogger(name).setLevel(logging.WARNING)
    os.environ.setdefault("TFDS_DISABLE_PROGRESS_BAR", "1")  # hint for subprocesses
    try:
        import tensorflow_datasets as tfds
        tfds.disable_progress_bar()
    except ImportError:  # pragma: no cover - tfds is a dependency
        pass


def ensure_data(config) -> None:
    """Builds `config.data` if missing, under a lock: notebooks run in parallel share one data dir."""
    from mmfm.data.build import build_data

    quiet_logs()
    with _file_lock(os.path.join(workspace(), ".data-lock")):
        build_data(config.data, batch_size=8, seed=0)


def train(config, workdir: str, *, max_steps: Optional[int] = None) -> dict:
    """`mmfm train` from Python: train (or resume) in `workdir`; returns the final eval results."""
    from mmfm.evals.runner import train_and_evaluate

    ensure_data(config)
    return train_and_evaluate(config, workdir, max_steps=max_steps)


@dataclasses.dataclass(frozen=True)
class DemoAssets:
    """Where the notebooks' data, training run and export live."""
    data_dir: str
    workdir: str
    export_dir: str
    config: Any  # the locked ConfigDict the model was trained with


def demo_assets(*, data_dir: Optional[str] = None, overrides: Optional[dict] = None) -> DemoAssets:
    """A small trained model and its export, built once and reused (cached in `workspace()`).

    If `make demo` has run (runs/demo holds a finished run), its model is exported and used;
    otherwise the tiny demo config is trained with NOTEBOOK_MODEL's settings (about a minute).
    """
    from mmfm.zoo.export import export_from_workdir

    quiet_logs()
    root = repo_root()
    made_demo = os.path.join(root, "runs", "demo")
    if overrides is None and os.path.isfile(os.path.join(made_demo, "eval_results.json")):
        workdir = made_demo
        config = _run_config(workdir)
        data = str(config.data.dir)
        if "://" not in data and not os.path.isabs(data):  # a run from before paths were stored
            config.data.dir = os.path.join(root, data)     # absolute: `make demo` ran in the root
        export_dir = os.path.join(workspace(), "demo-export")
    else:
        data_dir = data_dir or workspace("data")
        settings = dict(NOTEBOOK_MODEL, **(overrides or {}), **{"data.dir": data_dir})
        key = json.dumps(settings, sort_keys=True, default=str).encode()
        tag = "tiny-" + hashlib.sha256(key).hexdigest()[:10]  # stable across processes
        workdir = os.path.join(workspace(), tag)
        export_dir = os.path.join(workspace(), tag + "-export")
        config = load_config("experiments/configs/demo.py:tiny", settings)
    done = os.path.join(workdir, "notebook-model-done")
    with _file_lock(os.path.join(workspace(), ".lock")):
        if workdir != made_demo and not os.path.isfile(done):
            train(config, workdir, max_steps=NOTEBOOK_STEPS)
            open(done, "w").close()
        if not os.path.isfile(os.path.join(export_dir, "config.json")):
            export_from_workdir(workdir, export_dir)
    return DemoAssets(str(config.data.dir), workdir, export_dir, config)


def _run_config(workdir: str):
    import ml_collections

    from mmfm import checkpoint
    return ml_collections.ConfigDict(checkpoint.load_run(workdir, params=False).config)


def test_set(assets: DemoAssets, max_examples: Optional[int] = None, split: str = "test") -> dict:
    """Eval split of the assets' data: {"image": uint8 [n,S,S,3], "tokens", "caption", labels...}."""
    from mmfm.data.build import build_data

    _, eval_arrays, _, _ = build_data(assets.config.data, batch_size=8, seed=0)
    return eval_arrays(split, max_examples)


def read_metrics(workdir: str) -> dict[str, dict[str, np.ndarray]]:
    """metrics.jsonl as {kind: {metric: float array over logged steps}}, kinds 'train' and 'eval'.

    Every kind has a 'step' array; a metric missing at some logged step is NaN there.
    """
    path = fileio.join(workdir, "metrics.jsonl")
    if not fileio.isfile(path):
        raise FileNotFoundError(f"{path} not found: has a run written metrics in {workdir}?")
    rows: dict[str, list[dict]] = {}
    with fileio.open(path) as f:
        for line in f:
            if line.strip():
                rec = json.loads(line)
                rows.setdefault(rec.get("kind", "train"), []).append(rec)
    out = {}
    for kind, recs in rows.items():
        keys = sorted({k for r in recs for k, v in r.items() if k != "kind" and isinstance(v, (int, float))})
        out[kind] = {k: np.array([float(r.get(k, np.nan)) for r in recs]) for k in keys}
    return out


def image_grid(images: np.ndarray, cols: int, pad: int = 2, value: float = 1.0) -> np.ndarray:
    """[n, H, W, C] -> one [rows*(H+pad), cols*(W+pad), C] array for a single imshow call."""
    images = np.asarray(images)
    n, h, w, c = images.shape
    rows = -(-n // cols)
    grid = np.full((rows * (h + pad), cols * (w + pad), c), value, images.dtype)
    for i, im in enumerate(images):
        r, q = divmod(i, cols)
        grid[r * (h + pad):r * (h + pad) + h, q * (w + pad):q * (w + pad) + w] = im
    return grid


def sharding_table(tree) -> list[tuple[str, tuple, str, tuple]]:
    """(path, global shape, PartitionSpec, per-device shard shape) for each array of `tree`."""
    import jax

    rows = []
    for path, x in jax.tree_util.tree_leaves_with_path(tree):
        spec = getattr(x.sharding, "spec", None)
        rows.append(("/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path),
                     tuple(x.shape), str(spec), tuple(x.sharding.shard_shape(tuple(x.shape)))))
    return rows


def shard_layout(x) -> list[tuple[tuple[tuple[int, int], ...], list[int]]]:
    """Which devices hold which block of array `x`: [(((start, stop) per dim), [device ids])].

    Devices holding the same block (replicas along unused mesh axes) are listed together, in id
    order; blocks are sorted by position.
    """
    blocks: dict[tuple, list[int]] = {}
    for device, index in x.sharding.devices_indices_map(tuple(x.shape)).items():
        key = tuple(s.indices(n)[:2] for s, n in zip(index, x.shape))
        blocks.setdefault(key, []).append(device.id)
    return [(k, sorted(v)) for k, v in sorted(blocks.items())]


def profile_steps(config, logdir: str, *, steps: int = 5, warmup: int = 2) -> float:
    """Trace `steps` train steps (after `warmup` compiled ones) with jax.profiler into `logdir`
    (open with TensorBoard's profile plugin or Perfetto); returns the median step seconds."""
    import statistics
    import time

    import jax

    from mmfm.train.loop import Trainer

    ensure_data(config)
    tr = Trainer(config, tempfile.mkdtemp(prefix="mmfm-profile-"))
    state, it = tr.init_state(), iter(tr.train_loader)
    for _ in range(warmup):
        state, _ = tr.step(state, next(it))
    jax.block_until_ready(state)
    times = []
    with jax.profiler.trace(logdir):
        for _ in range(steps):
            t = time.perf_counter()
            state, metrics = tr.step(state, next(it))
            jax.block_until_ready(metrics)
            times.append(time.perf_counter() - t)
    return statistics.median(times)
