"""The pure train step: one compile, every loss term as a metric, weights that switch branches."""
import dataclasses
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.configs import demo
from mmfm.train import optim
from mmfm.config_utils import model_config, objective_config
from mmfm.models.multimodal import TwoTower
from mmfm.train.state import create_state
from mmfm.train import flops as flops_lib
from mmfm.train.step import StepConfig, loss_and_metrics, train_step


def tiny_setup(*, model=None, total_steps=None, **loss):
    """(step config, state, batch) of the tiny demo config with `loss` (and `model`) overrides."""
    config = demo.get_config("tiny")
    with config.unlocked():
        for k, v in loss.items():
            config.loss[k] = v
        config.model.update(model or {})
        config.total_steps = total_steps or config.total_steps
        if config.loss.contrastive == "siglip":
            config.model.init_bias = -10.0
    cfg = model_config(config)
    model = TwoTower(cfg)
    tx, lr_fn = optim.make_optimizer(config.optim, config.total_steps)
    sc = StepConfig(model=model, tx=tx, lr_fn=lr_fn, objective=objective_config(config),
                    mean=tuple(config.preprocess.mean), std=tuple(config.preprocess.std))
    state = create_state(jax.random.PRNGKey(0), model=model, tx=tx)
    rng = np.random.default_rng(0)
    b, s, L = config.batch_size, cfg.image.image_size, cfg.text.context_length
    tokens = np.zeros((b, L), np.int32)
    tokens[:, 0], tokens[:, 1:6], tokens[:, 6] = 2, rng.integers(5, 200, (b, 5)), 3
    batch = {"image": jnp.asarray(rng.integers(0, 256, (b, s, s, 3), np.uint8)),
             "tokens": jnp.asarray(tokens)}
    return sc, state, batch


def test_step_compiles_once_and_reports_every_term():
    sc, state, batch = tiny_setup()
    def step_fn(state, batch):
        return train_step(state, batch, sc=sc)

    step = jax.jit(chex.assert_max_traces(step_fn, n=1), donate_argnums=(0,))
    for _ in range(3):
        state, metrics = step(state, batch)
    assert int(state.step) == 3
    for key in ("loss", "loss/clip", "loss/mae", "loss/mlm", "mlm/accuracy", "lr", "grad_norm",
                "param_norm", "update_norm", "scale"):
        assert key in metrics and np.isfinite(metrics[key]), key
    total = (metrics["loss/clip"] + metrics["loss/mae"] * sc.objective.mae_weight
             + metrics["loss/mlm"] * sc.objective.mlm_weight)
    np.testing.assert_allclose(metrics["loss"], total, rtol=1e-6)


def test_repeated_batch_is_fitted():
    sc, state, batch = tiny_setup()
    sc = dataclasses.replace(sc, tx=optim.make_optimizer(
        demo.get_config("tiny").optim.copy_and_resolve_references(), 1000)[0])
    state = create_state(jax.random.PRNGKey(0), model=sc.model, tx=sc.tx)
    step = jax.jit(functools.partial(train_step, sc=sc))
    losses = []
    for _ in range(30):
        state, m = step(state, batch)
        losses.append(float(m["loss"]))
    assert losses[-1] < 0.7 * losses[0], losses


def _leaves(params):
    """{"img/head/kernel": leaf, ...} for every leaf of a parameter tree."""
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    return {"/".join(k.key for k in path): leaf for path, leaf in flat}


def _select(params, paths):
    """The leaves under any of the `paths` ("img/head", "mae_decoder", ...)."""
    return {k: v for k, v in _leaves(params).items()
            if any(k == q or k.startswith(q + "/") for q in paths)}


MLM_HEAD = ["txt/mlm_bias", "txt/mlm_dense", "txt/mlm_ln"]


