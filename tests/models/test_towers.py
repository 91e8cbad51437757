"""Behaviour of the towers: patch dropping, pooling, masking of padding, dtypes, scan == loop."""
import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmfm import masking
from mmfm.models import stems
from mmfm.models.config import DecoderConfig, ModelConfig, text_config, vit_config
from mmfm.models.multimodal import TwoTower, init_params
from mmfm.models.layers import sincos_2d


def make(image=None, text=None, **kw):
    cfg = ModelConfig(image=vit_config("mu/8", image_size=32, **(image or {})),
                      text=text_config("mu", vocab_size=64, context_length=8, **(text or {})),
                      embed_dim=16, **kw).validate()
    model = TwoTower(cfg)
    return model, nn.meta.unbox(init_params(model, jax.random.PRNGKey(0)))


def images(b=3, seed=0):
    return jax.random.normal(jax.random.PRNGKey(seed), (b, 32, 32, 3))


def test_embeddings_are_normalised_and_scale_is_inverse_temperature():
    model, p = make()
    toks = jnp.array([[1, 5, 6, 2, 0, 0, 0, 0]] * 3)
    out = model.apply({"params": p}, images(), toks)
    np.testing.assert_allclose(np.linalg.norm(out["img/emb"], axis=-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(out["txt/emb"], axis=-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(out["scale"], 1 / 0.07, rtol=1e-5)


STEMS = ["linear", "hmlp", "conv"]


@pytest.mark.parametrize("stem", STEMS)
def test_keep_all_patches_equals_no_dropping(stem):
    model, p = make(image=dict(stem=stem))
    full = model.apply({"params": p}, images(), method=model.encode_image)[0]
    keep = jnp.tile(jnp.arange(16)[None], (3, 1))
    kept = model.apply({"params": p}, images(), keep_idx=keep, method=model.encode_image)[0]
    np.testing.assert_allclose(full, kept, atol=1e-6)


def test_cell_linear_equals_a_strided_convolution():
    """The hMLP stage as reshape + matmul computes nn.Conv(k x k, stride k, VALID) with its params."""
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 3, 8, 8, 3))
    conv = nn.Conv(7, (4, 4), strides=(4, 4), padding="VALID")
    params = conv.init(jax.random.PRNGKey(1), x)
    got = stems.CellLinear(7, (4, 4)).apply(params, x)
    np.testing.assert_allclose(got, conv.apply(params, x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("stem", STEMS)
def test_dropped_patches_do_not_influence_the_embedding(stem):
    """Holds for every stem: each token is computed from its own patch's pixels only."""
    model, p = make(image=dict(stem=stem))
    keep, mask = masking.patch_mask(jax.random.PRNGKey(1), 3, 16, 0.75)
    x = images()
    # Overwrite every removed patch with noise: the embedding must not change.
    m = mask.reshape(3, 4, 4)[:, :, None, :, None].repeat(8, 2).repeat(8, 4).reshape(3, 32, 32, 1)
    y = jnp.where(m > 0, images(seed=5), x)
    a = model.apply({"params": p}, x, keep_idx=keep, method=model.encode_image)[0]
    b = model.apply({"params": p}, y, keep_idx=keep, method=model.encode_image)[0]
    np.testing.assert_allclose(a, b, atol=1e-6)


def _with_padding_rows_changed(p, pad_id, real):
    """Params whose pad-token embedding and pad-position embeddings are replaced by noise."""
    txt = p["txt"]
    emb = txt["embedding"]["embedding"]
    emb = emb.at[pad_id].set(jax.random.normal(jax.random.PRNGKey(7), emb.shape[1:]))
    pos = txt["pos_embedding"]
    pos = pos.at[:, real:].set(jax.random.normal(jax.random.PRNGKey(8), pos[:, real:].shape))
    return dict(p, txt=dict(txt, embedding={"embedding": emb}, pos_embedding=pos))


PADDED = jnp.array([[1, 7, 9, 2, 0, 0, 0, 0]])  # 4 real tokens (EOT = 2), then pad id 0


@pytest.mark.parametrize("text", [dict(causal=True, pool="eot"), dict(causal=False, pool="mean"),
                                  dict(causal=False, pool="eot")])
def test_padding_does_not_change_text_embedding(text):
    model, p = make(text=text)
    a = model.apply({"params": p}, PADDED, method=model.encode_text)[0]
    # Reference: the same sentence with no padding at all.
    unpadded = model.apply({"params": p}, PADDED[:, :4], method=model.encode_text)[0]
    np.testing.assert_allclose(a, unpadded, atol=1e-5)
    # Whatever the padded positions hold (pad embedding, their position embeddings) is ignored.
    noisy = _with_padding_rows_changed(p, pad_id=0, real=4)
    b = model.apply({"params": noisy}, PADDED, method=model.encode_text)[0]
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_unmasked_bidirectional_tower_does_see_padding():
    """Guards the test above: without the key-padding mask the same change moves the embedding."""
    model, p = make(text=dict(causal=False, pool="eot", mask_pad=False))
    a = model.apply({"params": p}, PADDED, method=model.encode_text)[0]
    b = model.apply({"params": _with_padding_rows_changed(p, pad_id=0, real=4)}, PADDED,
                    method=model.encode_text)[0]
    assert float(jnp.max(jnp.abs(a - b))) > 1e-3


def test_causal_text_ignores_future_tokens():
    model, p = make(text=dict(causal=True, pool="eot"))
    a = jnp.array([[1, 7, 9, 2, 5, 6, 7, 8]])
    b = jnp.array([[1, 7, 9, 2, 9, 9, 9, 9]])
    ea = model.apply({"params": p}, a, method=model.encode_text)[0]
    eb = model.apply({"params": p}, b, method=model.encode_text)[0]
    np.testing.assert_allclose(ea, eb, atol=1e-6)


def test_scan_equals_loop_given_the_same_weights():
    model, p = make()
    smodel, sp = make(image=dict(scan=True), text=dict(scan=True))
    def stack(enc):
        blocks = [enc[f"block_{i}"] for i in range(len(enc))]
        return {"blocks": jax.tree.map(lambda *xs: jnp.stack(xs), *blocks)}
    sp = dict(p, img=dict(p["img"], encoder=stack(p["img"]["encoder"])),
              txt=dict(p["txt"], encoder=stack(p["txt"]["encoder"])))
    toks = jnp.array([[1, 5, 6, 2, 0, 0, 0, 0]] * 3)
    a = model.apply({"params": p}, images(), toks)
    b = smodel.apply({"params": sp}, images(), toks)
    np.testing.assert_allclose(a["img/emb"], b["img/emb"], atol=1e-5)
    np.testing.assert_allclose(a["txt/emb"], b["txt/emb"], atol=1e-5)


def test_remat_gives_identical_gradients():
    model, p = make()
    rmodel, _ = make(image=dict(remat="full"), text=dict(remat="dots"))
    toks = jnp.array([[1, 5, 6, 2, 0, 0, 0, 0]] * 3)
    def loss(m):
        return lambda p: jnp.sum(m.apply({"params": p}, images(), toks)["img/emb"] ** 3)
    ga, gb = jax.grad(loss(model))(p), jax.grad(loss(rmodel))(p)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), ga, gb)


def test_bf16_compute_keeps_f32_params_and_is_close():
    model, p = make()
    bmodel, bp = make(image=dict(dtype="bfloat16"), text=dict(dtype="bfloat16"))
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(bp))
    a = model.apply({"params": p}, images(), method=model.encode_image)[0]
    b = bmodel.apply({"params": p}, images(), method=bmodel.encode_image)[0]
    assert float(jnp.max(jnp.abs(a - b))) < 0.05  # bf16 has ~3 significant digits


