"""Contrastive image-text losses: CLIP (softmax) and SigLIP (sigmoid), dense and chunked.

All functions are pure, take L2-normalised embeddings `[batch, dim]` and return a float32 scalar.
Whatever the input dtype, embeddings are cast to float32 before the logits are formed, so bf16
towers still get a float32 loss.

The chunked variants compute exactly the same numbers as the dense ones, but block by block:
inside `jax.shard_map` every device along the batch axes keeps its own image block and passes text
blocks around a ring with `jax.lax.ppermute`. Each step forms only a `[b_local, b_local]` block of
logits, so no device ever holds the `[B, B]` matrix, and everything is differentiable (ppermute's
transpose is the reverse permutation).

Batch-axes semantics (`batch_axes`, default `('data', 'fsdp')`): the global batch dimension is split
over these mesh axes jointly, major to minor, exactly like `P(('data', 'fsdp'), None)`. Mesh axes not
named (e.g. `'tensor'`) hold replicas of the batch; they compute the same values redundantly and
are never summed over. The ring runs over the linearised index of the batch axes, so its length is
the product of their sizes. When that product is 1, or `mesh` is None, the dense loss is used.
"""
from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec as P

__all__ = [
    "clip_loss",
    "siglip_loss",
    "chunked_clip_loss",
    "chunked_siglip_loss",
    "contrastive_loss",
    "CONTRASTIVE_KINDS",
]

CONTRASTIVE_KINDS = ("clip", "siglip")


def _f32(x) -> jax.Array:
    return jnp.asarray(x).astype(jnp.float32)


def _pair_logits(img_bd: jax.Array, txt_bd: jax.Array, scale: jax.Array) -> jax.Array:
    """`scale * img @ txt.T` in float32: `[b_img, dim] x [b_txt, dim] -> [b_img, b_txt]`."""
    return scale * jnp.einsum("id,jd->ij", _f32(img_bd), _f32(txt_bd))


# --------------------------------------------------------------------------------------------
# Dense losses.
# --------------------------------------------------------------------------------------------


def clip_loss(image_emb: jax.Array, text_emb: jax.Array, scale) -> jax.Array:
    """Symmetric softmax (CLIP / InfoNCE) loss.

    Args:
      image_emb: `[batch, dim]` L2-normalised image embeddings (any float dtype).
      text_emb: `[batch, dim]` L2-normalised text embeddings; row i is the caption of image i.
      scale: scalar multiplier on the cosine similarities, `exp(log_temperature)`.

    Returns:
      Float32 scalar: mean of the image->text and text->image cross-entropies, each averaged over
      the batch.
    """
    logits = _pair_logits(image_emb, text_emb, _f32(scale))  # [B, B]
    diag = jnp.diagonal(logits)
    i2t = jax.nn.logsumexp(logits, axis=1) - diag
    t2i = jax.nn.logsumexp(logits, axis=0) - diag
    return 0.5 * (jnp.mean(i2t) + jnp.mean(t2i))


def siglip_loss(image_emb: jax.Array, text_emb: jax.Array, scale, bias) -> jax.Array:
    """Pairwise sigmoid (SigLIP) loss.

    `-sum_ij log_sigmoid(z_ij * (scale * <x_i, y_j> + bias)) / B` with `z = +1` on the diagonal and
    `-1` elsewhere.

    Args:
      image_emb: `[batch, dim]` L2-normalised image embeddings (any float dtype).
      text_emb: `[batch, dim]` L2-normalised text embeddings.
      scale: scalar multiplier, `exp(log_temperature)`.
      bias: scalar logit bias.

    Returns:
      Float32 scalar.
    """
    logits = _pair_logits(image_emb, text_emb, _f32(scale)) + _f32(bias)  # [B, B]
    batch = logits.shape[0]
    z = 2.0 * jnp.eye(batch, dtype=jnp.float32) - 1.0
    return -jnp.sum(jax.nn.log_sigmoid(z * logits)) / batch


# --------------------------------------------------------------------------------------------
# Chunked (ring) losses.
# --------------------------------------------------------------------------------------------