@pytest.mark.parametrize("weights, present, absent, skipped, used", [
    (dict(mae_weight=0.0, mlm_weight=0.0), ["loss/clip"], ["loss/mae", "loss/mlm"],
     ["mae_decoder"] + MLM_HEAD, ["t", "img/head", "txt/head"]),
    (dict(contrastive_weight=0.0), ["loss/mae", "loss/mlm"], ["loss/clip", "scale"],
     ["t", "img/head", "txt/head"], ["mae_decoder"] + MLM_HEAD),
    (dict(contrastive="siglip"), ["loss/siglip"], ["loss/clip"], [], ["b", "t"]),
])
def test_zero_weights_skip_their_branch(weights, present, absent, skipped, used):
    """A 0-weight branch is not computed: NaN in the parameters only it uses (0 * NaN would be
    NaN) leaves the loss, every metric and every other gradient bit-identical, and those
    parameters get exactly zero gradient; the branches that run give their parameters gradient."""
    sc, state, batch = tiny_setup(**weights)
    rng = jax.random.PRNGKey(1)
    grad_fn = jax.jit(jax.grad(lambda p: loss_and_metrics(p, batch, rng, sc), has_aux=True))
    grads, metrics = grad_fn(state.params)
    for k in present:
        assert k in metrics
    for k in absent:
        assert k not in metrics
    assert all(np.any(np.asarray(g) != 0) for g in _select(grads, used).values()), used

    poison = set(_select(state.params, skipped))
    assert len(poison) >= len(skipped)  # every named parameter exists: the check is not vacuous
    nan_params = jax.tree_util.tree_map_with_path(
        lambda path, x: jnp.full_like(x, jnp.nan) if "/".join(k.key for k in path) in poison else x,
        state.params)
    nan_grads, nan_metrics = grad_fn(nan_params)
    for k, v in metrics.items():
        np.testing.assert_array_equal(nan_metrics[k], v, err_msg=k)
    clean = _leaves(grads)
    for k, g in _leaves(nan_grads).items():
        if k in poison:
            assert not np.any(np.asarray(g)), f"{k}: a skipped branch's parameter got gradient"
        else:
            np.testing.assert_array_equal(g, clean[k], err_msg=k)


def _grad_flops(sc, state, batch):
    """Compiled FLOPs of the loss and its gradients (no optimizer update)."""
    fn = jax.jit(jax.grad(lambda p: loss_and_metrics(p, batch, jax.random.PRNGKey(1), sc)[0]))
    return fn.lower(state.params).compile().cost_analysis()["flops"]


def test_zero_masked_weights_cost_what_a_model_without_decoder_costs():
    """With mae/mlm weights 0 the loss and gradients cost exactly what they cost for the same
    model built without MAE decoder and MLM head: nothing of the masked branches is left."""
    sc, state, batch = tiny_setup(mae_weight=0.0, mlm_weight=0.0)
    cfg = dataclasses.replace(sc.model.cfg, mae_decoder=None,
                              text=dataclasses.replace(sc.model.cfg.text, mlm_head=False))
    bare = dataclasses.replace(sc, model=TwoTower(cfg))
    bare_state = create_state(jax.random.PRNGKey(0), model=bare.model, tx=bare.tx)
    skipped = _grad_flops(sc, state, batch)
    assert skipped == _grad_flops(bare, bare_state, batch)
    assert skipped < _grad_flops(*tiny_setup())  # not vacuous: the masked terms do cost FLOPs


def test_shared_view_runs_the_image_tower_once():
    """Equal contrastive and MAE ratios: one encoder pass, so fewer FLOPs than separate views."""
    def flops(**loss):
        sc, state, batch = tiny_setup(**loss)
        f = jax.jit(functools.partial(train_step, sc=sc)).lower(state, batch).compile()
        return f.cost_analysis()["flops"]
    shared = flops(patch_drop=0.75, mae_ratio=0.75)
    separate = flops(patch_drop=0.5, mae_ratio=0.75)
    sc, _, _ = tiny_setup(patch_drop=0.75, mae_ratio=0.75)
    assert sc.objective.shared_image_view
    assert shared < separate


def test_masked_sub_batch_gives_the_masked_terms_of_its_rows():
    """masked_batch_frac=0.5: MAE / MLM are the terms of every second row; CLIP sees all."""
    sc_half, state, batch = tiny_setup(masked_batch_frac=0.5)
    sc_full, _, _ = tiny_setup()
    half = {k: np.asarray(v)[::2] for k, v in batch.items()}
    rng = jax.random.PRNGKey(1)
    # Jitted: op-by-op dispatch of the whole model costs minutes on CPU, a compile seconds.
    metrics = lambda sc, b: jax.jit(lambda p, b: loss_and_metrics(p, b, rng, sc)[1])(
        state.params, b)
    m_half, m_first = metrics(sc_half, batch), metrics(sc_full, half)
    for key in ("loss/mae", "loss/mlm", "mlm/accuracy"):
        np.testing.assert_allclose(m_half[key], m_first[key], rtol=1e-6, err_msg=key)
    m_all = metrics(sc_full, batch)
    np.testing.assert_allclose(m_half["loss/clip"], m_all["loss/clip"], rtol=1e-6)
    assert not np.allclose(m_half["loss/clip"], m_first["loss/clip"])

    def compiled_flops(sc):
        return jax.jit(functools.partial(train_step, sc=sc)).lower(state, batch).compile() \
            .cost_analysis()["flops"]
    counted = [flops_lib.train_flops_per_example(sc.model.cfg, sc.objective)
               for sc in (sc_half, sc_full)]
    assert compiled_flops(sc_half) < compiled_flops(sc_full) and counted[0] < counted[1]
    with pytest.raises(ValueError, match="masked_batch_frac"):
        tiny_setup(masked_batch_frac=0.0)