def test_mae_decoder_and_mlm_head_shapes():
    model, p = make(text=dict(mlm_head=True, causal=False), mae_decoder=DecoderConfig())
    keep, _ = masking.patch_mask(jax.random.PRNGKey(1), 3, 16, 0.75)
    toks = jnp.array([[1, 5, 6, 2, 0, 0, 0, 0]] * 3)
    out = model.apply({"params": p}, images(), toks, mae_keep=keep, mlm_tokens=toks)
    assert out["mae/pred"].shape == (3, 16, 8 * 8 * 3)
    assert out["mlm/logits"].shape == (3, 8, 64)
    # Tied head: the logits use the token embedding, so changing it changes the logits.
    p2 = jax.tree_util.tree_map_with_path(
        lambda path, x: x + 1.0 if "embedding" in jax.tree_util.keystr(path) and "txt" in
        jax.tree_util.keystr(path) else x, p)
    out2 = model.apply({"params": p2}, images(), toks, mlm_tokens=toks, contrastive=False)
    assert not np.allclose(out["mlm/logits"], out2["mlm/logits"])


def test_sincos_is_fixed_and_distinct_per_position():
    pe = sincos_2d(4, 32)
    assert pe.shape == (16, 32)
    d = np.linalg.norm(pe[:, None] - pe[None], axis=-1)
    assert np.all(d[~np.eye(16, dtype=bool)] > 1e-3)


def test_wrong_image_size_is_a_clear_error():
    model, p = make()
    with pytest.raises(ValueError, match="image_size"):
        model.apply({"params": p}, jnp.zeros((1, 40, 40, 3)), method=model.encode_image)
