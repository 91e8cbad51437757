"""Resuming a workdir with a changed config: every change logged, model/objective changes refused,
run_info.json keeps the history (the real loop, Orbax checkpoints, the tiny demo config)."""
import json
import logging
import os
import subprocess
import sys

import pytest

from experiments.configs import demo
from mmfm.notebook_utils import set_dotted
from mmfm.train.loop import train
from mmfm.train.resume_config import ResumeConfigError, config_changes

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def tiny(data_dir, **updates):
    c = demo.get_config("tiny")
    c.data.dir = data_dir
    c.total_steps, c.checkpoint_every, c.log_every = 2, 2, 1
    for path, value in updates.items():
        set_dotted(c, path, value)
    return c


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A workdir trained to step 2 (no evals), plus its data dir."""
    from mmfm.data.synthetic import prepare_captioned_shapes

    root = tmp_path_factory.mktemp("resume")
    data_dir = str(root / "data")
    prepare_captioned_shapes(data_dir, image_size=32, num_train=256, num_test=64, seed=0)
    workdir = str(root / "run")
    train(tiny(data_dir), workdir)
    return workdir, data_dir


def _run_info(workdir):
    with open(os.path.join(workdir, "run_info.json")) as f:
        return json.load(f)


def test_config_changes_are_dotted_keys():
    old = {"optim": {"lr": 1e-3, "b1": 0.9}, "mesh": {"shape": (-1, 1, 1)}, "x": 1}
    new = {"optim": {"lr": 2e-3, "b1": 0.9}, "mesh": {"shape": [-1, 1, 1]}, "y": 2}
    assert config_changes(old, new) == {"optim.lr": (1e-3, 2e-3), "x": (1, "<absent>"),
                                        "y": ("<absent>", 2)}


@pytest.mark.parametrize("updates, named", [
    ({"model.embed_dim": 48}, "model.embed_dim: 32 -> 48"),
    ({"loss.mae_weight": 0.5, "optim.lr": 0.01}, "loss.mae_weight: 1.0 -> 0.5"),
    ({"model.image.depth": 2}, "model.image.depth: 1 -> 2"),
])
def test_model_or_objective_change_is_refused(run, updates, named):
    workdir, data_dir = run
    before = _run_info(workdir)
    with pytest.raises(ResumeConfigError) as e:
        train(tiny(data_dir, total_steps=4, **updates), workdir)
    msg = str(e.value)
    assert named in msg and "step 2" in msg and "new --workdir" in msg
    assert f"--config.resume_from={workdir} --config.resume_mode=params" in msg
    assert "optim.lr" not in msg  # only the refused keys are named
    if "embed_dim" in named:  # the shapes no longer fit either: the first mismatch is named
        assert "shape mismatch at `params/" in msg
    assert _run_info(workdir) == before  # not overwritten with the refused config
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2", "assets"]


def test_cli_refusal_is_one_line_exit_2(run):
    workdir, data_dir = run
    cmd = [sys.executable, "-m", "mmfm.train", "--config", "experiments/configs/demo.py:tiny",
           "--workdir", workdir, f"--config.data.dir={data_dir}", "--config.total_steps=4",
           "--config.checkpoint_every=2", "--config.log_every=1", "--config.loss.mlm_weight=0.1"]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 2, res.stderr[-2000:]
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("mmfm train: error: ") and "loss.mlm_weight: 0.5 -> 0.1" in last
    assert "Traceback" not in res.stderr


def test_allowed_changes_are_logged_and_recorded(run, caplog):
    """Last: it moves the run on to step 4."""
    workdir, data_dir = run
    with caplog.at_level(logging.WARNING, logger="mmfm"):
        train(tiny(data_dir, total_steps=4, **{"optim.lr": 0.005}), workdir)
    lines = [r.getMessage() for r in caplog.records]
    assert f"resuming {workdir} at step 2 with 2 changed config key(s):" in lines
    assert "  config.optim.lr: 0.002 -> 0.005" in lines
    assert "  config.total_steps: 2 -> 4" in lines
    info = _run_info(workdir)
    assert info["config"]["total_steps"] == 4 and info["config"]["optim"]["lr"] == 0.005
    assert info["resumes"] == [{"step": 2, "changes": {"optim.lr": [0.002, 0.005],
                                                       "total_steps": [2, 4]}}]
    assert {"2", "4"} <= set(os.listdir(os.path.join(workdir, "checkpoints")))


def test_a_newer_loss_key_at_its_off_value_resumes():
    """A run saved before `loss.distill_weight` existed resumes with it at 0 (logged, not
    refused); at any other value, or an existing weight changed, it is refused."""
    from mmfm.train.resume_config import check_resume

    saved = {"loss": {"contrastive_weight": 1.0}}
    changes = check_resume(saved, {"loss": {"contrastive_weight": 1.0, "distill_weight": 0.0}},
                           step=4, workdir="w")
    assert list(changes) == ["loss.distill_weight"]
    with pytest.raises(ResumeConfigError, match="loss.distill_weight"):
        check_resume(saved, {"loss": {"contrastive_weight": 1.0, "distill_weight": 1.0}},
                     step=4, workdir="w")
    with pytest.raises(ResumeConfigError, match="loss.contrastive_weight"):
        check_resume(saved, {"loss": {"contrastive_weight": 0.0}}, step=4, workdir="w")
