"""Masked-prediction losses: MAE pixel reconstruction and masked language modelling.

Pure functions computing in float32 whatever the input dtype. Masks use 1 (or True) for positions
that were masked out and must be predicted; only those positions contribute. A batch with no
masked position gives a loss of 0 (and zero gradients) instead of NaN.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from mmfm.patches import patchify, unpatchify

__all__ = ["patchify", "unpatchify", "mae_loss", "mlm_loss", "mlm_accuracy", "NORM_PIX_EPS"]

# Added to each patch's variance before the square root, as in the MAE reference.
NORM_PIX_EPS = 1e-6


def _masked_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
    """`sum(values * mask) / sum(mask)`, 0 when the mask is empty.

    `jnp.where` rather than a product so NaN/inf at unmasked positions cannot leak in, and a safe
    denominator so the gradient is finite too when the mask is empty.
    """
    mask = mask.astype(jnp.float32)
    total = jnp.sum(jnp.where(mask > 0, values * mask, 0.0))
    count = jnp.sum(mask)
    return jnp.where(count > 0, total / jnp.where(count > 0, count, 1.0), 0.0)


def mae_loss(pred: jax.Array, images: jax.Array, mask: jax.Array, patch_size: int,
             norm_pix: bool = True) -> jax.Array:
    """MAE reconstruction loss over masked patches.

    With `norm_pix`, each target patch is normalised by its own statistics:
    `(t - mean) / sqrt(var + 1e-6)` over the patch's `P * P * C` values, where `var` is the biased
    (population, ddof=0) variance. The MAE reference uses PyTorch's `.var()`, which is unbiased
    (ddof=1); we choose ddof=0 so a patch's normalised values have exactly unit variance. The two
    differ by a factor `n / (n - 1)` in the variance (under 0.2% for 16x16x3 patches).

    Args:
      pred: `[batch, num_patches, P * P * channels]` predicted pixels, in `patchify`'s order.
      images: `[batch, height, width, channels]` float images, in whatever normalisation the
        caller trains with (the targets are patches of these values).
      mask: `[batch, num_patches]`, 1 where the patch was removed from the encoder input.
      patch_size: side P of the square patches.
      norm_pix: normalise each target patch by its own mean and variance.

    Returns:
      Float32 scalar: per-patch mean squared error, averaged over masked patches only.
    """
    target = patchify(images.astype(jnp.float32), patch_size)  # [b, n, p*p*c]
    if pred.shape != target.shape:
        raise ValueError(f"pred shape {pred.shape} does not match patchified images {target.shape}")
    if norm_pix:
        mean = jnp.mean(target, axis=-1, keepdims=True)
        var = jnp.var(target, axis=-1, keepdims=True)  # ddof=0, see the docstring
        target = (target - mean) / jnp.sqrt(var + NORM_PIX_EPS)
    per_patch = jnp.mean(jnp.square(pred.astype(jnp.float32) - target), axis=-1)  # [b, n]
    return _masked_mean(per_patch, mask)


def _token_nll(logits: jax.Array, targets: jax.Array, mask: jax.Array) -> jax.Array:
    """Per-token negative log-likelihood `[batch, seq]` (0 where unmasked)."""
    logits = logits.astype(jnp.float32)
    # Unmasked targets may be padding ids such as -100; send them to a valid index.
    safe = jnp.where(mask > 0, targets, 0).astype(jnp.int32)
    picked = jnp.take_along_axis(logits, safe[..., None], axis=-1)[..., 0]
    return jax.nn.logsumexp(logits, axis=-1) - picked


def mlm_loss(logits: jax.Array, targets: jax.Array, mask: jax.Array) -> jax.Array:
    """Masked-language-modelling cross-entropy.

    Args:
      logits: `[batch, seq, vocab]` predictions.
      targets: `[batch, seq]` int original token ids; values at unmasked positions are ignored
        (may be any integer, e.g. -100).
      mask: `[batch, seq]`, 1 where the token was masked and must be predicted.

    Returns:
      Float32 scalar: cross-entropy averaged over all masked tokens of the batch (0 if none).
    """
    return _masked_mean(_token_nll(logits, targets, mask), mask)


def mlm_accuracy(logits: jax.Array, targets: jax.Array, mask: jax.Array) -> jax.Array:
    """Fraction of masked tokens whose argmax prediction is the target (0 if none are masked).

    Args:
      logits: `[batch, seq, vocab]`. targets: `[batch, seq]` int. mask: `[batch, seq]`.

    Returns:
      Float32 scalar in [0, 1].
    """
    correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
    return _masked_mean(correct, mask)