def test_frozen_tower_does_not_move():
    sc, state, batch = tiny_setup()
    config = demo.get_config("tiny")
    with config.unlocked():
        config.optim.freeze = ("^img/",)
    tx, _ = optim.make_optimizer(config.optim, config.total_steps, state.params)
    sc = dataclasses.replace(sc, tx=tx)
    state = create_state(jax.random.PRNGKey(0), model=sc.model, tx=tx)
    step = jax.jit(functools.partial(train_step, sc=sc))
    new, _ = step(step(state, batch)[0], batch)  # two steps: warmup makes the first lr 0
    chex.assert_trees_all_equal(new.params["img"], state.params["img"])
    assert not np.allclose(new.params["txt"]["head"]["kernel"], state.params["txt"]["head"]["kernel"])
    with pytest.raises(ValueError, match="matches no parameter"):
        optim.frozen_labels(state.params, ("^nothing/",))


def test_schedule_warmup_then_cosine_to_end():
    fn = optim.schedule(lr=1.0, total_steps=100, warmup_steps=10, end_lr_frac=0.1)
    assert float(fn(0)) == 0.0 and abs(float(fn(10)) - 1.0) < 1e-6
    assert abs(float(fn(100)) - 0.1) < 1e-6
    assert float(fn(55)) == pytest.approx(0.1 + 0.9 * 0.5, abs=1e-6)


def _classify_setup(**loss):
    """The tiny demo model with a 5-class head; the classification term alone unless `loss`."""
    weights = dict(contrastive_weight=0.0, mae_weight=0.0, mlm_weight=0.0, classify_weight=1.0)
    # 30 steps: the tiny schedule's lr is 0 after its 4 steps
    sc, state, batch = tiny_setup(model={"num_classes": 5}, total_steps=30, **{**weights, **loss})
    labels = np.random.default_rng(1).integers(0, 5, (batch["image"].shape[0],))
    return sc, state, dict(batch, label=jnp.asarray(labels, jnp.int32))


def test_classification_loss_is_numpy_cross_entropy():
    from mmfm.losses.objective import classification_loss

    rng = np.random.default_rng(0)
    logits, labels = rng.normal(size=(7, 4)) * 3, rng.integers(0, 4, 7)
    logp = logits - np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1, keepdims=True)) \
        - logits.max(1, keepdims=True)
    for eps in (0.0, 0.1):
        target = np.eye(4)[labels] * (1 - eps) + eps / 4
        want = -np.mean(np.sum(target * logp, axis=1))
        got = classification_loss(jnp.asarray(logits, jnp.float32), jnp.asarray(labels), eps)
        np.testing.assert_allclose(float(got), want, rtol=1e-5)


def test_classify_term_trains_the_head_and_image_tower_only():
    sc, state, batch = _classify_setup()
    # The zero-initialised head predicts uniformly: the first loss is log(5) exactly.
    (_, m0), grads = jax.value_and_grad(loss_and_metrics, has_aux=True)(
        state.params, batch, jax.random.PRNGKey(0), sc)
    np.testing.assert_allclose(float(m0["loss/classify"]), np.log(5), rtol=1e-6)
    assert set(m0) == {"loss", "loss/classify", "classify/accuracy"}, sorted(m0)
    assert np.any(np.asarray(grads["classifier"]["kernel"]))
    for tower in ("txt", "mae_decoder"):  # not on the classification path: exactly zero
        assert not any(np.any(np.asarray(g)) for g in jax.tree.leaves(grads[tower])), tower
    step = jax.jit(functools.partial(train_step, sc=sc))
    for _ in range(30):
        state, m = step(state, batch)
    assert float(m["loss/classify"]) < 0.5 * np.log(5), m  # a fixed batch is memorised
    assert float(m["classify/accuracy"]) > 0.8, m


def test_classify_reuses_the_contrastive_pass_only_without_patch_drop():
    """The head reads the contrastive pass when it sees every patch (it adds only its own matmul);
    with FLIP patch dropping the head needs a full-image pass of its own."""
    def cost(drop, classify):
        sc, state, batch = _classify_setup(contrastive_weight=1.0, patch_drop=drop,
                                           classify_weight=classify)
        return _grad_flops(sc, state, batch)

    full, full_cls = cost(0.0, 0.0), cost(0.0, 1.0)
    drop, drop_cls = cost(0.5, 0.0), cost(0.5, 1.0)
    print(f"grad FLOPs: no drop {full:.3g} -> +head {full_cls:.3g}; drop 0.5 {drop:.3g} -> "
          f"+head {drop_cls:.3g}")
    assert full < full_cls < full * 1.01
    assert drop_cls - drop > 0.2 * drop
