"""The `shapes` suite: what a model trained on the built-in data knows, beyond its average score.

    results = run_shapes_suite(model, data_dir="data", shapes=dict(image_size=64, ...))

On the captioned-shapes test split (every image's objects are known exactly):
  * zero-shot shape and colour of single-object images, and a linear probe of both on the image
    embeddings, each with its accuracy per colour, size and position group (worst group, spread);
  * retrieval of the whole test captions (R@1 both ways);
  * compositional hard negatives (`mmfm.evals.compositional`): per edit type, how often the true
    caption outscores a caption with one edit;
  * a dense probe (`mmfm.evals.dense_probe`): the colour and the shape under each patch, read
    linearly from the image tower's patch tokens.
Returns `{"metrics": {name: float}, "groups": {...}, "counts": {...}}`; the metric names are what
`mmfm eval --suite shapes` tabulates.
"""
from __future__ import annotations

import collections
import json
import logging
import time
from typing import Optional

import numpy as np
from PIL import Image

from mmfm.data import synthetic
from mmfm.evals import compositional
from mmfm.evals import datasets as ds
from mmfm.evals.dense_probe import dense_probe, patch_labels
from mmfm.evals.group_metrics import group_accuracy, mean_per_class_recall
from mmfm.evals.linear_probe import linear_probe
from mmfm.evals.retrieval import retrieval_metrics
from mmfm.evals.zeroshot import class_embeddings, zeroshot_predict

__all__ = ["GROUP_ATTRIBUTES", "run_shapes_suite"]

log = logging.getLogger("mmfm")
GROUP_ATTRIBUTES = ("color", "size", "position")
# Group sizes below this are listed but never the "worst group" (a handful of images is noise).
MIN_GROUP = 10


def _objects(record) -> list[dict]:
    raw = record["objects"]
    return json.loads(raw.decode() if isinstance(raw, bytes) else raw)


def _group_of(obj: dict, attribute: str) -> str:
    if attribute == "position":
        return synthetic.position_phrase(float(obj["x"]), float(obj["y"]))
    return str(obj[attribute])


def _grouped(correct: np.ndarray, objects: list[list[dict]], prefix: str, out: dict,
             groups: dict) -> None:
    """Per-group accuracy of single-object examples by each attribute of their only object."""
    for attribute in GROUP_ATTRIBUTES:
        keys = [_group_of(objs[0], attribute) for objs in objects]
        # A tiny test split (tests, quick looks) may have no group of MIN_GROUP: rank them all.
        most = max(collections.Counter(keys).values())
        g = group_accuracy(correct, keys, min_count=MIN_GROUP if most >= MIN_GROUP else 1)
        groups[f"{prefix}/{attribute}"] = g
        out[f"{prefix}/worst_{attribute}"] = g["worst"]
        out[f"{prefix}/spread_{attribute}"] = g["spread"]
    out[f"{prefix}/worst_group"] = min(out[f"{prefix}/worst_{a}"] for a in GROUP_ATTRIBUTES)


def _labels(objects: list[list[dict]], attribute: str) -> np.ndarray:
    names = synthetic.SHAPES if attribute == "shape" else synthetic.COLORS
    return np.array([names.index(objs[0][attribute]) for objs in objects], np.int32)


def _mask_labels(objs: list[dict], data_size: int, model_size: int, grid: int,
                 attribute: str) -> np.ndarray:
    mask = synthetic.object_mask(objs, data_size)
    if model_size != data_size:  # the model sees the image resized: so must its labels
        mask = np.asarray(Image.fromarray(mask).resize((model_size, model_size), Image.NEAREST))
    names = synthetic.SHAPES if attribute == "shape" else synthetic.COLORS
    return patch_labels(mask, [names.index(o[attribute]) for o in objs], grid)


def _patch_tokens(m, source, indices: np.ndarray) -> np.ndarray:
    """Patch tokens `[n, N, W]`, decoding one eval batch of images at a time."""
    images = ds.ImageSource(source, indices)
    bs = m.batch_size
    return np.concatenate([m.patch_tokens(images.images(range(s, min(s + bs, len(images)))))
                           for s in range(0, len(images), bs)])


