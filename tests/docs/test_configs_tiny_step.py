"""Every experiment config builds at its `tiny` override and runs one real train step.

Uses the trainer end to end (captioned-shapes data through grain, the mesh of 8 virtual devices,
sharded state, the jitted step), so a config that only fails when built for real is caught here.
tests/train/test_train_step.py covers the step itself on synthetic batches for the demo config.
"""
import os

import jax
import numpy as np
import pytest

import doc_commands as dc
from mmfm.notebook_utils import load_config

# Minutes of CPU: run by `make test-slow` (and CI), not by `make test`.
pytestmark = pytest.mark.slow

CONFIGS = [os.path.relpath(p, dc.ROOT) for p in dc.config_files()]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("data"))


def test_configs_found():
    names = {os.path.basename(p) for p in CONFIGS}
    assert {"demo.py", "clip_b16.py", "siglip_b16.py", "flip_l16.py", "mae_b16.py", "m3ae_b16.py",
            "mmfm_b16.py"} <= names, names


@pytest.mark.parametrize("path", CONFIGS)
def test_tiny_config_runs_one_step(path, data_dir, tmp_path):
    from mmfm.train.loop import Trainer

    config = load_config(f"{path}:tiny", {"data.dir": data_dir})
    full = load_config(path)
    assert config.batch_size <= 64 and config.total_steps <= 10, "tiny must stay a minute-long job"
    assert full.batch_size >= config.batch_size
    tr = Trainer(config, str(tmp_path))
    state = tr.init_state()
    batch = next(iter(tr.train_loader))
    new_state, metrics = tr.step(state, batch)
    metrics = jax.device_get(metrics)
    assert int(new_state.step) == 1
    assert np.isfinite(metrics["loss"]) and metrics["loss"] > 0, metrics
    assert any(k.startswith("loss/") for k in metrics), sorted(metrics)