def _normalise_axes(batch_axes: str | Sequence[str]) -> tuple[str, ...]:
    return (batch_axes,) if isinstance(batch_axes, str) else tuple(batch_axes)


def _ring_size(mesh: Mesh | None, axes: tuple[str, ...]) -> int:
    """Number of devices the batch is split over; 1 means "use the dense loss"."""
    if mesh is None:
        return 1
    unknown = [a for a in axes if a not in mesh.shape]
    if unknown:
        raise ValueError(f"batch_axes {unknown} not in mesh axes {tuple(mesh.shape)}")
    size = 1
    for a in axes:
        size *= mesh.shape[a]
    return size


def _check_batch(image_emb, text_emb, ring: int) -> None:
    if image_emb.shape != text_emb.shape or image_emb.ndim != 2:
        raise ValueError(
            f"expected image and text embeddings of the same [batch, dim] shape, got "
            f"{image_emb.shape} and {text_emb.shape}")
    if image_emb.shape[0] % ring:
        raise ValueError(
            f"global batch {image_emb.shape[0]} is not divisible by the {ring} devices of the batch axes")


DEFAULT_BLOCK_SIZE = 512  # text rows per logits tile inside a device's block: bounds temp memory


def _sub_block(b: int, block_size: int | None) -> int:
    """Largest divisor of the local batch `b` that is <= block_size (None: the whole block)."""
    if block_size is None or block_size >= b:
        return b
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    return max(d for d in range(1, block_size + 1) if b % d == 0)


