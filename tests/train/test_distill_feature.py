"""Feature distillation (`loss.distill_feature_weight`): the student's projection into the
teacher's embedding space is a student parameter (built, sharded, optimized, checkpointed,
resumed) and is left out of exports. The teacher is `distill_demo.py:tiny`'s "init" teacher
(embed_dim 32; the student's is 16). The loss itself: tests/losses/test_distill_loss.py."""
import dataclasses
import json
import os

import flax.linen as nn
import jax
import numpy as np
import pytest

from mmfm import checkpoint
from mmfm.config_utils import model_config, objective_config
from mmfm.notebook_utils import load_config
from mmfm.train import flops

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DISTILL = os.path.join(ROOT, "experiments/configs/distill_demo.py")
FEATURE = {"loss.distill_feature_weight": 1.0}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    from mmfm.data.synthetic import prepare_captioned_shapes

    d = os.environ.get("MMFM_TEST_DATA_DIR") or str(tmp_path_factory.mktemp("shapes"))
    prepare_captioned_shapes(d, image_size=32, num_train=256, num_test=64, seed=0)
    return d


def _student(data_dir, **overrides):
    return load_config(f"{DISTILL}:tiny", {"data.dir": data_dir, **overrides})


def _trainer(data_dir, tmp_path, **overrides):
    from mmfm.train.loop import Trainer

    return Trainer(_student(data_dir, **overrides), str(tmp_path))


def _student_model(config, teacher_dim=32):
    """The student's TwoTower as the Trainer builds it next to a `teacher_dim`-wide teacher."""
    from mmfm.models.multimodal import TwoTower
    from mmfm.train.teacher import with_distill_projection

    return TwoTower(with_distill_projection(model_config(config), objective_config(config),
                                            teacher_dim))


def test_projection_is_a_sharded_optimized_student_parameter(data_dir):
    from mmfm import sharding as sh
    from mmfm.models.multimodal import init_params
    from mmfm.train import optim
    from mmfm.train.state import create_state, state_shardings

    config = _student(data_dir, **FEATURE)
    model = _student_model(config)
    assert model.cfg.embed_dim == 16 and model.cfg.distill_dim == 32
    boxed = jax.eval_shape(lambda r: init_params(model, r), jax.random.PRNGKey(0))
    kernel = boxed["distill_proj"]["kernel"]
    assert kernel.names == ("embed", None) and kernel.value.shape == (16, 32)
    # On an 8-way FSDP mesh it is split along `embed` like the towers' weights, and AdamW keeps
    # two moments for it (it is optimized) with the same sharding.
    mesh = sh.make_mesh((1, -1, 1))
    rules = sh.normalize_rules(config.mesh.rules)
    params = jax.eval_shape(lambda r: nn.meta.unbox(init_params(model, r)), jax.random.PRNGKey(0))
    tx, _ = optim.make_optimizer(config.optim, config.total_steps, params)
    shardings = state_shardings(model, tx, mesh, rules)
    spec = shardings.params["distill_proj"]["kernel"].spec
    assert tuple(spec) == ("fsdp", None), spec
    state = jax.eval_shape(lambda r: create_state(r, model=model, tx=tx), jax.random.PRNGKey(0))
    moments = [p for p, x in jax.tree_util.tree_flatten_with_path(state.opt_state)[0]
               if "distill_proj" in jax.tree_util.keystr(p)]
    assert len(moments) == 2
    # The FLOP model counts it: 2 towers x 2 x 16 x 32 forward, x3 for training.
    plain = dataclasses.replace(model.cfg, distill_dim=0)
    obj = objective_config(config)
    diff = (flops.train_flops_per_example(model.cfg, obj)
            - flops.train_flops_per_example(plain, obj))
    assert diff == 3 * 2 * 2 * 16 * 32


def test_feature_distillation_off_builds_nothing(data_dir):
    from mmfm.models.multimodal import init_params

    model = _student_model(_student(data_dir))  # loss.distill_feature_weight at its default 0
    assert model.cfg.distill_dim == 0
    params = jax.eval_shape(lambda r: init_params(model, r), jax.random.PRNGKey(0))
    assert "distill_proj" not in params


def test_feature_term_needs_a_teacher_and_a_matching_projection(data_dir, tmp_path):
    from mmfm.train.teacher import with_distill_projection

    with pytest.raises(ValueError, match="loss.distill_feature_weight > 0 needs a teacher"):
        _trainer(data_dir, tmp_path, **FEATURE, **{"loss.distill_weight": 0.0,
                                                   "distill.teacher": ""})
    cfg = model_config(_student(data_dir))
    obj = objective_config(_student(data_dir, **FEATURE))
    with pytest.raises(ValueError, match="teacher's embedding"):
        with_distill_projection(dataclasses.replace(cfg, distill_dim=8), obj, 32)
    off = objective_config(_student(data_dir))
    with pytest.raises(ValueError, match="only loss.distill_feature_weight > 0 trains"):
        with_distill_projection(dataclasses.replace(cfg, distill_dim=32), off, 0)
    assert with_distill_projection(cfg, obj, 32).distill_dim == 32
    # Alone (no other loss term) it is a valid objective.
    alone = objective_config(_student(data_dir, **FEATURE, **{"loss.distill_weight": 0.0,
                                                              "loss.contrastive_weight": 0.0}))
    assert alone.needs_teacher and alone.use_embeddings and not alone.use_distill


