"""Compositional hard negatives for captioned shapes (SugarCrepe's edit types, adapted).

SugarCrepe (Hsieh et al., 2023) asks whether an image is closer to its true caption than to a
minimally edited, false one. On captioned shapes the truth of a caption is exact: a full caption
names every object with its size, colour, shape and position, so it is TRUE for an image exactly
when the multiset of (size, color, shape, position phrase) tuples it states (`describe`) equals the
image's. Each negative is one edit of the image's object list, checked to be false:

  replace_color / replace_shape / replace_size  one object's attribute set to another value
  swap_color / swap_size / swap_position         that attribute exchanged between two objects
  add_object                                     an object absent from the image appended
  drop_object                                    one object left out; false because full captions
                                                 are exhaustive (the image has one more object)

A swap may leave the description unchanged (two small circles in one grid cell, differing only
in colour), so swaps are drawn only among the pairs that change it.

    from mmfm.data.synthetic import compose_caption, sample_objects
    rng = np.random.default_rng(0)
    objects = sample_objects(rng, 64, 2)
    caption = compose_caption(objects)    # "a small red circle at the top and a large ..."
    negatives = negatives_for(objects, rng)   # {"replace_color": "a small green circle ...", ...}
    # encode images / true captions / negative captions, L2-normalise, then
    scores = compositional_scores(image_emb, true_emb, neg_emb, edits)
    scores["mean"], scores["edits"]["swap_position"]["accuracy"]

"""
from __future__ import annotations

import collections
import itertools
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from mmfm.data.synthetic import COLORS, SHAPES, SIZES, compose_caption, position_phrase

__all__ = ["EDIT_TYPES", "check_negative", "compositional_scores", "describe", "make_negative",
           "negatives_for"]

EDIT_TYPES: tuple[str, ...] = (
    "replace_color", "replace_shape", "replace_size", "swap_color", "swap_size", "swap_position",
    "add_object", "drop_object")

Objects = Sequence[Mapping[str, Any]]
# Index of each attribute in a described tuple (size, color, shape, position phrase).
_FIELD = {"size": 0, "color": 1, "shape": 2, "position": 3}
_VALUES = {"size": SIZES, "color": COLORS, "shape": SHAPES}
# Centres of the 3x3 grid cells the captions name: where an added object is said to be.
_CELL_CENTRES = tuple((x, y) for y in (1 / 6, 1 / 2, 5 / 6) for x in (1 / 6, 1 / 2, 5 / 6))


def _check_edit(edit: str) -> None:
    if edit not in EDIT_TYPES:
        raise ValueError(f"unknown edit {edit!r}; valid: {list(EDIT_TYPES)}")


def _describe_object(obj: Mapping[str, Any]) -> tuple[str, ...]:
    """(size, color, shape, position phrase) of one object: what its full caption states."""
    return (obj["size"], obj["color"], obj["shape"],
            position_phrase(float(obj["x"]), float(obj["y"])))


def describe(objects: Objects) -> collections.Counter:
    """Multiset of (size, color, shape, position phrase) tuples the full caption states."""
    return collections.Counter(_describe_object(obj) for obj in objects)


def _swapped(objects: Objects, i: int, j: int, keys: tuple[str, ...]) -> list[dict]:
    out = [dict(obj) for obj in objects]
    for key in keys:
        out[i][key], out[j][key] = objects[j][key], objects[i][key]
    return out


def make_negative(objects: Objects, edit: str, rng: np.random.Generator) -> list[dict] | None:
    """An edited copy of `objects` (its caption is `compose_caption` of it), or None if `edit`
    does not apply (a swap or drop needs two objects; a swap needs a pair it would change).

    swap_position exchanges the centres x, y (they determine the phrase); bbox stays as drawn, so
    the negative is a description, not a layout to render.
    """
    _check_edit(edit)
    if not objects:
        raise ValueError("make_negative needs at least one object")
    kind, field = edit.split("_")
    n = len(objects)
    if kind == "replace":
        # Replacing one tuple by a different one always changes the multiset: no check needed.
        i = int(rng.integers(n))
        choices = [v for v in _VALUES[field] if v != objects[i][field]]
        out = [dict(obj) for obj in objects]
        out[i][field] = choices[int(rng.integers(len(choices)))]
        return out
    if kind == "swap":
        truth = describe(objects)
        keys = ("x", "y") if field == "position" else (field,)
        f = _FIELD[field]
        tuples = [_describe_object(obj) for obj in objects]
        candidates = [_swapped(objects, i, j, keys) for i, j in itertools.combinations(range(n), 2)
                      if tuples[i][f] != tuples[j][f]]
        candidates = [c for c in candidates if describe(c) != truth]
        return candidates[int(rng.integers(len(candidates)))] if candidates else None
    if edit == "add_object":
        # A (size, colour, shape) the image does not have at all, so the extra object is new
        # rather than a second copy of one that is there.
        present = {(obj["size"], obj["color"], obj["shape"]) for obj in objects}
        absent = [t for t in itertools.product(SIZES, COLORS, SHAPES) if t not in present]
        size, color, shape = absent[int(rng.integers(len(absent)))]
        x, y = _CELL_CENTRES[int(rng.integers(len(_CELL_CENTRES)))]
        new = {"shape": shape, "color": color, "size": size, "x": round(x, 4), "y": round(y, 4),
               "bbox": None}  # not in the image, so it has no box
        return [dict(obj) for obj in objects] + [new]
    # drop_object: a caption needs at least one object.
    if n < 2:
        return None
    i = int(rng.integers(n))
    return [dict(obj) for k, obj in enumerate(objects) if k != i]


