"""Distillation in the Trainer: a tiny demo run as the frozen teacher of the distill_demo student,
on the 8 virtual CPU devices (tests/conftest.py). The loss itself: tests/losses/test_distill_loss.py;
resume after SIGKILL with a teacher: tests/checkpoint/test_distill_resume.py."""
import json
import os

import jax
import numpy as np
import pytest

from mmfm import checkpoint
from mmfm.config_utils import model_config, objective_config
from mmfm.notebook_utils import load_config
from mmfm.train import flops

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEMO = os.path.join(ROOT, "experiments/configs/demo.py")
DISTILL = os.path.join(ROOT, "experiments/configs/distill_demo.py")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    from mmfm.data.synthetic import prepare_captioned_shapes

    d = os.environ.get("MMFM_TEST_DATA_DIR") or str(tmp_path_factory.mktemp("shapes"))
    prepare_captioned_shapes(d, image_size=32, num_train=256, num_test=64, seed=0)
    return d


@pytest.fixture(scope="module")
def teacher_run(data_dir, tmp_path_factory):
    """A 2-step `demo.py:tiny` run (no evals): the teacher's workdir."""
    from mmfm.train.loop import train

    w = str(tmp_path_factory.mktemp("teacher"))
    train(load_config(f"{DEMO}:tiny", {"data.dir": data_dir, "total_steps": 2}), w)
    return w


def _student(data_dir, **overrides):
    return load_config(f"{DISTILL}:tiny", {"data.dir": data_dir, **overrides})


def test_student_has_over_4x_fewer_flops_than_the_demo():
    teacher, student = load_config(DEMO), load_config(DISTILL)
    mt, ms = model_config(teacher), model_config(student)
    fwd = lambda m: flops.image_forward_flops(m) + flops.text_forward_flops(m)
    ratio = fwd(mt) / fwd(ms)
    train_ratio = (flops.train_flops_per_example(mt, objective_config(teacher))
                   / flops.train_flops_per_example(ms, objective_config(student)))
    print(f"forward FLOPs/example: demo {fwd(mt):.3g}, student {fwd(ms):.3g} ({ratio:.1f}x); "
          f"training {train_ratio:.1f}x")
    assert ratio >= 4 and train_ratio >= 4
    assert student.distill.teacher == "runs/demo" and student.loss.distill_weight > 0
    assert student.data.to_dict() == teacher.data.to_dict()  # the teacher's data and tokenizer


@pytest.mark.slow  # a teacher run, then the student's step on 8 devices: minutes on 2 shared cores
def test_teacher_is_frozen_and_distill_loss_is_logged(teacher_run, data_dir, tmp_path):
    from mmfm.train.loop import Trainer
    from mmfm.train.step import loss_and_metrics

    tr = Trainer(_student(data_dir, **{"distill.teacher": teacher_run}), str(tmp_path))
    saved = checkpoint.load_run(teacher_run).params  # numpy, as written by the teacher's run
    assert tr.teacher.spec.model.cfg.embed_dim == 32 and tr.model_cfg.embed_dim == 16
    # Placed with the student's logical rules: the 8-device 'data' axis replicates weights.
    assert all(s.mesh.shape == tr.mesh.shape for s in jax.tree.leaves(tr.teacher.shardings))
    state, it = tr.init_state(), iter(tr.train_loader)
    try:
        batch = next(it)
        for _ in range(3):
            state, metrics = tr.step(state, batch)
            batch = next(it)
    finally:
        it.close()
    m = jax.device_get(metrics)
    assert np.isfinite(m["loss/distill"]) and m["loss/distill"] > 0, m
    np.testing.assert_allclose(m["loss"], m["loss/clip"] + m["loss/distill"], rtol=1e-6)
    flat_saved = jax.tree_util.tree_flatten_with_path(saved)[0]
    flat_now = dict(jax.tree_util.tree_flatten_with_path(tr.teacher.params)[0])
    assert len(flat_saved) == len(flat_now)
    for path, leaf in flat_saved:
        assert np.asarray(flat_now[path]).tobytes() == np.asarray(leaf).tobytes(), path
    # The loss's gradient with respect to the teacher's params is exactly zero.
    with tr.mesh_context():
        g = jax.jit(jax.grad(lambda tp, p, b: loss_and_metrics(p, b, jax.random.PRNGKey(0),
                                                               tr.step_cfg, tp)[0]))(
            tr.teacher.params, state.params, tr.global_batch(batch))
    assert not any(np.any(np.asarray(x)) for x in jax.tree.leaves(g))


