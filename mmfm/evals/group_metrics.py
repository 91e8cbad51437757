"""Classification metrics beyond top-1: mean per-class recall and accuracy per group.

    recall = mean_per_class_recall(pred, labels)           # = sklearn balanced_accuracy_score
    g = group_accuracy(pred == labels, groups, names)       # {"groups": {...}, "worst": ..., ...}

Benchmarks report mean per-class recall where classes are unbalanced (FGVC Aircraft, Pets,
Caltech-101, Flowers in CLIP_benchmark / DataComp), and worst-group accuracy where images carry a
group label (Dollar Street's income groups, GeoDE's regions, the built-in data's colours, sizes and
positions): a model can score well on average and fail one group entirely.
"""
from __future__ import annotations

from typing import Mapping, Optional, Sequence

import numpy as np

__all__ = ["group_accuracy", "mean_per_class_recall", "topk_correct"]


def topk_correct(logits: np.ndarray, labels: np.ndarray, k: int = 1) -> np.ndarray:
    """bool `[n]`: the label is among the `k` highest logits (ties broken by index, like argsort)."""
    logits, labels = np.asarray(logits), np.asarray(labels)
    top = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    return np.any(top == labels[:, None], axis=1)


def mean_per_class_recall(pred: np.ndarray, labels: np.ndarray,
                          num_classes: Optional[int] = None) -> float:
    """Mean over the classes present in `labels` of the fraction of that class predicted right."""
    pred, labels = np.asarray(pred), np.asarray(labels)
    if pred.shape != labels.shape:
        raise ValueError(f"pred {pred.shape} and labels {labels.shape} differ in shape")
    if not labels.size:
        raise ValueError("mean_per_class_recall of no examples")
    classes = np.unique(labels) if num_classes is None else [
        c for c in range(int(num_classes)) if np.any(labels == c)]
    return float(np.mean([np.mean(pred[labels == c] == c) for c in classes]))


def group_accuracy(correct: np.ndarray, groups: Sequence, names: Optional[Mapping] = None,
                   min_count: int = 1) -> dict:
    """Accuracy per group, the worst group and the spread (best minus worst).

    Args:
      correct: bool `[n]`, whether each example was classified right.
      groups: `[n]` group ids or names.
      names: optional id -> display name.
      min_count: groups with fewer examples are listed but left out of worst / spread (a group of
        two images is noise, not a finding).
    Returns {"groups": {name: {"accuracy", "count"}}, "worst": float, "worst_group": name,
    "best": float, "spread": float, "mean": accuracy over all examples}.
    """
    correct = np.asarray(correct, bool)
    groups = np.asarray(groups)
    if correct.shape != groups.shape:
        raise ValueError(f"correct {correct.shape} and groups {groups.shape} differ in shape")
    if not correct.size:
        raise ValueError("group_accuracy of no examples")
    names = dict(names or {})
    table = {}
    for g in np.unique(groups):
        sel = groups == g
        key = names.get(g.item() if hasattr(g, "item") else g, str(g))
        table[str(key)] = {"accuracy": float(np.mean(correct[sel])), "count": int(np.sum(sel))}
    ranked = {k: v["accuracy"] for k, v in table.items() if v["count"] >= min_count}
    if not ranked:
        raise ValueError(f"no group has at least {min_count} examples: {table}")
    worst_group = min(ranked, key=lambda k: (ranked[k], k))
    best = max(ranked.values())
    return {"groups": table, "worst": ranked[worst_group], "worst_group": worst_group,
            "best": best, "spread": best - ranked[worst_group], "mean": float(np.mean(correct))}
