"""Images <-> flattened non-overlapping patches (the tokenisation of the image tower and of MAE)."""
from __future__ import annotations

from collections.abc import Sequence

import jax

__all__ = ["patchify", "unpatchify"]


def patchify(images: jax.Array, patch_size: int) -> jax.Array:
    """Cuts images into flattened non-overlapping patches.

    Args:
      images: `[batch, height, width, channels]`; height and width divisible by `patch_size`.
      patch_size: side P of the square patches.

    Returns:
      `[batch, num_patches, P * P * channels]` where patches run row-major over the
      `(height / P, width / P)` grid and the values inside a patch are ordered (row, col, channel).
      The dtype is unchanged.
    """
    b, h, w, c = images.shape
    p = patch_size
    if h % p or w % p:
        raise ValueError(f"image size {(h, w)} is not divisible by patch size {p}")
    gh, gw = h // p, w // p
    x = images.reshape(b, gh, p, gw, p, c)
    x = x.transpose(0, 1, 3, 2, 4, 5)  # [b, gh, gw, p, p, c]
    return x.reshape(b, gh * gw, p * p * c)


def unpatchify(patches: jax.Array, patch_size: int, image_hw: Sequence[int]) -> jax.Array:
    """Inverse of `patchify`.

    Args:
      patches: `[batch, num_patches, P * P * channels]` in `patchify`'s order.
      patch_size: side P of the square patches.
      image_hw: `(height, width)` of the images.

    Returns:
      `[batch, height, width, channels]`.
    """
    b, n, d = patches.shape
    p = patch_size
    h, w = image_hw
    gh, gw = h // p, w // p
    if h % p or w % p or gh * gw != n or d % (p * p):
        raise ValueError(
            f"patches of shape {patches.shape} do not tile an image of size {(h, w)} with patch {p}")
    c = d // (p * p)
    x = patches.reshape(b, gh, gw, p, p, c)
    x = x.transpose(0, 1, 3, 2, 4, 5)  # [b, gh, p, gw, p, c]
    return x.reshape(b, h, w, c)
