"""SigLIP 2 NaFlex: images at their own aspect ratio as padded patch sequences.

Reference: transformers' Siglip2Model and Siglip2ImageProcessor on a tiny random model (4 x 4
position grid at patch 8) with 3:1, 1:3 and 1:1 images at max_num_patches 16 and 6
(tests/zoo/make_parity_fixtures.py); compared here without torch."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mmfm
from mmfm import masking
from mmfm.data import naflex

F = os.path.join(os.path.dirname(__file__), "fixtures")
SRC = os.path.join(F, "hf_siglip2_naflex_tiny")
SHAPES = ("wide", "tall", "square")


@pytest.fixture(scope="module")
def ref():
    return np.load(os.path.join(F, "hf_siglip2_naflex_tiny_ref.npz"))


@pytest.fixture(scope="module")
def loaded():
    return mmfm.create_model_and_transforms(SRC)


def batch(ref, budget, rows=slice(None)):
    return {"patches": ref[f"b{budget}_patches"][rows], "spatial_shapes": ref[f"b{budget}_spatial"][rows],
            "patch_valid": ref[f"b{budget}_valid"][rows]}


@pytest.mark.parametrize("budget", [16, 6])
def test_embeddings_of_every_aspect_ratio_equal_the_reference(ref, loaded, budget):
    model, params, _, _ = loaded
    assert model.cfg.image.naflex and model.cfg.image.grid == 4
    img = np.asarray(mmfm.encode_image(model, params, batch(ref, budget)))
    assert np.abs(img - ref[f"b{budget}_img_emb"]).max() <= 1e-5
    txt = np.asarray(mmfm.encode_text(model, params, ref["tokens"]))
    assert np.abs(txt - ref["txt_emb"]).max() <= 1e-5
    logits = np.exp(np.float32(params["t"][0])) * img @ txt.T + np.float32(params["b"][0])
    assert np.abs(logits - ref[f"b{budget}_logits"]).max() <= 1e-4


def test_a_mixed_batch_equals_the_images_one_by_one(ref, loaded):
    model, params, _, _ = loaded
    mixed = np.asarray(mmfm.encode_image(model, params, batch(ref, 6)))
    alone = np.concatenate([np.asarray(mmfm.encode_image(model, params, batch(ref, 6, slice(i, i + 1))))
                            for i in range(3)])
    assert np.abs(mixed - alone).max() <= 1e-6
    assert np.abs(alone - ref["b6_img_emb_alone"]).max() <= 1e-5


def test_preprocessing_picks_the_reference_grid_and_pixels(ref, loaded):
    """mmfm's own NaFlex preprocessing of the raw images: the same patch grids as
    Siglip2ImageProcessor (exactly) and nearly the same pixels (PIL vs torchvision resampling)."""
    model, params, _, pre = loaded
    assert (pre.pre.max_num_patches, pre.pre.patch_size, pre.pre.interpolation) == (16, 8, "bilinear")
    items = [pre(ref[f"raw_{k}"]) for k in SHAPES]
    np.testing.assert_array_equal(np.stack([it["spatial_shapes"] for it in items]), ref["b16_spatial"])
    np.testing.assert_array_equal(np.stack([it["patch_valid"] for it in items]), ref["b16_valid"])
    pix = np.abs(np.stack([it["patches"] for it in items]) - ref["b16_patches"]).max()
    img = np.asarray(mmfm.encode_image(model, params, [ref[f"raw_{k}"] for k in SHAPES]))
    emb = np.abs(img - ref["b16_img_emb"]).max()
    print(f"\nNaFlex preprocessing vs transformers: max|d| pixels {pix:.3f}, embeddings {emb:.2e}")
    assert pix <= 0.1 and emb <= 0.05


@pytest.mark.parametrize("hw,budget", [((24, 72), 16), ((72, 24), 6), ((40, 40), 16), ((1000, 3), 256),
                                       ((5, 7), 4), ((224, 224), 256), ((300, 17), 64)])
def test_naflex_size_fits_the_budget_and_keeps_the_aspect_ratio(hw, budget):
    h, w = naflex.naflex_size(*hw, patch=8, max_num_patches=budget)
    assert h % 8 == 0 and w % 8 == 0 and (h // 8) * (w // 8) <= budget
    grown = naflex.naflex_size(*hw, patch=8, max_num_patches=budget * 4)
    assert grown[0] >= h and grown[1] >= w  # a larger budget never shrinks the image


def test_a_full_grid_image_equals_the_fixed_resolution_tower(loaded):
    """At the learned grid's own size the resize is the identity: NaFlex input of a 32 x 32
    image equals the same tower on the image as a fixed-size array."""
    model, params, _, _ = loaded
    x = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype(np.float32)
    fixed = model.apply({"params": params}, jnp.asarray(x), method=model.encode_image)[0]
    items = [naflex.to_patches(im, 8, 20) for im in x]  # padded beyond the 16 real patches
    flex = mmfm.encode_image(model, params, naflex.stack(items))
    assert np.abs(np.asarray(fixed) - np.asarray(flex)).max() <= 1e-5


def random_valid(rng, batch, n):
    counts = rng.integers(1, n + 1, size=batch)
    return np.arange(n)[None, :] < counts[:, None]


@pytest.mark.parametrize("seed", range(20))
def test_patch_dropping_on_a_padded_batch_keeps_only_real_patches(seed):
    rng = np.random.default_rng(seed)
    n, ratio = int(rng.integers(4, 40)), float(rng.choice([0.0, 0.25, 0.5, 0.75, 0.9]))
    valid = random_valid(rng, 6, n)
    keep_idx, keep_valid, mask = map(np.asarray, masking.patch_mask_valid(
        jax.random.PRNGKey(seed), jnp.asarray(valid), ratio))
    for b in range(valid.shape[0]):
        real = int(valid[b].sum())
        want = min(max(1, int(np.round(real * (1 - ratio)))), real, keep_idx.shape[1])
        kept = keep_idx[b][keep_valid[b]]
        assert len(kept) == want and valid[b, kept].all()  # only real patches are kept
        assert (np.diff(kept) > 0).all()  # distinct, in raster order
        assert keep_valid[b, :want].all() and not keep_valid[b, want:].any()
        removed = np.flatnonzero(mask[b])
        assert valid[b, removed].all() and not set(removed) & set(kept)  # padding never a target
        assert len(removed) == real - want


def test_the_tower_ignores_padding_and_dropped_patches(ref, loaded):
    """With FLIP dropping on a padded batch, the embedding depends only on the kept real patches."""
    model, params, _, _ = loaded
    x = batch(ref, 16)
    keep_idx, keep_valid, mask = masking.patch_mask_valid(jax.random.PRNGKey(3), jnp.asarray(x["patch_valid"]), 0.5)

    def enc(patches):
        return np.asarray(model.apply({"params": params}, jnp.asarray(patches), keep_idx=keep_idx,
                                      keep_valid=keep_valid, spatial_shapes=jnp.asarray(x["spatial_shapes"]),
                                      patch_valid=jnp.asarray(x["patch_valid"]), method=model.encode_image)[0])

    base = enc(x["patches"])
    kept_real = np.zeros(x["patch_valid"].shape, bool)
    for b in range(3):
        kept_real[b, np.asarray(keep_idx)[b][np.asarray(keep_valid)[b]]] = True
    noise = np.random.default_rng(1).normal(size=x["patches"].shape).astype(np.float32)
    unseen = np.where(kept_real[..., None], x["patches"], noise)  # change padding and dropped patches
    assert np.abs(enc(unseen) - base).max() <= 1e-6
    seen = np.where(kept_real[..., None], noise, x["patches"])
    assert np.abs(enc(seen) - base).max() > 1e-3


def test_naflex_converts_and_exports_with_its_preprocessing(ref, tmp_path):
    from mmfm.cli import convert_main
    convert_main(["--from", "hf", SRC, "--out", str(tmp_path / "exp")])
    model, params, _, pre = mmfm.create_model_and_transforms(str(tmp_path / "exp"))
    assert (pre.pre.max_num_patches, pre.pre.patch_size) == (16, 8)
    img = np.asarray(mmfm.encode_image(model, params, batch(ref, 6)))
    assert np.abs(img - ref["b6_img_emb"]).max() <= 1e-5


def test_bf16_compute_stays_close(ref, capsys):
    model, params = mmfm.create_model(SRC, overrides={"dtype": "bfloat16"})
    d = np.abs(np.asarray(mmfm.encode_image(model, params, batch(ref, 16)), np.float32) - ref["b16_img_emb"]).max()
    with capsys.disabled():
        print(f"\nbf16 NaFlex: max|d| img {d:.2e}")
    assert d < 5e-2
