"""Patch and token masking: pure functions of (rng, shapes, ratio) with static output shapes."""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

Array = jax.Array


def num_kept(num_patches: int, ratio: float) -> int:
    """Patches the encoder sees at a drop ratio; at least one, fixed per batch (static shapes)."""
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"patch drop ratio must be in [0, 1), got {ratio}")
    return max(1, int(round(num_patches * (1.0 - ratio))))


def patch_mask(rng: Array, batch: int, num_patches: int, ratio: float) -> tuple[Array, Array]:
    """Random patch dropping (FLIP / MAE), uniformly without replacement per example.

    Returns keep_idx int32 [batch, kept] (sorted, so kept tokens stay in raster order) and
    mask float32 [batch, num_patches] with 1 = removed.
    """
    kept = num_kept(num_patches, ratio)
    noise = jax.random.uniform(rng, (batch, num_patches))
    keep_idx = jnp.sort(jnp.argsort(noise, axis=1)[:, :kept], axis=1).astype(jnp.int32)
    mask = jnp.ones((batch, num_patches), jnp.float32)
    mask = jax.vmap(lambda m, i: m.at[i].set(0.0))(mask, keep_idx)
    return keep_idx, mask


def patch_mask_valid(rng: Array, valid: Array, ratio: float) -> tuple[Array, Array, Array]:
    """Patch dropping for padded (NaFlex) batches: only real patches are ever kept or removed.

    valid bool [batch, patches] marks real patches. Each image keeps `num_kept(its real patches)`
    of its own real patches, uniformly without replacement; the static number of kept slots is
    `num_kept(patches, ratio)`, and slots an image cannot fill are marked invalid.

    Returns keep_idx int32 [batch, kept] (an image's kept patches first, in raster order),
    keep_valid bool [batch, kept] (which slots hold a kept real patch: the encoder masks the
    rest) and mask float32 [batch, patches] with 1 = a real patch removed (MAE's targets; 0 for
    kept patches and for padding, so padding is never reconstructed).
    """
    valid = valid.astype(bool)
    batch, n = valid.shape
    kept = num_kept(n, ratio)
    # num_kept of every possible real count, looked up: the same rounding as the static count
    table = jnp.asarray([0] + [min(num_kept(r, ratio), kept) for r in range(1, n + 1)], jnp.int32)
    n_keep = table[valid.sum(axis=1)]
    noise = jnp.where(valid, jax.random.uniform(rng, (batch, n)), 2.0)  # padding sorts last
    chosen = jnp.argsort(noise, axis=1)[:, :kept].astype(jnp.int32)
    slot_valid = jnp.arange(kept)[None, :] < n_keep[:, None]
    # raster order among the kept real patches, the unused slots after them
    order = jnp.argsort(jnp.where(slot_valid, chosen, n + chosen), axis=1)
    keep_idx = jnp.take_along_axis(chosen, order, axis=1)
    keep_valid = jnp.take_along_axis(slot_valid, order, axis=1)
    kept_real = jax.vmap(lambda i, v: jnp.zeros((n,), bool).at[i].max(v))(keep_idx, keep_valid)
    mask = (valid & ~kept_real).astype(jnp.float32)
    return keep_idx, keep_valid, mask


def token_mask(rng: Array, tokens: Array, ratio: float, *, mask_id: int, special_ids: Sequence[int],
               vocab_size: int, random_frac: float = 0.1, keep_frac: float = 0.1) -> tuple[Array, Array]:
    """MLM masking that never touches padding or special tokens (BERT's 80/10/10 recipe).

    Each maskable token is selected independently with probability `ratio`; a selected token
    becomes `mask_id` (80%), a random non-special token (random_frac) or stays (keep_frac).
    At least one token per sequence is selected when the sequence has any maskable token, so short
    captions always contribute. tokens int [batch, seq] -> (masked tokens, mask float [batch, seq]).
    """
    if not 0.0 < ratio < 1.0:
        raise ValueError(f"MLM mask ratio must be in (0, 1), got {ratio}")
    r_sel, r_force, r_kind, r_rand = jax.random.split(rng, 4)
    maskable = jnp.ones(tokens.shape, bool)
    for sid in special_ids:
        maskable &= tokens != sid
    selected = (jax.random.uniform(r_sel, tokens.shape) < ratio) & maskable
    # Force one selection in rows that drew none: pick the maskable position with the largest noise.
    noise = jnp.where(maskable, jax.random.uniform(r_force, tokens.shape), -1.0)
    forced = jax.nn.one_hot(jnp.argmax(noise, axis=1), tokens.shape[1], dtype=bool) & maskable
    selected = jnp.where(selected.any(axis=1, keepdims=True), selected, forced)

    kind = jax.random.uniform(r_kind, tokens.shape)
    is_special = jnp.zeros((vocab_size,), bool).at[jnp.asarray(list(special_ids) + [mask_id])].set(True)
    # Random replacements drawn from non-special ids only (resample by shifting past specials).
    rand = jax.random.randint(r_rand, tokens.shape, 0, vocab_size)
    rand = jnp.where(is_special[rand], tokens, rand)
    replaced = jnp.where(kind < 1.0 - random_frac - keep_frac, mask_id,
                         jnp.where(kind < 1.0 - keep_frac, rand, tokens))
    return jnp.where(selected, replaced, tokens).astype(tokens.dtype), selected.astype(jnp.float32)
