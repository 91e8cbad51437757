"""Adaptation: LiT (locked image tower) through the normal trainer, and full fine-tuning."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from mmfm import checkpoint
import pytest

# Minutes of CPU: run by `make test-slow` (and CI), not by `make test`.
pytestmark = pytest.mark.slow


def _flat(tree):
    return {"/".join(str(getattr(k, "key", k)) for k in p): np.asarray(v)
            for p, v in jax.tree_util.tree_leaves_with_path(tree)}


def test_lit_locks_the_image_tower_and_tunes_the_text_tower(tiny_run, tmp_path):
    from experiments.configs import lit_shapes
    from mmfm.evals.runner import train_and_evaluate

    pre_dir, data_dir, _ = tiny_run
    config = lit_shapes.get_config("tiny")
    config.data.dir = data_dir
    config.resume_from = pre_dir
    with config.unlocked():
        config.evals.few_shot = ()  # keep the end-of-run eval short
    workdir = str(tmp_path / "lit")
    train_and_evaluate(config, workdir)

    _, before = checkpoint.load_state(pre_dir)
    step, after = checkpoint.load_state(workdir)
    assert step == config.total_steps
    b, a = _flat(before["params"]), _flat(after["params"])
    assert b.keys() == a.keys()
    img = [k for k in b if k.startswith("img/")]
    txt = [k for k in b if k.startswith("txt/")]
    assert img and txt
    for k in img:  # bit-identical: set_to_zero updates, and no weight decay reaches them
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    changed = [k for k in txt if not np.array_equal(a[k], b[k])]
    assert len(changed) > len(txt) // 2, f"only {changed} of the text tower moved"
    # params-only resume: the optimizer restarted, so the run really did `total_steps` new steps.
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        steps = [json.loads(line)["step"] for line in f if '"train"' in line]
    assert steps and steps[-1] == config.total_steps


def _finetune_config(pre_dir, data_dir, **overrides):
    from experiments.configs import finetune_shapes
    from mmfm.notebook_utils import set_dotted

    config = finetune_shapes.get_config("tiny")
    config.data.dir = data_dir
    config.resume_from = pre_dir
    config.evals.few_shot = ()  # keep the end-of-run eval short
    for key, value in overrides.items():
        set_dotted(config, key, value)
    return config


def test_finetune_through_the_trainer_starts_from_the_run_and_fits(tiny_run, tmp_path):
    from mmfm.evals import datasets as ds
    from mmfm.evals.evaluators import build_evaluators
    from mmfm.evals.model_io import EvalModel
    from mmfm.evals.runner import train_and_evaluate
    from mmfm.models.config import model_config_from_dict
    from mmfm.models.multimodal import TwoTower

    pre_dir, data_dir, _ = tiny_run
    # 64 records hold 34 single-object images: 40 steps of 16 are ~20 epochs over them. Without
    # the flip augmentation: the check is whether the head and tower fit these very images.
    config = _finetune_config(pre_dir, data_dir, total_steps=40, log_every=1,
                              checkpoint_every=20, **{"data.max_train_examples": 64,
                                                      "data.flip": False})
    with config.unlocked():  # how well the head fits its own labels
        config.evals.evaluators.train_head = dict(type="classify", dataset="captioned_shapes",
                                                  label_key="shape", split="train",
                                                  max_examples=64)
    workdir = str(tmp_path / "ft")
    train_and_evaluate(config, workdir)

    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    # The at-start baseline is the linear probe of the *pretrained* features.
    start = [r for r in records if r["kind"] == "eval" and r["step"] == 0]
    assert len(start) == 1 and set(start[0]) >= {"linear_probe/accuracy"}, start
    probe_cfg = dict(config.evals.evaluators.linear_probe.to_dict(), name="linear_probe")
    pretrained = EvalModel.from_checkpoint(pre_dir)
    want = build_evaluators({"evaluators": [probe_cfg]}, data_dir=data_dir,
                            shapes={k: config.data[k] for k in ds.SHAPES_KEYS})[0].run(pretrained)
    assert start[0]["linear_probe/accuracy"] == want["linear_probe/accuracy"]

    losses = [r["loss/classify"] for r in records if r["kind"] == "train"]
    print(f"fine-tune losses {losses}")
    # One batch per logged loss: compare means of ten (single batches of 16 are noisy).
    assert len(losses) == 40 and np.mean(losses[-10:]) < np.mean(losses[:10]), losses
    end = [r for r in records if r["kind"] == "eval" and r["step"] == 40][-1]
    assert end["train_head/top1"] >= 2 / 6, end  # twice chance on 6 shapes

    # Parameters: everything but the head came from the run; the frozen parts did not move.
    _, before = checkpoint.load_state(pre_dir)
    step, after = checkpoint.load_state(workdir)
    b, a = _flat(before["params"]), _flat(after["params"])
    assert step == 40 and set(a) - set(b) == {"classifier/kernel", "classifier/bias"}
    for k in b:
        if not k.startswith("img/"):  # text tower, temperature, MAE decoder: frozen
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert sum(not np.array_equal(a[k], b[k]) for k in b if k.startswith("img/")) > 10

    # head/top1 against numpy: logits = the tower's embedding @ kernel + bias on the test images.
    run = checkpoint.load_run(workdir)
    model = TwoTower(model_config_from_dict(run.model_config))
    test = ds.load_classification("captioned_shapes", "test", data_dir=data_dir, label_key="shape",
                                  shapes={k: config.data[k] for k in ds.SHAPES_KEYS})
    m = EvalModel.from_checkpoint(workdir)
    x = m.preprocess_images(test.images.images(range(len(test.images))))
    emb = model.apply({"params": run.params}, jnp.asarray(x), method=lambda mdl, v: mdl.img(v)[0])
    logits = np.asarray(emb, np.float64) @ a["classifier/kernel"] + a["classifier/bias"]
    top1 = float(np.mean(np.argmax(logits, 1) == test.labels))
    assert abs(end["head/top1"] - top1) < 1e-9, (end["head/top1"], top1)


def test_finetune_partial_resume_refuses_what_it_cannot_do(tiny_run, tmp_path):
    from mmfm.checkpoint import CheckpointMismatchError
    from mmfm.train.loop import train

    pre_dir, data_dir, _ = tiny_run
    bad = [({"resume_mode": "full"}, r"resume_dont_load=\['\^classifier/'\] needs resume_mode='params'"),
           ({"resume_dont_load": ("^head/",)}, r"resume_dont_load \['\^head/'\] matches no parameter"),
           ({"model.image.mlp_dim": 48}, r"shape mismatch at `params/img/"),
           ({"data.label": "size"}, r"config\.data\.label='size'")]
    for i, (overrides, message) in enumerate(bad):
        config = _finetune_config(pre_dir, data_dir, **overrides)
        with pytest.raises((ValueError, CheckpointMismatchError), match=message):
            train(config, str(tmp_path / f"bad{i}"))
