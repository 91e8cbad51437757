"""NaFlex preprocessing (SigLIP 2): an image at its own aspect ratio -> a padded patch sequence.

Each image is resized so that its patch grid (rows x cols, each side a multiple of the patch
size) is as large as fits in `max_num_patches` while keeping the aspect ratio, as transformers'
Siglip2ImageProcessor sizes it; then normalised, cut into patches (row-major; pixels inside a
patch in (row, col, channel) order) and padded to `max_num_patches`. The model input is a dict:

    patches         float32 [max_num_patches, P*P*3]
    spatial_shapes  int32 [2]             (rows, cols) of the image's patch grid
    patch_valid     bool [max_num_patches] (False on padding)

`stack` batches a list of such dicts (images of different shapes batch together).
"""
from __future__ import annotations

import math

import numpy as np

NAFLEX_KEYS = ("patches", "spatial_shapes", "patch_valid")


def _side(size: int, scale: float, patch: int) -> int:
    return max(patch, int(math.ceil(size * scale / patch) * patch))


def naflex_size(height: int, width: int, patch: int, max_num_patches: int) -> tuple[int, int]:
    """(height, width) in pixels, multiples of `patch`, with (h/P)*(w/P) <= max_num_patches: the
    largest scale of the image that fits, found by bisection on the scale factor (to 1e-5, as the
    reference processor searches it, so both pick the same size at the same boundaries)."""
    if height < 1 or width < 1:
        raise ValueError(f"image has no pixels: {height}x{width}")
    if max_num_patches < 1:
        raise ValueError(f"max_num_patches must be >= 1, got {max_num_patches}")
    lo, hi, eps = 1e-6, 100.0, 1e-5
    while hi - lo >= eps:
        mid = (lo + hi) / 2
        rows, cols = _side(height, mid, patch) // patch, _side(width, mid, patch) // patch
        if rows * cols <= max_num_patches:
            lo = mid
        else:
            hi = mid
    return _side(height, lo, patch), _side(width, lo, patch)


def to_patches(image: np.ndarray, patch: int, max_num_patches: int) -> dict:
    """A normalised float image [h, w, C] (sides multiples of `patch`) -> the padded model input."""
    h, w, c = image.shape
    rows, cols = h // patch, w // patch
    if rows * cols > max_num_patches or rows * patch != h or cols * patch != w:
        raise ValueError(f"image {h}x{w} does not make at most {max_num_patches} patches of {patch}")
    p = image.reshape(rows, patch, cols, patch, c).transpose(0, 2, 1, 3, 4).reshape(rows * cols, -1)
    out = np.zeros((max_num_patches, patch * patch * c), np.float32)
    out[: rows * cols] = p
    valid = np.zeros((max_num_patches,), bool)
    valid[: rows * cols] = True
    return {"patches": out, "spatial_shapes": np.asarray([rows, cols], np.int32), "patch_valid": valid}


def stack(items) -> dict:
    """A list of NaFlex inputs (dicts from `to_patches`) -> a batch dict."""
    items = list(items)
    if not items:
        raise ValueError("no images to stack")
    lengths = {len(it["patch_valid"]) for it in items}
    if len(lengths) != 1:
        raise ValueError(f"NaFlex inputs padded to different max_num_patches: {sorted(lengths)}")
    return {k: np.stack([it[k] for it in items]) for k in NAFLEX_KEYS}


def is_naflex_input(x) -> bool:
    return isinstance(x, dict) and all(k in x for k in NAFLEX_KEYS)
