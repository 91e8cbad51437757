"""Evaluators built from `config.evals.evaluators`: each runs on an `EvalModel` and yields metrics.

    config.evals.evaluators = {
        "cifar10_zs": dict(type="zeroshot", dataset="cifar10", split="test", every=1000),
        "coco": dict(type="retrieval", dataset="coco_captions", split="test", pictures=4),
        "c10_probe": dict(type="linear_probe", dataset="cifar10", max_train_examples=10_000),
        "c10_fewshot": dict(type="few_shot", dataset="cifar10", shots=(1, 5, 10, 25)),
        "recon": dict(type="mae_pictures", dataset="captioned_shapes", num_images=8),
        "c10_head": dict(type="classify", dataset="cifar10"),   # a fine-tuned classifier head
    }
    (a list of dicts with a "name" key works too)

`dataset` is a catalog name, or for retrieval / zeroshot / mae_pictures any corpus prepared with
`mmfm data prepare` as `jsonl/NAME` or `wds/NAME` (see `mmfm.evals.datasets`). A split of fewer
than `SMALL_SPLIT` (100) examples is evaluated with a warning giving its size.

Every evaluator returns `{"<name>/<metric>": float}`. `every`: run every N training steps
(0 = only at the end of training); `at_start=True` also runs it before the first step (the
baseline of a fine-tune: a linear probe of the pretrained features); standalone `mmfm eval` runs
all of them. Unknown types or keys
raise a ValueError naming `evals.evaluators.<name>.<key>` and the valid keys.
"""
from __future__ import annotations

import logging
from typing import Any, Mapping, Optional

import jax
import numpy as np

from mmfm import fileio
from mmfm import sharding as sh
from mmfm.evals import datasets as ds
from mmfm.evals.group_metrics import mean_per_class_recall, topk_correct
from mmfm.evals.linear_probe import DEFAULT_L2_GRID, few_shot_probe, linear_probe
from mmfm.evals.model_io import EvalModel
from mmfm.evals.retrieval import retrieval_metrics
from mmfm.evals.zeroshot import class_embeddings, zeroshot_accuracy

__all__ = ["Evaluator", "EvalModel", "SMALL_SPLIT", "TYPES", "build_evaluators",
           "evaluator_configs", "warn_if_small"]

log = logging.getLogger("mmfm")
SMALL_SPLIT = 100  # fewer eval examples than this: the metrics are mostly noise, say so
_warned: set = set()


def warn_if_small(what: str, n: int) -> None:
    """Logs (once per `what` and size) that an eval split of `n` < SMALL_SPLIT examples is noisy."""
    if n < SMALL_SPLIT and (what, n) not in _warned:
        _warned.add((what, n))
        log.warning("%s: only %d example(s) (under %d): its metrics are noise, not a measurement",
                    what, n, SMALL_SPLIT)

# Keys every evaluator accepts; `dataset` is required.
_COMMON = {"type": None, "name": None, "dataset": None, "split": "test", "every": 0,
           "at_start": False, "data_dir": None, "max_examples": None, "label_key": None,
           "shapes": None}
_PROBE = {"train_split": "train", "max_train_examples": None}
TYPES: dict[str, dict[str, Any]] = {
    "zeroshot": {"topk": (1, 5), "prompts": None},
    "retrieval": {"ks": (1, 5, 10), "block_size": 1024, "pictures": 0, "picture_k": 5},
    "linear_probe": {**_PROBE, "l2_grid": DEFAULT_L2_GRID, "val_fraction": 0.2, "seed": 0},
    "few_shot": {**_PROBE, "shots": (1, 5, 10, 25), "seeds": (0, 1, 2), "l2": 1e-2},
    "mae_pictures": {"num_images": 8, "ratio": None, "seed": 0},
    "classify": {"topk": (1,)},  # the model's own classification head (`model.num_classes`)
}


def _plain(x) -> Any:
    return x.to_dict() if hasattr(x, "to_dict") else x


