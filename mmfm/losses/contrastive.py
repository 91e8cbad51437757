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
                        batch_axes: str | Sequence[str] = ("data", "fsdp")) -> jax.Array:
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
        b = img.shape[0]
        own = _pair_logits(img, txt, scale) + bias  # [b, b]
        z = 2.0 * jnp.eye(b, dtype=jnp.float32) - 1.0
        total = jnp.sum(jax.nn.log_sigmoid(z * own))

        def step(carry, _):
            txt, total = carry
            txt = _shift(txt, axes, ring)
            neg = _pair_logits(img, txt, scale) + bias  # only negatives off the own block
            return (txt, total + jnp.sum(jax.nn.log_sigmoid(-neg))), None

        (_, total), _ = jax.lax.scan(step, (txt, total), None, length=ring - 1)
        return total

    fn = _ring_shard_map(local_sum, mesh, axes, n_scalars=2)
    return -fn(image_emb, text_emb, _f32(scale), _f32(bias)) / global_batch


def _lse_init(block: jax.Array, axis: int):
    """Running (max, sum of exp) of `block` along `axis`; the max carries no gradient."""
    m = jax.lax.stop_gradient(jnp.max(block, axis=axis))
    return m, jnp.sum(jnp.exp(block - jnp.expand_dims(m, axis)), axis=axis)


def _lse_update(m, s, block: jax.Array, axis: int):
    """Folds a new block into a running logsumexp (m, s) along `axis` (online softmax)."""
    m_new = jnp.maximum(m, jax.lax.stop_gradient(jnp.max(block, axis=axis)))
    s_new = s * jnp.exp(m - m_new) + jnp.sum(jnp.exp(block - jnp.expand_dims(m_new, axis)), axis=axis)
    return m_new, s_new


def chunked_clip_loss(image_emb: jax.Array, text_emb: jax.Array, scale, *,
                      mesh: Mesh | None,
                      batch_axes: str | Sequence[str] = ("data", "fsdp")) -> jax.Array:
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
        own = _pair_logits(img, txt, scale)  # [b, b]
        row_m, row_s = _lse_init(own, axis=1)
        col_m, col_s = _lse_init(own, axis=0)

        def step(carry, _):
            txt, col_m, col_s, row_m, row_s = carry
            txt, col_m, col_s = _shift((txt, col_m, col_s), axes, ring)
            block = _pair_logits(img, txt, scale)
            row_m, row_s = _lse_update(row_m, row_s, block, axis=1)
            col_m, col_s = _lse_update(col_m, col_s, block, axis=0)
            return (txt, col_m, col_s, row_m, row_s), None

        carry = (txt, col_m, col_s, row_m, row_s)
        (_, col_m, col_s, row_m, row_s), _ = jax.lax.scan(step, carry, None, length=ring - 1)
        col_m, col_s = _shift((col_m, col_s), axes, ring)  # back to the owner of the text block
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
                     batch_axes: str | Sequence[str] = ("data", "fsdp")) -> jax.Array:
    """Picks a contrastive loss by name.

    Args:
      kind: `'clip'` or `'siglip'`.
      image_emb, text_emb: `[batch, dim]` L2-normalised embeddings.
      scale: scalar multiplier. bias: scalar logit bias, required for `'siglip'`; ignored for
        `'clip'`, where a constant added to every logit cancels in the softmax.
      mesh, batch_axes: used when `chunked` (see `chunked_siglip_loss`).
      chunked: use the ring implementation (same value, no `[B, B]` matrix per device).

    Returns:
      Float32 scalar.
    """
    if kind == "clip":
        if chunked:
            return chunked_clip_loss(image_emb, text_emb, scale, mesh=mesh, batch_axes=batch_axes)
        return clip_loss(image_emb, text_emb, scale)
    if kind == "siglip":
        if bias is None:
            raise ValueError("contrastive_loss('siglip', ...) needs a bias")
        if chunked:
            return chunked_siglip_loss(image_emb, text_emb, scale, bias, mesh=mesh,
                                       batch_axes=batch_axes)
        return siglip_loss(image_emb, text_emb, scale, bias)
    raise ValueError(f"unknown contrastive loss kind {kind!r}; valid kinds: {CONTRASTIVE_KINDS}")
