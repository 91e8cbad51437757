"""Dense probe: a linear probe of what lies under each patch, read from the image tower's tokens.

    labels = patch_labels(mask, values, grid=4)      # [16] ints: 0 = background, else value + 1
    res = dense_probe(train_tokens, train_labels, test_tokens, test_labels, num_classes=9)

A global embedding can name a red circle without knowing where it is; dense features (what
segmentation, detection and the SigLIP 2 recipe's local objectives need) must say, at every patch,
what is there. The probe is a linear classifier shared by all patches (a 1x1 convolution), fitted
with the same L-BFGS logistic regression as the image-level probes. Because most patches are
background, it reports mean per-class recall next to accuracy, and accuracy on object patches.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from mmfm.evals.group_metrics import mean_per_class_recall
from mmfm.evals.linear_probe import linear_probe

__all__ = ["dense_probe", "patch_labels"]


def patch_labels(mask: np.ndarray, values: Sequence[int], grid: int,
                 min_cover: float = 0.25) -> np.ndarray:
    """Per-patch class ids from an object mask.

    Args:
      mask: int `[S, S]`, 0 on the background and i + 1 on object i's pixels (`object_mask`).
      values: the class id of each object (e.g. its colour index).
      grid: patches per side; S must be a multiple of it (the image as the model sees it).
      min_cover: the object covering most of a patch names it when it covers at least this
        fraction of the patch's pixels; otherwise the patch is background. A small object may sit
        across four patches: a strict majority would call every one of them background.
    Returns int32 `[grid * grid]` in row-major patch order (the ViT's token order): 0 for
    background, `values[i] + 1` for object i.
    """
    mask = np.asarray(mask)
    size = mask.shape[0]
    if mask.shape != (size, size) or size % grid:
        raise ValueError(f"mask {mask.shape} must be square with a side divisible by grid={grid}")
    p = size // grid
    blocks = mask.reshape(grid, p, grid, p).transpose(0, 2, 1, 3).reshape(grid * grid, p * p)
    lookup = np.concatenate([[0], np.asarray(values, np.int64) + 1])
    out = np.zeros(grid * grid, np.int32)
    for k, block in enumerate(blocks):
        counts = np.bincount(block, minlength=len(lookup))
        counts[0] = 0
        top = int(np.argmax(counts))
        if top and counts[top] >= min_cover * p * p:
            out[k] = lookup[top]
    return out


def dense_probe(train_tokens: np.ndarray, train_labels: np.ndarray, test_tokens: np.ndarray,
                test_labels: np.ndarray, *, num_classes: int, max_train_patches: int = 20000,
                seed: int = 0) -> dict:
    """Linear probe on patch tokens `[n, N, W]` with per-patch labels `[n, N]` (0 = background).

    At most `max_train_patches` training patches (a seeded random subset) keep the fit cheap.
    Returns {"accuracy", "mean_per_class_recall", "object_accuracy" (patches with an object),
    "best_l2", "num_train_patches", "num_test_patches"}.
    """
    tr_x = np.asarray(train_tokens, np.float32).reshape(-1, train_tokens.shape[-1])
    te_x = np.asarray(test_tokens, np.float32).reshape(-1, test_tokens.shape[-1])
    tr_y = np.asarray(train_labels, np.int32).reshape(-1)
    te_y = np.asarray(test_labels, np.int32).reshape(-1)
    if len(tr_x) != len(tr_y) or len(te_x) != len(te_y):
        raise ValueError(f"tokens and labels differ in patch count: train {len(tr_x)} vs "
                         f"{len(tr_y)}, test {len(te_x)} vs {len(te_y)}")
    if len(tr_x) > max_train_patches:
        keep = np.sort(np.random.default_rng(seed).choice(len(tr_x), max_train_patches,
                                                          replace=False))
        tr_x, tr_y = tr_x[keep], tr_y[keep]
    res = linear_probe(tr_x, tr_y, te_x, te_y, num_classes=num_classes, seed=seed)
    pred = res["predictions"]
    objects = te_y > 0
    return {"accuracy": res["accuracy"],
            "mean_per_class_recall": mean_per_class_recall(pred, te_y),
            "object_accuracy": float(np.mean(pred[objects] == te_y[objects])) if objects.any()
            else float("nan"),
            "best_l2": res["best_l2"], "num_train_patches": int(len(tr_y)),
            "num_test_patches": int(len(te_y))}
