"""MAE and MLM losses, patchify/unpatchify, against float64 numpy formulas."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmfm.losses import mae_loss, mlm_accuracy, mlm_loss, patchify, unpatchify

B, H, W, C, PATCH = 2, 8, 12, 3, 4  # a 2 x 3 grid of 4x4x3 patches
N, D = (H // PATCH) * (W // PATCH), PATCH * PATCH * C


def np_patchify(images, p):
    """Reference by explicit loops: patch (gi, gj) -> n = gi * gw + gj; value (r, c, ch)."""
    b, h, w, c = images.shape
    gh, gw = h // p, w // p
    out = np.zeros((b, gh * gw, p * p * c), images.dtype)
    for gi in range(gh):
        for gj in range(gw):
            for r in range(p):
                for col in range(p):
                    for ch in range(c):
                        out[:, gi * gw + gj, (r * p + col) * c + ch] = images[:, gi * p + r,
                                                                             gj * p + col, ch]
    return out


def np_mae(pred, images, mask, p, norm_pix, ddof=0):
    t = np_patchify(images.astype(np.float64), p)
    if norm_pix:
        t = (t - t.mean(-1, keepdims=True)) / np.sqrt(t.var(-1, ddof=ddof, keepdims=True) + 1e-6)
    per_patch = ((pred.astype(np.float64) - t) ** 2).mean(-1)
    return (per_patch * mask).sum() / mask.sum()


def _data(seed=0):
    rng = np.random.default_rng(seed)
    images = rng.normal(0.3, 1.5, size=(B, H, W, C)).astype(np.float32)
    pred = rng.normal(size=(B, N, D)).astype(np.float32)
    mask = np.zeros((B, N), np.float32)
    mask[0, [0, 2, 5]] = 1
    mask[1, [1, 2]] = 1
    return images, pred, mask


def test_patch_order_constant_patches():
    # Every patch filled with its own index: patch n must come out all equal to n.
    gh, gw = H // PATCH, W // PATCH
    ids = np.arange(gh * gw, dtype=np.float32).reshape(gh, gw)
    img = np.repeat(np.repeat(ids, PATCH, axis=0), PATCH, axis=1)[None, :, :, None]
    img = np.broadcast_to(img, (1, H, W, C))
    got = np.asarray(patchify(jnp.asarray(img), PATCH))
    assert got.shape == (1, N, D)
    np.testing.assert_array_equal(got, np.broadcast_to(np.arange(N)[None, :, None], (1, N, D)))


def test_patchify_matches_loop_reference_and_roundtrips():
    images, pred, _ = _data()
    got = patchify(jnp.asarray(images), PATCH)
    np.testing.assert_array_equal(got, np_patchify(images, PATCH))  # (row, col, channel) order
    np.testing.assert_array_equal(unpatchify(got, PATCH, (H, W)), images)
    np.testing.assert_array_equal(patchify(unpatchify(jnp.asarray(pred), PATCH, (H, W)), PATCH),
                                  pred)
    with pytest.raises(ValueError, match="divisible"):
        patchify(jnp.zeros((1, 6, 8, 3)), 4)


@pytest.mark.parametrize("norm_pix", [True, False])
def test_mae_loss_matches_numpy(norm_pix):
    images, pred, mask = _data(1)
    got = mae_loss(jnp.asarray(pred), jnp.asarray(images), jnp.asarray(mask), PATCH, norm_pix)
    ref = np_mae(pred, images, mask, PATCH, norm_pix)
    assert got.dtype == jnp.float32
    assert abs(float(got) - ref) <= 1e-5 * ref


def test_mae_norm_pix_uses_population_variance():
    # With 48 values per patch ddof=0 and ddof=1 differ by ~2%: the test tells them apart.
    images, _, mask = _data(2)
    pred = np.zeros((B, N, D), np.float32)  # loss = mean of squared normalised targets
    got = float(mae_loss(pred, images, mask, PATCH, norm_pix=True))
    assert abs(got - np_mae(pred, images, mask, PATCH, True, ddof=0)) <= 1e-5
    assert abs(got - np_mae(pred, images, mask, PATCH, True, ddof=1)) > 1e-3
    assert abs(got - 1.0) <= 1e-5  # unit variance per patch, up to the 1e-6 epsilon


def test_mae_only_masked_patches_matter():
    images, pred, mask = _data(3)
    base = float(mae_loss(pred, images, mask, PATCH))
    noisy = pred + 100.0 * (1 - mask)[..., None]  # change only unmasked patches
    assert float(mae_loss(noisy, images, mask, PATCH)) == pytest.approx(base, rel=1e-6)
    moved = pred + 1.0 * mask[..., None]  # change only masked patches
    assert abs(float(mae_loss(moved, images, mask, PATCH)) - base) > 1e-2
    grad = jax.grad(mae_loss)(jnp.asarray(pred), images, mask, PATCH)
    assert np.all(np.asarray(grad)[mask == 0] == 0)


def test_mae_empty_mask_is_zero_with_finite_grad():
    images, pred, _ = _data(4)
    zero = np.zeros((B, N), np.float32)
    loss, grad = jax.value_and_grad(mae_loss)(jnp.asarray(pred), images, zero, PATCH)
    assert float(loss) == 0.0
    assert np.all(np.asarray(grad) == 0)


def test_mae_bf16_inputs_give_float32():
    images, pred, mask = _data(5)
    got = mae_loss(jnp.asarray(pred, jnp.bfloat16), jnp.asarray(images, jnp.bfloat16), mask, PATCH)
    assert got.dtype == jnp.float32
    # Reference on the bf16-rounded values: the arithmetic itself is float32.
    ref = np_mae(np.asarray(jnp.asarray(pred, jnp.bfloat16), np.float64),
                 np.asarray(jnp.asarray(images, jnp.bfloat16), np.float64), mask, PATCH, True)
    assert abs(float(got) - ref) <= 1e-5 * ref


# ---- MLM -------------------------------------------------------------------------------------

L, V = 6, 11


def _mlm_data(seed=0):
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 3, size=(B, L, V)).astype(np.float32)
    targets = rng.integers(0, V, size=(B, L)).astype(np.int32)
    mask = np.zeros((B, L), np.float32)
    mask[0, [1, 4]] = 1
    mask[1, [0, 2, 3]] = 1
    return logits, targets, mask


def np_mlm(logits, targets, mask):
    x = logits.astype(np.float64)
    m = x.max(-1, keepdims=True)
    logp = x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))
    nll = -np.take_along_axis(logp, targets[..., None], -1)[..., 0]
    return (nll * mask).sum() / mask.sum()


def test_mlm_loss_matches_numpy():
    logits, targets, mask = _mlm_data()
    got = mlm_loss(jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(mask))
    ref = np_mlm(logits, targets, mask)
    assert got.dtype == jnp.float32
    assert abs(float(got) - ref) <= 1e-5 * ref
    assert float(mlm_loss(logits, targets, mask.astype(bool))) == float(got)  # bool masks too
    acc = mlm_accuracy(logits, targets, mask)
    ref_acc = ((logits.argmax(-1) == targets) * mask).sum() / mask.sum()
    assert float(acc) == pytest.approx(ref_acc, abs=1e-7)


def test_mlm_unmasked_positions_do_not_matter():
    logits, targets, mask = _mlm_data(1)
    base = float(mlm_loss(logits, targets, mask))
    unmasked = (mask == 0)
    logits2 = logits.copy()
    logits2[unmasked] = np.where(np.arange(V) == 0, np.inf, 50.0)  # garbage, even inf
    targets2 = np.where(unmasked, -100, targets)  # ignore-index padding
    assert float(mlm_loss(logits2, targets2, mask)) == pytest.approx(base, rel=1e-6)
    targets3 = np.where(unmasked, targets, (targets + 1) % V)  # masked targets do matter
    assert abs(float(mlm_loss(logits, targets3, mask)) - base) > 1e-2


def test_mlm_empty_mask_is_zero():
    logits, targets, _ = _mlm_data(2)
    zero = np.zeros((B, L), np.float32)
    loss, grad = jax.value_and_grad(mlm_loss)(jnp.asarray(logits), targets, zero)
    assert float(loss) == 0.0 and float(mlm_accuracy(logits, targets, zero)) == 0.0
    assert np.all(np.asarray(grad) == 0)
