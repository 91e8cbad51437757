"""Contrastive losses against float64 numpy formulas, and chunked (ring) vs dense on 8 devices."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.extend.core import ClosedJaxpr, Jaxpr
from jax.sharding import NamedSharding, PartitionSpec as P

from mmfm.losses import (chunked_clip_loss, chunked_siglip_loss, clip_loss, contrastive_loss,
                         siglip_loss)

AXES = ("data", "fsdp", "tensor")
SCALE, BIAS = 10.0, -2.0


def _embeddings(batch, dim=16, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(batch, dim))
    y = x + 0.7 * rng.normal(size=(batch, dim))  # correlated pairs: non-trivial positives
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y /= np.linalg.norm(y, axis=1, keepdims=True)
    return x.astype(np.float32), y.astype(np.float32)


def _mesh(shape):
    return jax.make_mesh(shape, AXES, axis_types=(jax.sharding.AxisType.Auto,) * 3)


def _rel_err(got, want):
    """Largest absolute difference relative to the largest reference magnitude."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return np.max(np.abs(got - want)) / max(np.max(np.abs(want)), 1e-30)


# ---- float64 numpy references: value and analytic gradients ---------------------------------


def _np_lse(a, axis):
    m = a.max(axis=axis, keepdims=True)
    return (m + np.log(np.exp(a - m).sum(axis=axis, keepdims=True))).squeeze(axis)


def np_clip(x, y, s):
    x, y = x.astype(np.float64), y.astype(np.float64)
    sim = x @ y.T
    logits = s * sim
    b = len(x)
    d = np.diag(logits)
    loss = 0.5 * (np.mean(_np_lse(logits, 1) - d) + np.mean(_np_lse(logits, 0) - d))
    soft_r = np.exp(logits - _np_lse(logits, 1)[:, None])
    soft_c = np.exp(logits - _np_lse(logits, 0)[None, :])
    g = 0.5 * ((soft_r - np.eye(b)) + (soft_c - np.eye(b))) / b  # dloss/dlogits
    return loss, (s * g @ y, s * g.T @ x, np.sum(g * sim))


def np_siglip(x, y, s, bias):
    x, y = x.astype(np.float64), y.astype(np.float64)
    sim = x @ y.T
    logits = s * sim + bias
    b = len(x)
    z = 2 * np.eye(b) - 1
    loss = np.sum(np.logaddexp(0.0, -z * logits)) / b  # -log_sigmoid(t) = log(1 + e^-t)
    g = -z / (1.0 + np.exp(z * logits)) / b  # d/dl of -log_sigmoid(z l) = -z sigmoid(-z l)
    return loss, (s * g @ y, s * g.T @ x, np.sum(g * sim), np.sum(g))


# ---- dense losses ---------------------------------------------------------------------------


@pytest.mark.parametrize("batch", [1, 3, 8, 32])
def test_clip_matches_numpy(batch):
    x, y = _embeddings(batch, seed=batch)
    loss, grads = jax.value_and_grad(clip_loss, argnums=(0, 1, 2))(x, y, jnp.float32(SCALE))
    ref, ref_grads = np_clip(x, y, SCALE)
    assert loss.dtype == jnp.float32
    assert abs(float(loss) - ref) <= 1e-5 * max(abs(ref), 1.0)
    if batch == 1:
        assert ref == 0.0  # a single pair is always classified correctly
    for g, r in zip(grads, ref_grads):
        np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("batch", [1, 3, 8, 32])
def test_siglip_matches_numpy(batch):
    x, y = _embeddings(batch, seed=batch)
    args = (x, y, jnp.float32(SCALE), jnp.float32(BIAS))
    loss, grads = jax.value_and_grad(siglip_loss, argnums=(0, 1, 2, 3))(*args)
    ref, ref_grads = np_siglip(x, y, SCALE, BIAS)
    assert loss.dtype == jnp.float32
    assert abs(float(loss) - ref) <= 1e-5 * abs(ref)
    for g, r in zip(grads, ref_grads):
        np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-6)