def evaluator_configs(evals_cfg) -> list[dict]:
    """Normalised evaluator configs (defaults filled) from `config.evals` (or its `evaluators`)."""
    evals = _plain(evals_cfg) or {}
    entries = evals.get("evaluators", ()) if isinstance(evals, Mapping) else evals
    entries = _plain(entries) or ()
    if isinstance(entries, Mapping):
        items = []
        for name, c in entries.items():
            c = dict(_plain(c))
            if c.get("name", name) != name:
                raise ValueError(f"evals.evaluators.{name}: 'name' {c['name']!r} differs from its key")
            items.append({**c, "name": name})
    else:
        items = [dict(_plain(c)) for c in entries]
    out, seen = [], set()
    for i, c in enumerate(items):
        name = c.get("name")
        where = f"evals.evaluators.{name or i}"
        if not name or not isinstance(name, str):
            raise ValueError(f"{where}: every evaluator needs a string 'name'")
        if name in seen:
            raise ValueError(f"{where}: duplicate evaluator name")
        seen.add(name)
        kind = c.get("type")
        if kind not in TYPES:
            raise ValueError(f"{where}.type: {kind!r} is not an evaluator type; valid: {sorted(TYPES)}")
        valid = {**_COMMON, **TYPES[kind]}
        unknown = sorted(set(c) - set(valid))
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {unknown} for type {kind!r}; valid: "
                             f"{sorted(valid)}")
        if not c.get("dataset"):
            raise ValueError(f"{where}.dataset is required")
        table = ds.RETRIEVAL if kind == "retrieval" else ds.CLASSIFICATION
        # Prepared corpora (jsonl/NAME, wds/NAME) have captions, not labels: probes need labels.
        corpus_ok = kind in ("retrieval", "zeroshot", "mae_pictures")
        if kind != "mae_pictures" and not (c["dataset"] in table or (
                corpus_ok and ds.corpus_name(c["dataset"]) is not None)):
            hint = f" {ds.CORPUS_HINT}" if corpus_ok else ""
            raise ValueError(f"{where}.dataset: {c['dataset']!r} is not a {kind} dataset; valid: "
                             f"{sorted(table)}{hint}")
        if int(c.get("every", 0) or 0) < 0:
            raise ValueError(f"{where}.every must be >= 0, got {c['every']}")
        out.append({**valid, **c})
    return out


