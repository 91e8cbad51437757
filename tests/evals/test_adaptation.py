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


def test_finetune_loads_the_pretrained_tower_and_trains(tiny_run, tmp_path):
    from experiments.configs import finetune_shapes
    from mmfm.evals.finetune import ImageClassifier, finetune, load_pretrained_image_tower
    from mmfm.evals.model_io import EvalModel

    pre_dir, data_dir, run_cfg = tiny_run
    cfg = finetune_shapes.get_config("tiny")
    cfg.data.dir = data_dir
    cfg.init_from = pre_dir

    # The classifier's features are exactly the trained model's image embeddings.
    model_cfg, img_params, _ = load_pretrained_image_tower(pre_dir)
    clf = ImageClassifier(model_cfg, 6)
    x = jax.random.normal(jax.random.PRNGKey(0), (3, 32, 32, 3))
    head = {"kernel": jnp.zeros((model_cfg.embed_dim, 6)), "bias": jnp.zeros((6,))}
    ours = clf.apply({"params": {"img": img_params, "head": head}}, x, method=clf.features)
    m = EvalModel.from_checkpoint(pre_dir)
    ref = m.model.apply({"params": m.params}, x, method=m.model.encode_image)[0]
    np.testing.assert_allclose(np.asarray(ours), np.asarray(ref), rtol=1e-6, atol=1e-6)

    # Long enough to fit its 64 labels: the fit must move well beyond chance (1/6 for shape).
    with cfg.unlocked():
        cfg.total_steps, cfg.log_every = 40, 10
    res = finetune(cfg, str(tmp_path / "ft"))
    for k in ("probe/accuracy", "finetune/accuracy", "finetune/train_accuracy"):
        assert 0.0 <= res[k] <= 1.0
    assert res["num_test"] > 0 and res["num_train"] > 0
    with open(tmp_path / "ft" / "metrics.jsonl") as f:
        losses = [json.loads(line)["loss"] for line in f if '"finetune"' in line]
    print(f"fine-tune losses {losses}; train accuracy {res['finetune/train_accuracy']:.3f}")
    assert len(losses) == 4 and all(b < a for a, b in zip(losses, losses[1:])), losses
    assert res["finetune/train_accuracy"] >= 2 / 6, res  # twice chance on 6 shapes (0.50 here)
    with open(tmp_path / "ft" / "finetune_results.json") as f:
        assert json.load(f)["finetune/accuracy"] == res["finetune/accuracy"]


def test_finetune_freeze_keeps_tower_fixed():
    from experiments.configs import finetune_shapes
    from mmfm.evals.finetune import make_tx

    cfg = finetune_shapes.get_config("tiny")
    cfg.optim.freeze = ("^img/",)
    params = {"img": {"w": jnp.ones((2, 2))}, "head": {"kernel": jnp.ones((2, 3))}}
    tx = make_tx(cfg.optim, 10, params)
    grads = jax.tree.map(jnp.ones_like, params)
    state = tx.init(params)
    for _ in range(2):  # the first step has lr 0 (warmup starts at 0)
        updates, state = tx.update(grads, state, params)
    assert not np.any(np.asarray(updates["img"]["w"]))
    assert np.all(np.asarray(updates["head"]["kernel"]) != 0)
