"""Bad configuration fails before training starts, naming the key."""
import os
import subprocess
import sys

import pytest

from experiments.configs import demo
from mmfm.config_utils import model_config, objective_config
from mmfm.losses.objective import check_model_fits

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run_train(tmp_path, *flags):
    cmd = [sys.executable, "-m", "mmfm.train", "--config", "experiments/configs/demo.py:tiny",
           "--workdir", str(tmp_path / "w"), f"--config.data.dir={tmp_path / 'd'}", *flags]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("flag, expect", [
    ("--config.optim.learning_rate=0.1", "learning_rate"),  # unknown key: lists valid ones
    ("--config.batch_size=abc", "batch_size"),  # wrong type
])
def test_cli_rejects_bad_overrides(tmp_path, flag, expect):
    res = run_train(tmp_path, flag)
    assert res.returncode != 0
    assert expect in res.stderr
    if "learning_rate" in flag:
        assert "warmup_steps" in res.stderr  # the message lists the valid keys
    assert not (tmp_path / "w" / "metrics.jsonl").exists()


def tiny(**updates):
    c = demo.get_config("tiny")
    with c.unlocked():
        for path, value in updates.items():
            node = c
            *parents, leaf = path.split(".")
            for p in parents:
                node = node[p]
            node[leaf] = value
    return c


@pytest.mark.parametrize("updates, key", [
    ({"model.image.heads": 3}, "model.image.heads"),
    ({"model.text.heads": 5}, "model.text.heads"),
    ({"model.image.patch_size": 7}, "model.image.patch_size"),
    ({"model.image.pool": "max"}, "model.image.pool"),
    ({"loss.contrastive": "triplet"}, "loss.contrastive"),
    ({"loss.mae_ratio": 1.0}, "loss.mae_ratio"),
    ({"loss.label_smoothing": 1.0}, "loss.label_smoothing"),
    ({"loss.classify_weight": -1.0}, "loss.classify_weight"),
    ({"model.num_classes": -2}, "model.num_classes"),
])
def test_model_and_loss_errors_name_the_key(updates, key):
    c = tiny(**updates)
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        objective_config(c)
        model_config(c)


@pytest.mark.parametrize("updates, key", [
    ({"loss.contrastive": "siglip"}, "model.init_bias"),
    ({"model.mae_decoder": None}, "model.mae_decoder"),
    ({"model.text.mlm_head": False}, "model.text.mlm_head"),
    ({"loss.classify_weight": 1.0}, "model.num_classes"),
])
def test_objective_needs_matching_model_parts(updates, key):
    c = tiny(**updates)
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        check_model_fits(objective_config(c), model_config(c))


def test_masked_sub_batch_must_split_over_the_batch_devices():
    from mmfm import sharding as sh
    from mmfm.config_utils import check_batch

    mesh = sh.make_mesh((8, 1, 1))
    check_batch(tiny(**{"loss.masked_batch_frac": 0.5}), mesh)  # 8 of 16 rows: one per device
    with pytest.raises(ValueError, match=r"loss\.masked_batch_frac=0\.25 gives 4 of 16 rows"):
        check_batch(tiny(**{"loss.masked_batch_frac": 0.25}), mesh)