def _tiles(txt_bd: jax.Array, sub: int) -> jax.Array:
    """`[b, d] -> [b // sub, sub, d]`: the text block as tiles scanned one at a time."""
    return txt_bd.reshape(txt_bd.shape[0] // sub, sub, txt_bd.shape[1])


def _neg_block_sum(img, txt, scale, bias, sub: int) -> jax.Array:
    """`sum_ij log_sigmoid(-(scale <x_i, y_j> + bias))` over a `[b, b]` block, tile by tile.

    Each `[b, sub]` tile is rematerialised in the backward pass (jax.checkpoint), so neither the
    forward nor the backward keeps more than one tile: temp memory is O(b * sub), linear in b.
    """
    @jax.checkpoint
    def tile(rows, t):
        return rows + jnp.sum(jax.nn.log_sigmoid(-(_pair_logits(img, t, scale) + bias)), axis=1), None

    # Per-row partial sums [b]: zeros_like keeps the carry device-varying inside shard_map.
    rows, _ = jax.lax.scan(tile, jnp.zeros_like(img[:, 0]), _tiles(txt, sub))
    return jnp.sum(rows)


def _shift(x, axes: tuple[str, ...], ring: int):
    """Sends each device's block to the next device of the ring (i -> i + 1)."""
    perm = [(i, (i + 1) % ring) for i in range(ring)]
    return jax.tree.map(lambda a: jax.lax.ppermute(a, axes, perm), x)


def _ring_shard_map(body, mesh: Mesh, axes: tuple[str, ...], n_scalars: int):
    """Wraps `body(img, txt, *scalars) -> local partial sum` in a shard_map returning its psum."""
    def summed(img, txt, *scalars):
        return jax.lax.psum(body(img, txt, *scalars), axes)

    batch_spec = P(axes, None)
    return jax.shard_map(
        summed,
        mesh=mesh,
        in_specs=(batch_spec, batch_spec) + (P(),) * n_scalars,
        out_specs=P(),
    )


def chunked_siglip_loss(image_emb: jax.Array, text_emb: jax.Array, scale, bias, *,
                        mesh: Mesh | None,
                        batch_axes: str | Sequence[str] = ("data", "fsdp"),
                        block_size: int | None = DEFAULT_BLOCK_SIZE) -> jax.Array:
    """`siglip_loss` computed on a ring of devices, never forming the `[B, B]` logits.

    Device i holds image block `x_i` and text block `y_i` (`[b_local, dim]` each). At step k it
    holds text block `y_{i-k}` and adds the sum of `log_sigmoid(z * logits)` over the block
    `[b_local, b_local]`; positives exist only at step 0 (its own captions). After `ring - 1`
    shifts every pair has been seen once; the partial sums are psum'd and divided by global B.

    Args:
      image_emb: `[batch, dim]` global array, batch split over `batch_axes`.
      text_emb: `[batch, dim]` global array, same sharding.
      scale: scalar multiplier. bias: scalar logit bias.
      mesh: the device mesh; None (or one device along `batch_axes`) falls back to the dense loss.
      batch_axes: mesh axes the batch is split over, jointly (see the module docstring).
      block_size: text rows per logits tile within a block (the largest divisor of b_local not
        above it); tiles are recomputed in the backward pass, so per-device temporary memory is
        O(b_local * block_size + ring * b_local * dim), linear in the global batch. None: whole
        `[b_local, b_local]` blocks.

    Returns:
      Float32 scalar equal to `siglip_loss(image_emb, text_emb, scale, bias)`.
    """
    axes = _normalise_axes(batch_axes)
    ring = _ring_size(mesh, axes)
    if ring == 1:
        return siglip_loss(image_emb, text_emb, scale, bias)
    _check_batch(image_emb, text_emb, ring)
    global_batch = image_emb.shape[0]

    def local_sum(img, txt, scale, bias):
        # Cast before the ring: gradients then accumulate in float32 along it, as in the dense loss.
        img, txt = _f32(img), _f32(txt)
        sub = _sub_block(img.shape[0], block_size)
        # Own block: every pair as a negative, then swap the diagonal to positives.
        diag = scale * jnp.sum(img * txt, axis=-1) + bias  # [b]
        total = _neg_block_sum(img, txt, scale, bias, sub) + jnp.sum(
            jax.nn.log_sigmoid(diag) - jax.nn.log_sigmoid(-diag))

        def step(carry, _):
            txt, total = carry
            txt = _shift(txt, axes, ring)  # only negatives off the own block
            return (txt, total + _neg_block_sum(img, txt, scale, bias, sub)), None

        (_, total), _ = jax.lax.scan(step, (txt, total), None, length=ring - 1)
        return total

    fn = _ring_shard_map(local_sum, mesh, axes, n_scalars=2)
    return -fn(image_emb, text_emb, _f32(scale), _f32(bias)) / global_batch


def _lse_update(m, s, block: jax.Array, axis: int):
    """Folds a new block into a running logsumexp (m, s) along `axis` (online softmax)."""
    m_new = jnp.maximum(m, jax.lax.stop_gradient(jnp.max(block, axis=axis)))
    s_new = s * jnp.exp(m - m_new) + jnp.sum(jnp.exp(block - jnp.expand_dims(m_new, axis)), axis=axis)
    return m_new, s_new


def _fold_block(img, txt, scale, row, col, sub: int):
    """Folds the `[b, b]` logits block of (img, txt) into running logsumexps, tile by tile.

    row: (max, sum) `[b]` over columns (image->text); col: (max, sum) `[b]` of this text block's
    columns over rows (text->image). Tiles are `[b, sub]` and rematerialised in the backward pass.
    """
    @jax.checkpoint
    def tile(row, xs):
        t, cm, cs = xs
        block = _pair_logits(img, t, scale)  # [b, sub]
        return _lse_update(*row, block, axis=1), _lse_update(cm, cs, block, axis=0)

    n = txt.shape[0] // sub
    xs = (_tiles(txt, sub), col[0].reshape(n, sub), col[1].reshape(n, sub))
    row, (cm, cs) = jax.lax.scan(tile, row, xs)
    return row, (cm.reshape(-1), cs.reshape(-1))


_NEG = -1e30  # finite "minus infinity" for empty running maxima (exp underflows to exactly 0)


def chunked_clip_loss(image_emb: jax.Array, text_emb: jax.Array, scale, *,
                      mesh: Mesh | None,
                      batch_axes: str | Sequence[str] = ("data", "fsdp"),
                      block_size: int | None = DEFAULT_BLOCK_SIZE) -> jax.Array:
    """`clip_loss` computed on a ring of devices, never forming the `[B, B]` logits.

    Text blocks travel around the ring together with their column (text->image) running
    logsumexp `[b_local]`; each device folds every block into its row (image->text) running
    logsumexp `[b_local]` and into the travelling column accumulator. After `ring - 1` shifts
    every block has been seen; one more shift of the column accumulators brings them home. The
    diagonal (positive) logits are local from the start.

    Args:
      image_emb: `[batch, dim]` global array, batch split over `batch_axes`.
      text_emb: `[batch, dim]` global array, same sharding.
      scale: scalar multiplier, `exp(log_temperature)`.
      mesh: the device mesh; None (or one device along `batch_axes`) falls back to the dense loss.
      batch_axes: mesh axes the batch is split over, jointly (see the module docstring).
      block_size: text columns per logits tile (as in `chunked_siglip_loss`): temp memory linear
        in the global batch.

    Returns:
      Float32 scalar equal to `clip_loss(image_emb, text_emb, scale)`.
    """
    axes = _normalise_axes(batch_axes)
    ring = _ring_size(mesh, axes)
    if ring == 1:
        return clip_loss(image_emb, text_emb, scale)
    _check_batch(image_emb, text_emb, ring)
    global_batch = image_emb.shape[0]

    def local_sum(img, txt, scale):
        img, txt = _f32(img), _f32(txt)
        diag = scale * jnp.sum(img * txt, axis=-1)  # [b] positives, all local
        sub = _sub_block(img.shape[0], block_size)
        empty = (jnp.full_like(diag, _NEG), jnp.zeros_like(diag))  # device-varying carries
        row, col = _fold_block(img, txt, scale, empty, empty, sub)

        def step(carry, _):
            txt, col, row = carry
            txt, col = _shift((txt, col), axes, ring)
            row, col = _fold_block(img, txt, scale, row, col, sub)
            return (txt, col, row), None

        (_, col, row), _ = jax.lax.scan(step, (txt, col, row), None, length=ring - 1)
        (col_m, col_s), (row_m, row_s) = _shift(col, axes, ring), row  # home to the text's owner
        i2t = row_m + jnp.log(row_s) - diag
        t2i = col_m + jnp.log(col_s) - diag
        return jnp.sum(i2t) + jnp.sum(t2i)

    fn = _ring_shard_map(local_sum, mesh, axes, n_scalars=1)
    return fn(image_emb, text_emb, _f32(scale)) / (2.0 * global_batch)


# --------------------------------------------------------------------------------------------
# Dispatcher.
# --------------------------------------------------------------------------------------------


def contrastive_loss(kind: str, image_emb: jax.Array, text_emb: jax.Array, scale, bias=None, *,
                     mesh: Mesh | None = None, chunked: bool = False,
                     batch_axes: str | Sequence[str] = ("data", "fsdp"),
                     block_size: int | None = DEFAULT_BLOCK_SIZE) -> jax.Array:
    """Picks a contrastive loss by name.

    Args:
      kind: `'clip'` or `'siglip'`.
      image_emb, text_emb: `[batch, dim]` L2-normalised embeddings.
      scale: scalar multiplier. bias: scalar logit bias, required for `'siglip'`; ignored for
        `'clip'`, where a constant added to every logit cancels in the softmax.
      mesh, batch_axes: used when `chunked` (see `chunked_siglip_loss`).
      chunked: use the ring implementation (same value, no `[B, B]` matrix per device).
      block_size: logits tile width of the chunked losses (see `chunked_siglip_loss`).

    Returns:
      Float32 scalar.
    """
    if kind == "clip":
        if chunked:
            return chunked_clip_loss(image_emb, text_emb, scale, mesh=mesh, batch_axes=batch_axes,
                                     block_size=block_size)
        return clip_loss(image_emb, text_emb, scale)
    if kind == "siglip":
        if bias is None:
            raise ValueError("contrastive_loss('siglip', ...) needs a bias")
        if chunked:
            return chunked_siglip_loss(image_emb, text_emb, scale, bias, mesh=mesh,
                                       batch_axes=batch_axes, block_size=block_size)
        return siglip_loss(image_emb, text_emb, scale, bias)
    raise ValueError(f"unknown contrastive loss kind {kind!r}; valid kinds: {CONTRASTIVE_KINDS}")