def run_shapes_suite(m, *, data_dir: str, shapes: Optional[dict] = None,
                     max_train_examples: int = 4000, dense_train_images: int = 1000,
                     seed: int = 0) -> dict:
    """Runs the suite on an `EvalModel` (see the module docstring)."""
    shapes = dict(shapes or {})
    test_src = ds.shapes_source("test", data_dir, shapes)
    train_src = ds.shapes_source("train", data_dir, shapes)
    test_idx = np.arange(len(test_src))
    test_objs = [_objects(test_src[int(i)]) for i in test_idx]
    test_img = m.encode_image_source(ds.ImageSource(test_src, test_idx))
    metrics, groups, counts = {}, {}, {"test_images": len(test_idx)}
    t0 = time.perf_counter()
    stage = lambda what: log.info("shapes suite: %s (%.0f s elapsed)", what, time.perf_counter() - t0)
    stage(f"encoded {len(test_idx)} test images; zero-shot and linear probes")

    # Zero-shot and probes on single-object images: the label names the only object.
    single = np.array([len(o) == 1 for o in test_objs])
    single_objs = [o for o, s in zip(test_objs, single) if s]
    n_train = min(len(train_src), int(max_train_examples))
    train_objs_all = [_objects(train_src[i]) for i in range(n_train)]
    train_single = np.array([i for i, o in enumerate(train_objs_all) if len(o) == 1])
    train_objs = [train_objs_all[i] for i in train_single]
    train_img = m.encode_image_source(ds.ImageSource(train_src, train_single))
    counts.update(single_object_test=int(single.sum()), probe_train=len(train_single))
    for attribute, (names, templates) in synthetic.ZEROSHOT.items():
        labels = _labels(single_objs, attribute)
        cls = class_embeddings(m.encode_texts, list(names), list(templates))
        pred = np.asarray(zeroshot_predict(test_img[single], cls))
        prefix = f"zeroshot_{attribute}"
        metrics[f"{prefix}/top1"] = float(np.mean(pred == labels))
        metrics[f"{prefix}/mean_per_class_recall"] = mean_per_class_recall(pred, labels)
        _grouped(pred == labels, single_objs, prefix, metrics, groups)
        probe = linear_probe(train_img, _labels(train_objs, attribute), test_img[single], labels,
                             num_classes=len(names), seed=seed)
        prefix = f"probe_{attribute}"
        metrics[f"{prefix}/top1"] = probe["accuracy"]
        _grouped(probe["predictions"] == labels, single_objs, prefix, metrics, groups)

    stage("retrieval and compositional hard negatives")
    # Retrieval of the whole captions (every test image, 1-3 objects).
    captions = [synthetic.compose_caption(o) for o in test_objs]
    true_txt = m.encode_texts(captions)
    r = retrieval_metrics(test_img, true_txt, np.arange(len(captions)), ks=(1, 5))
    metrics.update({f"retrieval/{k}": v for k, v in r.items()})
    metrics["retrieval/mean_R@1"] = (r["i2t/R@1"] + r["t2i/R@1"]) / 2

    # Compositional hard negatives: one edit per caption, every applicable edit type per image.
    rng = np.random.default_rng([seed, 7])
    rows, neg_captions, edits = [], [], []
    for i, objs in enumerate(test_objs):
        for edit, caption in compositional.negatives_for(objs, rng).items():
            rows.append(i)
            neg_captions.append(caption)
            edits.append(edit)
    rows = np.asarray(rows)
    comp = compositional.compositional_scores(test_img[rows], true_txt[rows],
                                              m.encode_texts(neg_captions), edits)
    metrics.update({f"compositional/{k}": comp[k] for k in ("mean", "overall")})
    metrics.update({f"compositional/{e}": v["accuracy"] for e, v in comp["edits"].items()})
    counts["compositional_pairs"] = len(rows)

    stage(f"{len(rows)} compositional pairs scored; dense probe")
    # Dense probe on patch tokens: the colour and the shape under each patch (0 = background).
    data_size = int(shapes.get("image_size", 64))
    model_size, grid = int(m.preprocess.image_size), int(m.model.cfg.image.grid)
    n_dense = min(len(train_src), int(dense_train_images))
    dense_train_objs = train_objs_all[:n_dense] if n_dense <= n_train else [
        _objects(train_src[i]) for i in range(n_dense)]
    train_tok = _patch_tokens(m, train_src, np.arange(n_dense))
    test_tok = _patch_tokens(m, test_src, test_idx)
    for attribute in ("color", "shape"):
        names = synthetic.SHAPES if attribute == "shape" else synthetic.COLORS
        lab = lambda objs_list: np.stack([_mask_labels(o, data_size, model_size, grid, attribute)
                                          for o in objs_list])
        res = dense_probe(train_tok, lab(dense_train_objs), test_tok, lab(test_objs),
                          num_classes=len(names) + 1, seed=seed)
        for k in ("accuracy", "mean_per_class_recall", "object_accuracy"):
            metrics[f"dense_{attribute}/{k}"] = res[k]
    counts.update(dense_train_images=n_dense, dense_train_patches=res["num_train_patches"])
    return {"metrics": metrics, "groups": groups, "counts": counts}