class Evaluator:
    """One configured evaluation; `run(model) -> {"<name>/<metric>": float}`."""

    def __init__(self, cfg: dict, *, data_dir: Optional[str] = None, shapes: Optional[dict] = None):
        self.cfg, self.name, self.type = cfg, cfg["name"], cfg["type"]
        self.every = int(cfg.get("every") or 0)
        self.at_start = bool(cfg.get("at_start"))
        self.data_dir = cfg.get("data_dir") or data_dir
        self.shapes = dict(_plain(cfg.get("shapes")) or shapes or {})

    def due(self, step: int, total_steps: int) -> bool:
        """Before training (step 0) with `at_start`; at the last step always; every `every` steps."""
        if step == 0:
            return self.at_start
        return step == total_steps or (self.every > 0 and step % self.every == 0)

    # ------------------------------------------------------------------ data + features (cached)
    def _classification(self, m: EvalModel, split: str, max_examples):
        c = self.cfg
        key = ("cls", c["dataset"], split, max_examples, c.get("label_key"), self.data_dir)
        if key not in m.cache:
            data = ds.load_classification(c["dataset"], split, data_dir=self.data_dir,
                                          max_examples=max_examples, label_key=c.get("label_key"),
                                          shapes=self.shapes)
            warn_if_small(f"evals.evaluators.{self.name}: {c['dataset']} split {split!r}",
                          len(data.images))
            m.cache[key] = (data, m.encode_image_source(data.images))
        return m.cache[key]

    def run(self, m: EvalModel, *, workdir: Optional[str] = None, step: int = 0) -> dict:
        results = getattr(self, f"_run_{self.type}")(m, workdir=workdir, step=step)
        return {f"{self.name}/{k}": float(v) for k, v in results.items()}

    def _run_zeroshot(self, m: EvalModel, **_) -> dict:
        c = self.cfg
        data, img = self._classification(m, c["split"], c["max_examples"])
        names, templates = data.classnames, data.templates
        if c.get("prompts"):  # another dataset's shipped names/templates, e.g. cifar100 -> coarse
            names, templates = ds.load_prompts(c["prompts"])
        cls = class_embeddings(m.encode_texts, list(names), list(templates))
        acc = zeroshot_accuracy(img, cls, data.labels, topk=tuple(c["topk"]))
        return {k: v for k, v in acc.items()}

    def _run_retrieval(self, m: EvalModel, *, workdir=None, step=0, **_) -> dict:
        c = self.cfg
        data = ds.load_retrieval(c["dataset"], c["split"], data_dir=self.data_dir,
                                 max_examples=c["max_examples"], shapes=self.shapes)
        warn_if_small(f"evals.evaluators.{self.name}: {c['dataset']} split {c['split']!r}",
                      len(data.images))
        img = m.encode_image_source(data.images)
        txt = m.encode_texts(data.captions)
        # Query blocks over this process's devices (embeddings are host-local); exact ranks.
        mesh = sh.local_mesh() if jax.local_device_count() > 1 else None
        out = retrieval_metrics(img, txt, data.text_to_image, tuple(c["ks"]),
                                block_size=c["block_size"], mesh=mesh)
        if c["pictures"] and workdir:
            from mmfm.evals import pictures
            path = fileio.join(workdir, "pictures", f"{self.name}_step{step}.png")
            pictures.write_retrieval_grid(path, data, img, txt, num_queries=int(c["pictures"]),
                                          k=int(c["picture_k"]))
        return out

    def _run_classify(self, m: EvalModel, **_) -> dict:
        c = self.cfg
        data = ds.load_classification(c["dataset"], c["split"], data_dir=self.data_dir,
                                      max_examples=c["max_examples"], label_key=c.get("label_key"),
                                      shapes=self.shapes)
        logits = m.classify_image_source(data.images)
        if logits.shape[1] != len(data.classnames):
            raise ValueError(f"evals.evaluators.{self.name}: the classifier has {logits.shape[1]} "
                             f"classes, {c['dataset']!r} has {len(data.classnames)}")
        out = {f"top{k}": float(np.mean(topk_correct(logits, data.labels, k))) for k in c["topk"]}
        out["mean_per_class_recall"] = (mean_per_class_recall(np.argmax(logits, 1), data.labels)
                                        if len(data.labels) else 0.0)
        return out

    def _probe_data(self, m: EvalModel):
        c = self.cfg
        train, train_x = self._classification(m, c["train_split"], c["max_train_examples"])
        test, test_x = self._classification(m, c["split"], c["max_examples"])
        return train_x, train.labels, test_x, test.labels, len(test.classnames)

    def _run_linear_probe(self, m: EvalModel, **_) -> dict:
        c = self.cfg
        tr_x, tr_y, te_x, te_y, n_cls = self._probe_data(m)
        res = linear_probe(tr_x, tr_y, te_x, te_y, num_classes=n_cls, val_fraction=c["val_fraction"],
                           l2_grid=tuple(c["l2_grid"]), seed=int(c["seed"]))
        return {"accuracy": res["accuracy"], "best_l2": res["best_l2"],
                "val_accuracy": res["val_accuracy"]}

    def _run_few_shot(self, m: EvalModel, **_) -> dict:
        c = self.cfg
        tr_x, tr_y, te_x, te_y, n_cls = self._probe_data(m)
        res = few_shot_probe(tr_x, tr_y, te_x, te_y, shots=tuple(c["shots"]), seeds=tuple(c["seeds"]),
                             l2=float(c["l2"]), num_classes=n_cls)
        out = {}
        for k, v in res.items():
            out[f"{k}shot/mean"], out[f"{k}shot/std"] = v["mean"], v["std"]
        return out

    def _run_mae_pictures(self, m: EvalModel, *, workdir=None, step=0, **_) -> dict:
        from mmfm.evals import pictures

        c = self.cfg
        if m.model.cfg.mae_decoder is None:
            raise ValueError(f"evals.evaluators.{self.name}: the model has no MAE decoder "
                             "(model.mae_decoder is not configured)")
        data = ds.load_classification(c["dataset"], c["split"], data_dir=self.data_dir,
                                      max_examples=None, label_key=c.get("label_key"),
                                      shapes=self.shapes)
        n = min(int(c["num_images"]), len(data.images))
        images = m.preprocess_images(data.images.images(range(n)))
        ratio = float(c["ratio"] if c["ratio"] is not None else m.mae.get("ratio", 0.75))
        model = m.model
        decode = lambda p, x, k: model.apply({"params": p}, x, k, method=pictures.mae_decode)
        predict = lambda x, k: m.encoder.map_batches("mae", decode, m.params, np.asarray(x),
                                                     np.asarray(k))
        rec = pictures.mae_reconstruct(m.model, m.params, images, ratio=ratio,
                                       norm_pix=m.mae.get("norm_pix", True), seed=int(c["seed"]),
                                       predict=predict)
        if workdir:
            path = fileio.join(workdir, "pictures", f"{self.name}_step{step}.png")
            pictures.write_mae_grid(path, rec, mean=m.preprocess.mean, std=m.preprocess.std)
        return {"masked_mse": rec["masked_mse"]}


def build_evaluators(evals_cfg, *, data_dir: Optional[str] = None,
                     shapes: Optional[dict] = None) -> list[Evaluator]:
    """Evaluators from `config.evals`; `data_dir`/`shapes` are defaults (e.g. from config.data)."""
    return [Evaluator(c, data_dir=data_dir, shapes=shapes) for c in evaluator_configs(evals_cfg)]


def run_evaluators(evaluators, m: EvalModel, *, workdir: Optional[str] = None,
                   step: int = 0) -> dict:
    results: dict[str, float] = {}
    for e in evaluators:
        results.update(e.run(m, workdir=workdir, step=step))
    return results