def test_an_old_run_resumes_with_the_new_key_off():
    """A checkpoint saved before the key existed: the key at 0 is no objective change."""
    from mmfm.train.resume_config import ResumeConfigError, check_resume

    current = {"loss": {"distill_weight": 1.0, "distill_feature_weight": 0.0}}
    saved = {"loss": {"distill_weight": 1.0}}
    assert check_resume(saved, current, step=4, workdir="w") == {
        "loss.distill_feature_weight": ("<absent>", 0.0)}
    with pytest.raises(ResumeConfigError, match="distill_feature_weight"):
        check_resume(saved, {"loss": {"distill_weight": 1.0, "distill_feature_weight": 1.0}},
                     step=4, workdir="w")


@pytest.mark.slow  # two models compiled for a gradient on 8 devices
def test_gradient_reaches_projection_and_student_but_not_teacher(data_dir, tmp_path):
    from mmfm.train.step import loss_and_metrics

    tr = _trainer(data_dir, tmp_path, **FEATURE)
    assert tr.teacher.spec.model.cfg.embed_dim == 32 and tr.model_cfg.distill_dim == 32
    # The feature term alone, so every gradient below is its own.
    obj = dataclasses.replace(tr.obj, contrastive_weight=0.0, distill_weight=0.0)
    sc = dataclasses.replace(tr.step_cfg, objective=obj)
    state, it = tr.init_state(), iter(tr.train_loader)
    try:
        batch = tr.global_batch(next(it))
    finally:
        it.close()

    def loss(p, tp):
        return loss_and_metrics(p, batch, jax.random.PRNGKey(0), sc, tp)

    with tr.mesh_context():
        (value, metrics), (g_student, g_teacher) = jax.jit(
            jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(state.params,
                                                                    tr.teacher.params)
    m = jax.device_get(metrics)
    assert 0 < m["loss/distill_feature"] < 2 and float(value) == m["loss/distill_feature"]
    assert "loss/clip" not in m and "loss/distill" not in m
    assert np.any(np.asarray(g_student["distill_proj"]["kernel"]))
    for tower in ("img", "txt"):
        assert any(np.any(np.asarray(x)) for x in jax.tree.leaves(g_student[tower])), tower
    assert not any(np.any(np.asarray(x)) for x in jax.tree.leaves(g_teacher))


@pytest.mark.slow  # the real loop twice (two models on 8 devices), an export, its embeddings
def test_run_logs_resumes_and_exports_without_the_projection(data_dir, tmp_path):
    import mmfm
    from mmfm.models.config import model_config_from_dict
    from mmfm.models.multimodal import TwoTower
    from mmfm.train.loop import train
    from mmfm.zoo.export import export_from_workdir

    w = str(tmp_path / "run")
    config = lambda: _student(data_dir, **FEATURE, **{"checkpoint_every": 2})
    train(config(), w, max_steps=2)
    train(config(), w)  # resumes at step 2 (the projection restored with the rest)
    with open(os.path.join(w, "metrics.jsonl")) as f:
        recs = [r for r in map(json.loads, f) if r["kind"] == "train"]
    assert [r["step"] for r in recs] == [2, 4]
    for r in recs:
        assert 0 < r["loss/distill_feature"] < 2, r
        np.testing.assert_allclose(
            r["loss"], r["loss/clip"] + r["loss/distill"] + r["loss/distill_feature"], rtol=1e-6)
    with open(os.path.join(w, "run_info.json")) as f:
        assert [h["step"] for h in json.load(f)["resumes"]] == [2]
    run = checkpoint.load_run(w)
    assert run.step == 4 and run.params["distill_proj"]["kernel"].shape == (16, 32)
    assert model_config_from_dict(run.model_config).distill_dim == 32

    out = export_from_workdir(w, str(tmp_path / "export"))
    with open(os.path.join(out, "config.json")) as f:
        assert "distill_dim" not in json.load(f)["model"]
    with open(os.path.join(out, "MODEL_CARD.md")) as f:
        card = f.read()
    assert "feature distillation (1 - cosine" in card and "similarities x 1" in card
    model, params, _, preprocess = mmfm.create_model_and_transforms(out)
    assert model.cfg.distill_dim == 0 and "distill_proj" not in params
    rng = np.random.default_rng(0)
    images = preprocess.normalize(rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8))
    texts = ["a small red circle", "a large blue square", "a green triangle"]
    tok = mmfm.get_tokenizer(out)
    got_img = np.asarray(mmfm.encode_image(model, params, images))
    got_txt = np.asarray(mmfm.encode_text(model, params, texts, tokenizer=tok))
    # The run's own model (with its projection) embeds the same: the export dropped only it.
    run_model = TwoTower(model_config_from_dict(run.model_config))
    want_img = np.asarray(mmfm.encode_image(run_model, run.params, images))
    want_txt = np.asarray(mmfm.encode_text(run_model, run.params, texts, tokenizer=tok))
    assert got_img.shape == (3, 16) and got_txt.shape == (3, 16)
    np.testing.assert_allclose(got_img, want_img, atol=1e-6)
    np.testing.assert_allclose(got_txt, want_txt, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(got_img, axis=1), 1.0, rtol=1e-5)
