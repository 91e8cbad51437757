"""Chunked (ring + tiled) contrastive losses: exact against dense with tiles smaller than a
device's block, temporary memory linear in the global batch, and actually used by the trainer.

The dense-vs-chunked equality with whole blocks is in tests/losses/test_contrastive.py; here the
tiles are narrower than the per-device block (block_size < b_local) so the tiled path is exercised.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from mmfm import sharding as sh
from mmfm.losses.contrastive import (chunked_clip_loss, chunked_siglip_loss, clip_loss,
                                     siglip_loss)
from mmfm.train.loop import Trainer

# Minutes of CPU: run by `make test-slow` (and CI), not by `make test`.
pytestmark = pytest.mark.slow

SCALE, BIAS = 10.0, -10.0


def _emb(b, d, seed):
    k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
    x = jax.random.normal(k1, (b, d), jnp.float32)
    y = x + 0.5 * jax.random.normal(k2, (b, d), jnp.float32)  # positives correlated
    unit = lambda a: a / jnp.linalg.norm(a, axis=-1, keepdims=True)
    return unit(x), unit(y)


def _np_siglip(x, y, scale, bias):
    """float64 numpy reference: -sum log sigmoid(z * logits) / B."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    logits = scale * x @ y.T + bias
    z = 2 * np.eye(len(x)) - 1
    return -np.sum(-np.logaddexp(0.0, -z * logits)) / len(x)


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


@pytest.mark.parametrize("mesh_shape", [(8, 1, 1), (2, 2, 2)])
@pytest.mark.parametrize("block_size", [2, 3, None])  # 3 -> 2 (largest divisor of b_local 8)
@pytest.mark.parametrize("kind", ["siglip", "clip"])
def test_tiled_ring_equals_dense_value_and_grad(kind, block_size, mesh_shape):
    mesh = sh.make_mesh(mesh_shape)
    batch = 8 * sh.num_batch_shards(mesh)  # b_local = 8
    x, y = _emb(batch, 16, seed=3)
    s, bias = jnp.float32(SCALE), jnp.float32(BIAS)
    emb = NamedSharding(mesh, P(sh.BATCH_AXES, None))
    if kind == "siglip":
        dense = lambda x, y, s: siglip_loss(x, y, s, bias)
        ring = lambda x, y, s: chunked_siglip_loss(x, y, s, bias, mesh=mesh, block_size=block_size)
    else:
        dense = lambda x, y, s: clip_loss(x, y, s)
        ring = lambda x, y, s: chunked_clip_loss(x, y, s, mesh=mesh, block_size=block_size)
    got, g_got = jax.jit(jax.value_and_grad(ring, argnums=(0, 1, 2)),
                         in_shardings=(emb, emb, None))(x, y, s)
    want, g_want = jax.value_and_grad(dense, argnums=(0, 1, 2))(x, y, s)
    assert _rel(got, want) <= 1e-5
    for a, b in zip(g_got, g_want):
        assert _rel(a, b) <= 1e-5
    if kind == "siglip":
        assert _rel(got, _np_siglip(x, y, SCALE, BIAS)) <= 1e-5


def _temp_bytes(fn, batch, dim, mesh):
    emb = jax.ShapeDtypeStruct((batch, dim), jnp.float32,
                               sharding=NamedSharding(mesh, P(sh.BATCH_AXES, None)))
    scalar = jax.ShapeDtypeStruct((), jnp.float32, sharding=NamedSharding(mesh, P()))
    grad = jax.jit(jax.value_and_grad(fn, argnums=(0, 1)))
    return grad.lower(emb, emb, scalar, scalar).compile().memory_analysis().temp_size_in_bytes


def test_chunked_siglip_temp_memory_is_linear_dense_quadratic():
    """Compile-time temp bytes per device (forward + backward) at global batch B and 4B."""
    mesh = sh.make_mesh((8, 1, 1))
    chunked = lambda x, y, s, b: chunked_siglip_loss(x, y, s, b, mesh=mesh, block_size=64)
    dense = lambda x, y, s, b: siglip_loss(x, y, s, b)
    c1, c4 = (_temp_bytes(chunked, b, 128, mesh) for b in (1024, 4096))
    d1, d4 = (_temp_bytes(dense, b, 128, mesh) for b in (1024, 4096))
    print(f"temp bytes B=1024/4096: chunked {c1}/{c4} (x{c4 / c1:.1f}), dense {d1}/{d4} (x{d4 / d1:.1f})")
    assert c4 / c1 <= 4.5  # linear: x4
    assert d4 / d1 >= 12  # quadratic: x16
    assert c4 < d4 / 4


def test_trainer_uses_the_ring_loss_under_a_mesh(shapes_dir, tiny_config, tmp_path):
    """config.loss.chunked=True: the compiled step passes text blocks around the ring
    (collective-permute), never forms [B, B] logits, and gives the dense loss's values."""
    overrides = {"loss.contrastive": "siglip", "model.init_bias": -10.0, "mesh.shape": (4, 1, 2),
                 "total_steps": 3, "batch_size": 40}  # 40, 10: no other array dim is either
    losses = {}
    for chunked in (False, True):
        config = tiny_config(shapes_dir, **overrides, **{"loss.chunked": chunked})
        tr = Trainer(config, str(tmp_path / str(chunked)))
        state, it = tr.init_state(), iter(tr.train_loader)
        batch = tr.global_batch(next(it))
        with tr.mesh_context():
            hlo = tr.jit_step.lower(state, batch).compile().as_text()
        b, b_local = config.batch_size, config.batch_size // 4
        assert ("collective-permute" in hlo) == chunked
        dense_logits = f"f32[{b},{b}]" in hlo or f"f32[{b_local},{b}]" in hlo
        assert dense_logits != chunked  # the check would see the dense loss's logits
        vals = []
        for _ in range(3):
            state, m = tr.step(state, next(it) if vals else jax.device_get(
                {k: np.asarray(v) for k, v in batch.items()}))
            vals.append(float(m["loss/siglip"]))
        losses[chunked] = np.array(vals)
    assert _rel(losses[True], losses[False]) <= 1e-5, losses