def check_negative(objects: Objects, negative: Objects, edit: str) -> None:
    """Raises ValueError unless `negative` is `objects` with exactly the one edit `edit`, and is
    false for the image (describes a different multiset).

    Compared as multisets of described tuples, so object order does not matter: the removed tuples
    (in the image, not in the negative) and the added ones must be exactly those of the edit.
    """
    _check_edit(edit)
    if not negative:
        raise ValueError(f"{edit}: the negative has no objects (no caption)")
    truth, neg = describe(objects), describe(negative)
    for t in neg:
        if t[0] not in SIZES or t[1] not in COLORS or t[2] not in SHAPES:
            raise ValueError(f"{edit}: negative object {t} has a value outside the vocabulary")
    if truth == neg:
        raise ValueError(f"{edit}: the negative states exactly what the image shows (it is true)")
    removed, added = sorted((truth - neg).elements()), sorted((neg - truth).elements())
    kind, field = edit.split("_")
    if kind == "replace":
        f = _FIELD[field]
        ok = (len(removed) == len(added) == 1 and
              [k for k in range(4) if removed[0][k] != added[0][k]] == [f])
    elif kind == "swap":
        f = _FIELD[field]
        ok = len(removed) == len(added) == 2 and removed[0][f] != removed[1][f]
        if ok:
            a, b = removed
            expect = [a[:f] + (b[f],) + a[f + 1:], b[:f] + (a[f],) + b[f + 1:]]
            ok = added == sorted(expect)
    elif edit == "add_object":
        ok = (not removed and len(added) == 1 and
              added[0][:3] not in {t[:3] for t in truth})
    else:  # drop_object
        ok = not added and len(removed) == 1
    if not ok:
        raise ValueError(f"negative is not a single {edit}: removed {removed}, added {added}")


def negatives_for(objects: Objects, rng: np.random.Generator,
                  edits: Sequence[str] = EDIT_TYPES) -> dict[str, str]:
    """edit -> checked negative caption, for each edit in `edits` that applies to `objects`."""
    out = {}
    for edit in edits:
        negative = make_negative(objects, edit, rng)
        if negative is not None:
            check_negative(objects, negative, edit)
            out[edit] = compose_caption(negative)
    return out


def compositional_scores(image_emb, true_text_emb, neg_text_emb, edits: Sequence[str]) -> dict:
    """How often an image is closer to its true caption than to its hard negative.

    Args:
      image_emb, true_text_emb, neg_text_emb: `[n, D]`, L2-normalised by the caller (the dot
        product is the cosine); row i of each belongs to the same (image, caption, negative).
      edits: `[n]` edit type of each negative.
    Returns {"edits": {edit: {"accuracy", "count"}}, "mean": macro mean over edit types,
    "overall": mean over all pairs, "count": n}. A tie (or NaN) counts as a miss: a collapsed
    model scores 0, not 1.
    """
    img, pos, neg = (np.asarray(a, np.float64) for a in (image_emb, true_text_emb, neg_text_emb))
    edits = [str(e) for e in edits]
    if img.ndim != 2 or img.shape != pos.shape or img.shape != neg.shape:
        raise ValueError(f"embeddings must share one [n, D] shape, got {img.shape}, {pos.shape}, "
                         f"{neg.shape}")
    if len(edits) != img.shape[0]:
        raise ValueError(f"{len(edits)} edit labels for {img.shape[0]} pairs")
    if not edits:
        raise ValueError("compositional_scores of no pairs")
    correct = np.sum(img * pos, axis=1) > np.sum(img * neg, axis=1)
    labels = np.array(edits)
    # Known edit types first, in EDIT_TYPES order; any other labels after, in order of appearance.
    order = [e for e in EDIT_TYPES if e in edits] + [e for e in dict.fromkeys(edits)
                                                    if e not in EDIT_TYPES]
    table = {e: {"accuracy": float(np.mean(correct[labels == e])),
                 "count": int(np.sum(labels == e))} for e in order}
    return {"edits": table, "mean": float(np.mean([v["accuracy"] for v in table.values()])),
            "overall": float(np.mean(correct)), "count": len(edits)}