@pytest.mark.slow  # the real loop with two models to compile on 8 devices
def test_tiny_recipe_end_to_end_logs_distill_loss(data_dir, tmp_path):
    """`distill_demo.py:tiny` as it ships (an "init" teacher): the real loop, metrics.jsonl."""
    from mmfm.train.loop import train

    train(_student(data_dir), str(tmp_path))
    with open(tmp_path / "metrics.jsonl") as f:
        recs = [r for r in map(json.loads, f) if r["kind"] == "train"]
    assert [r["step"] for r in recs] == [2, 4]
    for r in recs:
        assert np.isfinite(r["loss/distill"]) and r["loss/distill"] > 0 and "loss/clip" in r
    assert checkpoint.load_run(str(tmp_path)).step == 4  # the teacher is not in the checkpoint
    assert not any(k.startswith("teacher") for k in checkpoint.load_run(str(tmp_path)).params)


def test_distill_off_builds_no_teacher(data_dir, tmp_path):
    from mmfm.train.loop import Trainer

    tr = Trainer(_student(data_dir, **{"loss.distill_weight": 0.0,
                                       "distill.teacher": "/no/such/run"}), str(tmp_path))
    assert tr.teacher is None and tr.step_cfg.teacher is None


@pytest.mark.parametrize("teacher, match", [
    ("", "distill.teacher: loss.distill_weight > 0 needs a teacher"),
    ("/no/such/run", "distill.teacher='/no/such/run': not found"),
])
def test_missing_teacher_is_one_clear_error(data_dir, tmp_path, teacher, match):
    from mmfm.train.loop import Trainer

    with pytest.raises(ValueError, match=match):
        Trainer(_student(data_dir, **{"distill.teacher": teacher}), str(tmp_path))


def test_another_tokenizer_is_refused(tmp_path):
    from mmfm.data.tokenizers import load_tokenizer, train_tokenizer
    from mmfm.models.config import model_config_from_dict
    from mmfm.models.multimodal import TwoTower
    from mmfm.train.teacher import check_same_tokens

    words = ["red", "green", "blue", "circle", "square", "small", "large", "left", "of"]
    texts = [f"a {a} {b} {c}" for a in words for b in words for c in words[:3]]
    a, b = str(tmp_path / "a.model"), str(tmp_path / "b.model")
    train_tokenizer(texts, a, vocab_size=64)
    train_tokenizer([t.upper() + " zebra" for t in texts], b, vocab_size=72)
    tok_a, tok_b = load_tokenizer(a), load_tokenizer(b)
    model = TwoTower(model_config_from_dict(load_config(f"{DEMO}:tiny").model.to_dict(),
                                            vocab_size=tok_b.vocab_size, context_length=16))
    check_same_tokens(tok_a, load_tokenizer(a), 16, model)  # the same file passes
    with pytest.raises(ValueError, match="tokenizer differs from the student's data tokenizer"):
        check_same_tokens(tok_a, tok_b, 16, model)
    with pytest.raises(ValueError, match="text context is 16 tokens"):
        check_same_tokens(tok_a, load_tokenizer(a), 32, model)


@pytest.mark.slow  # needs the teacher run
def test_an_export_of_the_teacher_loads_the_same_teacher(teacher_run, data_dir, tmp_path):
    """Through the API layer's resolver (what `mmfm train` passes in): same params, same spec."""
    from mmfm import api, sharding
    from mmfm.data.tokenizers import load_tokenizer
    from mmfm.train.teacher import load_teacher
    from mmfm.zoo.export import export_from_workdir

    out = export_from_workdir(teacher_run, str(tmp_path / "export"))
    run = checkpoint.load_run(teacher_run)
    tok = load_tokenizer(run.tokenizer_file, lowercase=run.tokenizer_lowercase)
    config = _student(data_dir, **{"distill.teacher": out})
    mesh, rules = sharding.mesh_from_config(config.mesh)
    kw = dict(tokenizer=tok, mesh=mesh, rules=rules)
    from_export = load_teacher(config, resolve=api.distill_teacher, **kw)
    config = _student(data_dir, **{"distill.teacher": teacher_run})
    from_run = load_teacher(config, **kw)
    assert from_export.spec.image_size == from_run.spec.image_size == 32
    np.testing.assert_allclose(from_export.spec.mean, from_run.spec.mean)
    a, b = jax.tree.leaves(from_export.params), jax.tree.leaves(from_run.params)
    assert len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))
    with pytest.raises(ValueError, match="distill.teacher='/no/such/export'"):
        load_teacher(_student(data_dir, **{"distill.teacher": "/no/such/export"}),
                     resolve=api.distill_teacher, **kw)
