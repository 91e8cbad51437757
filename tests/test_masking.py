"""Masking properties: fixed kept counts, uniform coverage, never masking padding or specials."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmfm import masking


@pytest.mark.parametrize("n, ratio, kept", [(16, 0.75, 4), (196, 0.5, 98), (196, 0.75, 49), (10, 0.0, 10),
                                             (3, 0.9, 1)])
def test_patch_mask_keeps_a_fixed_count_of_distinct_sorted_patches(n, ratio, kept):
    keep, mask = masking.patch_mask(jax.random.PRNGKey(0), 8, n, ratio)
    keep, mask = np.asarray(keep), np.asarray(mask)
    assert keep.shape == (8, kept) and mask.shape == (8, n)
    for row_keep, row_mask in zip(keep, mask):
        assert len(set(row_keep)) == kept and np.all(np.diff(row_keep) > 0)
        assert row_mask.sum() == n - kept
        assert np.all(row_mask[row_keep] == 0)


def test_patch_mask_is_uniform_and_differs_per_example():
    keep, mask = masking.patch_mask(jax.random.PRNGKey(1), 4000, 16, 0.75)
    freq = np.asarray(mask).mean(0)
    np.testing.assert_allclose(freq, 0.75, atol=0.03)
    assert len({tuple(r) for r in np.asarray(keep)}) > 1000


def test_patch_mask_rejects_bad_ratio():
    with pytest.raises(ValueError, match="ratio"):
        masking.patch_mask(jax.random.PRNGKey(0), 2, 16, 1.0)


SPECIALS = (0, 2, 3)  # pad, bos, eot
MASK_ID = 4


def make_tokens(rng, b=64, L=16):
    tok = np.zeros((b, L), np.int32)
    for i in range(b):
        n = rng.integers(1, L - 2)
        tok[i, 0], tok[i, 1:n + 1], tok[i, n + 1] = 2, rng.integers(5, 100, n), 3
    return tok


def test_token_mask_never_touches_padding_or_specials():
    tok = make_tokens(np.random.default_rng(0))
    for seed in range(5):
        out, mask = masking.token_mask(jax.random.PRNGKey(seed), jnp.asarray(tok), 0.5, mask_id=MASK_ID,
                                       special_ids=SPECIALS, vocab_size=100)
        out, mask = np.asarray(out), np.asarray(mask)
        special = np.isin(tok, SPECIALS)
        assert np.all(mask[special] == 0)
        assert np.array_equal(out[special], tok[special])
        assert np.all(out[mask == 0] == tok[mask == 0])  # unselected tokens never change
        assert np.all(mask.sum(1) >= 1)  # every caption contributes
        assert not np.isin(out[mask > 0], SPECIALS).any()  # replacements are never specials


def test_token_mask_rates():
    tok = make_tokens(np.random.default_rng(1), b=2000, L=32)
    out, mask = masking.token_mask(jax.random.PRNGKey(0), jnp.asarray(tok), 0.3, mask_id=MASK_ID,
                                   special_ids=SPECIALS, vocab_size=100)
    out, mask = np.asarray(out), np.asarray(mask)
    maskable = ~np.isin(tok, SPECIALS)
    rate = mask[maskable].mean()
    assert 0.28 < rate < 0.36  # 0.3 plus the forced one-per-row for short captions
    sel = mask > 0
    frac_mask = (out[sel] == MASK_ID).mean()
    frac_same = (out[sel] == tok[sel]).mean()
    assert abs(frac_mask - 0.8) < 0.03
    assert 0.08 < frac_same < 0.14  # 10% kept, plus random draws that hit the same id