def test_bf16_inputs_are_computed_in_float32():
    x, y = _embeddings(16, dim=32, seed=7)
    xb, yb = jnp.asarray(x, jnp.bfloat16), jnp.asarray(y, jnp.bfloat16)
    # The rounded bf16 values, compared in float64: only float32 arithmetic error remains, so the
    # f32 tolerance holds. That would fail if the logits were computed in bf16.
    xr, yr = np.asarray(xb, np.float64), np.asarray(yb, np.float64)
    clip = clip_loss(xb, yb, jnp.float32(SCALE))
    sig = siglip_loss(xb, yb, jnp.float32(SCALE), jnp.float32(BIAS))
    assert clip.dtype == sig.dtype == jnp.float32
    assert abs(float(clip) - np_clip(xr, yr, SCALE)[0]) <= 1e-5 * np_clip(xr, yr, SCALE)[0]
    assert abs(float(sig) - np_siglip(xr, yr, SCALE, BIAS)[0]) <= 1e-5 * np_siglip(xr, yr, SCALE,
                                                                                     BIAS)[0]
    # Against the unrounded float32 embeddings only bf16 input rounding (~2^-8 relative per
    # value) separates the two: the looser 2e-2 tolerance applies to bf16 inputs only.
    assert _rel_err(clip, np_clip(x, y, SCALE)[0]) <= 2e-2
    assert _rel_err(sig, np_siglip(x, y, SCALE, BIAS)[0]) <= 2e-2


# ---- chunked (ring) vs dense ---------------------------------------------------------------

MESHES = [(8, 1, 1), (2, 4, 1), (1, 8, 1), (2, 2, 2)]
GLOBAL_BATCH, DIM = 32, 16


def _sharded_value_and_grad(fn, mesh, n_scalars):
    """jit(value_and_grad(fn)) with embeddings sharded over (data, fsdp), scalars replicated."""
    emb = NamedSharding(mesh, P(("data", "fsdp"), None))
    rep = NamedSharding(mesh, P())
    argnums = tuple(range(2 + n_scalars))
    return jax.jit(jax.value_and_grad(fn, argnums=argnums),
                   in_shardings=(emb, emb) + (rep,) * n_scalars)


@pytest.mark.parametrize("shape", MESHES)
def test_chunked_siglip_equals_dense(shape):
    mesh = _mesh(shape)
    x, y = _embeddings(GLOBAL_BATCH, DIM, seed=1)
    args = (x, y, jnp.float32(SCALE), jnp.float32(BIAS))
    f = _sharded_value_and_grad(lambda *a: chunked_siglip_loss(*a, mesh=mesh), mesh, 2)
    loss, grads = f(*args)
    ref, ref_grads = jax.value_and_grad(siglip_loss, argnums=(0, 1, 2, 3))(*args)
    assert _rel_err(loss, ref) <= 1e-5
    for g, r in zip(grads, ref_grads):
        assert _rel_err(g, r) <= 1e-5
    # Same against float64 numpy, so both cannot be wrong the same way.
    assert _rel_err(loss, np_siglip(x, y, SCALE, BIAS)[0]) <= 1e-5


@pytest.mark.parametrize("shape", MESHES)
def test_chunked_clip_equals_dense(shape):
    mesh = _mesh(shape)
    x, y = _embeddings(GLOBAL_BATCH, DIM, seed=2)
    args = (x, y, jnp.float32(SCALE))
    f = _sharded_value_and_grad(lambda *a: chunked_clip_loss(*a, mesh=mesh), mesh, 1)
    loss, grads = f(*args)
    ref, ref_grads = jax.value_and_grad(clip_loss, argnums=(0, 1, 2))(*args)
    assert _rel_err(loss, ref) <= 1e-5
    for g, r in zip(grads, ref_grads):
        assert _rel_err(g, r) <= 1e-5
    assert _rel_err(loss, np_clip(x, y, SCALE)[0]) <= 1e-5


def test_chunked_clip_handles_large_logits():
    # Logits up to ~200: exp() overflows float32 (past ~88) without the running max.
    mesh = _mesh((8, 1, 1))
    x, y = _embeddings(GLOBAL_BATCH, DIM, seed=3)
    loss = jax.jit(lambda a, b: chunked_clip_loss(a, b, 200.0, mesh=mesh))(x, y)
    ref = np_clip(x, y, 200.0)[0]
    assert ref > 0.1
    assert _rel_err(loss, ref) <= 1e-5


