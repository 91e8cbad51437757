"""Optimizer from config: AdamW, warmup + cosine, global-norm clipping, frozen parameter paths."""
from __future__ import annotations

import re
from typing import Sequence

import flax
import jax
import optax


def path_str(path) -> str:
    """'img/encoder/block_0/attn/query/kernel' for a tree path."""
    return "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


def schedule(*, lr: float, total_steps: int, warmup_steps: int, end_lr_frac: float = 0.0):
    """Linear warmup to `lr`, then cosine decay to `lr * end_lr_frac` at `total_steps`."""
    warmup_steps = min(warmup_steps, max(total_steps - 1, 0))
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=lr, warmup_steps=warmup_steps,
        decay_steps=max(total_steps, warmup_steps + 1), end_value=lr * end_lr_frac)


def _decay_mask(params):
    # Decay matrices only: biases, norms, the temperature and the SigLIP bias stay undecayed.
    return jax.tree.map(lambda p: p.ndim >= 2, params)


def frozen_labels(params, patterns: Sequence[str]):
    """'frozen' for every parameter whose path matches a pattern (LiT: lock a tower), else 'train'."""
    compiled = [re.compile(p) for p in patterns]

    def label(path, _):
        return "frozen" if any(c.search(path_str(path)) for c in compiled) else "train"

    labels = jax.tree_util.tree_map_with_path(label, params)
    if patterns and not any(l == "frozen" for l in jax.tree.leaves(labels)):
        paths = [path_str(p) for p, _ in jax.tree_util.tree_leaves_with_path(params)][:8]
        raise ValueError(f"optim.freeze {list(patterns)} matches no parameter; paths look like {paths}")
    return labels


def make_optimizer(optim_cfg, total_steps: int, params=None):
    """optax transform and learning-rate schedule from `config.optim`."""
    if optim_cfg.name != "adamw":
        raise ValueError(f"optim.name: unknown optimizer {optim_cfg.name!r}; valid: adamw")
    lr_fn = schedule(lr=optim_cfg.lr, total_steps=total_steps, warmup_steps=optim_cfg.warmup_steps,
                     end_lr_frac=optim_cfg.end_lr_frac)
    parts = []
    if optim_cfg.grad_clip:
        parts.append(optax.clip_by_global_norm(optim_cfg.grad_clip))
    parts.append(optax.adamw(lr_fn, b1=optim_cfg.b1, b2=optim_cfg.b2, eps=optim_cfg.eps,
                             weight_decay=optim_cfg.weight_decay, mask=_decay_mask))
    tx = optax.chain(*parts)
    freeze = tuple(optim_cfg.get("freeze", ()) or ())
    if freeze:
        if params is None:
            raise ValueError("optim.freeze needs the parameter tree to resolve paths")
        labels = frozen_labels(flax.core.unfreeze(params), freeze)
        tx = optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)
    return tx, lr_fn