@pytest.mark.parametrize("mesh_shape", [None, (1, 1, 8)])
def test_chunked_falls_back_to_dense(mesh_shape):
    mesh = None if mesh_shape is None else _mesh(mesh_shape)
    x, y = _embeddings(8, seed=4)
    got = chunked_siglip_loss(x, y, SCALE, BIAS, mesh=mesh)
    assert _rel_err(got, np_siglip(x, y, SCALE, BIAS)[0]) <= 1e-5
    got = chunked_clip_loss(x, y, SCALE, mesh=mesh)
    assert _rel_err(got, np_clip(x, y, SCALE)[0]) <= 1e-5


def test_chunked_rejects_bad_batch_and_axes():
    mesh = _mesh((8, 1, 1))
    x, y = _embeddings(12, seed=5)
    with pytest.raises(ValueError, match="divisible"):
        chunked_siglip_loss(x, y, SCALE, BIAS, mesh=mesh)
    with pytest.raises(ValueError, match="not in mesh axes"):
        chunked_clip_loss(x, y, SCALE, mesh=mesh, batch_axes=("batch",))


def _shapes_in(jaxpr):
    """All variable shapes in a jaxpr, recursing into sub-jaxprs (shard_map, scan, pjit...)."""
    shapes = set()

    def visit(jp):
        if isinstance(jp, ClosedJaxpr):
            jp = jp.jaxpr
        for v in list(jp.invars) + list(jp.constvars) + list(jp.outvars):
            shapes.add(tuple(getattr(v.aval, "shape", ())))
        for eqn in jp.eqns:
            for v in list(eqn.invars) + list(eqn.outvars):
                shapes.add(tuple(getattr(v.aval, "shape", ())))
            for param in eqn.params.values():
                subs = param if isinstance(param, (tuple, list)) else (param,)
                for sub in subs:
                    if isinstance(sub, (Jaxpr, ClosedJaxpr)):
                        visit(sub)

    visit(jaxpr)
    return shapes


@pytest.mark.parametrize("kind", ["siglip", "clip"])
def test_chunked_never_forms_global_logits(kind):
    mesh = _mesh((8, 1, 1))
    x, y = _embeddings(GLOBAL_BATCH, DIM, seed=6)
    b, local = GLOBAL_BATCH, GLOBAL_BATCH // 8

    def loss(x, y, s, bias, chunked):
        return contrastive_loss(kind, x, y, s, bias, mesh=mesh, chunked=chunked)

    def shapes(chunked):  # forward and backward
        f = jax.value_and_grad(lambda *a: loss(*a, chunked), argnums=(0, 1, 2, 3))
        return _shapes_in(jax.make_jaxpr(f)(x, y, jnp.float32(SCALE), jnp.float32(BIAS)))

    chunked = shapes(True)
    assert (b, b) not in chunked
    assert (local, local) in chunked  # the walker did reach into the per-device body
    assert (b, b) in shapes(False)  # and it would have seen a dense matrix


def test_contrastive_loss_dispatch():
    x, y = _embeddings(8, seed=8)
    s, bias = jnp.float32(SCALE), jnp.float32(BIAS)
    assert float(contrastive_loss("clip", x, y, s)) == float(clip_loss(x, y, s))
    # A bias shifts every CLIP logit equally, so it is ignored there.
    assert float(contrastive_loss("clip", x, y, s, bias)) == float(clip_loss(x, y, s))
    assert float(contrastive_loss("siglip", x, y, s, bias)) == float(siglip_loss(x, y, s, bias))
    mesh = _mesh((2, 2, 2))
    got = contrastive_loss("siglip", x, y, s, bias, mesh=mesh, chunked=True)
    assert _rel_err(got, np_siglip(x, y, SCALE, BIAS)[0]) <= 1e-5
    with pytest.raises(ValueError, match="needs a bias"):
        contrastive_loss("siglip", x, y, s)
    with pytest.raises(ValueError, match=r"'clip', 'siglip'"):
        contrastive_loss("infonce", x, y, s)
