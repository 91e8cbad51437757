"""Evaluation suites: `shapes` (the built-in data), `clip_benchmark` and `datacomp`.

    result = run_suite("datacomp", model, data_dir="/data/tfds")
    write_suite(result, out_dir="runs/demo/suite", csv_path="results.csv")

A benchmark suite runs every task of the registry (`mmfm.evals.tasks`) whose dataset is prepared
under `data_dir` and reports the rest as missing: the average is only given when no task is
missing, so a partial run never looks like a full one. Each task yields the number its benchmark
reports (top-1, mean per-class recall, retrieval R@1, worst-group accuracy). The results are a
markdown table, a JSON file and a row of a CSV laid out like open_clip's `openclip_results.csv`
(name, pretrained, params (M), FLOPs (B), "Average perf. on N datasets", one column per task).
"""
from __future__ import annotations

import logging
import time
from typing import Optional

import numpy as np

from mmfm.evals import task_data
from mmfm.evals import tasks as task_registry
from mmfm.evals.group_metrics import group_accuracy, mean_per_class_recall, topk_correct
from mmfm.evals.retrieval import retrieval_metrics
from mmfm.evals.zeroshot import class_embeddings, zeroshot_logits

__all__ = ["SHAPES_COLUMNS", "SUITES", "run_suite"]

log = logging.getLogger("mmfm")

# The shapes suite's CSV columns: (column, metric of `run_shapes_suite`).
SHAPES_COLUMNS = (
    ("Shape zero-shot", "zeroshot_shape/top1"),
    ("Colour zero-shot", "zeroshot_color/top1"),
    ("Shape zero-shot worst group", "zeroshot_shape/worst_group"),
    ("Shape probe", "probe_shape/top1"),
    ("Colour probe", "probe_color/top1"),
    ("Retrieval R@1", "retrieval/mean_R@1"),
    ("Compositional", "compositional/mean"),
    ("Dense colour probe", "dense_color/mean_per_class_recall"),
    ("Dense shape probe", "dense_shape/mean_per_class_recall"),
)
SUITES = ("shapes",) + tuple(task_registry.SUITES)


def _zeroshot_task(task, m, data_dir, max_examples) -> dict:
    data = task_data.load_task_classification(task, data_dir, max_examples)
    img = m.encode_image_source(data.images)
    # ImageNet and its variants share 1000 x 20 prompts: encoded once per model. Keyed by the
    # prompts themselves: user-prepared tasks have no prompts file to name them by.
    key = ("class_embeddings", data.classnames, data.templates)
    if key not in m.cache:
        m.cache[key] = class_embeddings(m.encode_texts, list(data.classnames), list(data.templates))
    cls = m.cache[key]
    logits = np.asarray(zeroshot_logits(img, cls))
    labels = data.labels
    if task.classes_present:  # e.g. ImageNet-R: its 200 classes of ImageNet's 1000 ids
        present = np.unique(labels)
        logits, labels = logits[:, present], np.searchsorted(present, labels).astype(np.int32)
    out = {"top1": float(np.mean(topk_correct(logits, labels, 1))),
           "top5": float(np.mean(topk_correct(logits, labels, min(5, logits.shape[1])))),
           "mean_per_class_recall": mean_per_class_recall(np.argmax(logits, 1), labels),
           "examples": len(labels)}
    if task.group_key:
        groups = [data.images.source[int(i)][task.group_key] for i in data.images.indices]
        groups = [g.decode() if isinstance(g, bytes) else g for g in groups]  # Text features
        for k in (1, 5):
            g = group_accuracy(topk_correct(logits, labels, min(k, logits.shape[1])), groups)
            out[f"worst_group_top{k}"] = g["worst"]
    return out


def _retrieval_task(task, m, data_dir, max_examples) -> dict:
    data = task_data.load_task_retrieval(task, data_dir, max_examples)
    r = retrieval_metrics(m.encode_image_source(data.images), m.encode_texts(data.captions),
                          data.text_to_image, (1, 5, 10))
    means = {f"retrieval_recall@{k}": (r[f"i2t/R@{k}"] + r[f"t2i/R@{k}"]) / 2 for k in (1, 5)}
    return {**r, **means, "examples": len(data.images)}


def _benchmark_suite(suite: str, m, data_dir, max_examples) -> dict:
    rows, metrics = [], {}
    todo = task_registry.suite_tasks(suite)
    t_start = time.perf_counter()
    for k, task in enumerate(todo, 1):
        # CLIP_benchmark-only tasks have no open_clip column: they are named by the task.
        row = {"task": task.name, "column": task.column or task.name, "metric": task.metric,
               "value": None}
        rows.append(row)
        t0 = time.perf_counter()
        try:
            run = _zeroshot_task if task.kind == "zeroshot" else _retrieval_task
            res = run(task, m, data_dir, max_examples)
            if task.metric not in res:
                raise ValueError(f"its metric {task.metric!r} is not computed by this suite "
                                 f"runner (computed: {sorted(res)})")
        except task_data.DatasetMissing as e:
            row.update(status="missing", detail=str(e))
            continue
        except ValueError as e:  # bad data of one task: the others still run, the row says why
            log.error("%s: %s", task.name, e)
            row.update(status="error", detail=str(e))
            continue
        row.update(status="ok", value=float(res[task.metric]), examples=res["examples"],
                   seconds=round(time.perf_counter() - t0, 2), note=task.note)
        metrics.update({f"{task.name}/{key}": v for key, v in res.items()
                        if isinstance(v, (float, int)) and not isinstance(v, bool)})
        elapsed = time.perf_counter() - t_start
        log.info("[%d/%d] %s: %s %.4f (%d examples, %.1f s; %.0f s elapsed)", k, len(todo),
                 task.name, task.metric, row["value"], res["examples"], row["seconds"], elapsed)
    return {"rows": rows, "metrics": metrics}


def _shapes(m, data_dir, shapes) -> dict:
    from mmfm.evals.shapes_suite import run_shapes_suite

    res = run_shapes_suite(m, data_dir=data_dir, shapes=shapes)
    rows = [{"task": metric, "column": column, "metric": metric, "status": "ok",
             "value": float(res["metrics"][metric])} for column, metric in SHAPES_COLUMNS]
    return {"rows": rows, "metrics": res["metrics"], "groups": res["groups"],
            "counts": res["counts"]}


def run_suite(suite: str, m, *, data_dir: Optional[str], shapes: Optional[dict] = None,
              max_examples: Optional[int] = None) -> dict:
    """Runs suite `suite` on an `EvalModel`. Returns {"suite", "rows", "metrics", "average",
    "missing", "seconds", ...}; each row is {"task", "column", "metric", "status", "value"}."""
    if suite not in SUITES:
        raise ValueError(f"unknown suite {suite!r}; valid: {list(SUITES)}")
    t0 = time.perf_counter()
    if suite == "shapes":
        if not data_dir:
            raise ValueError("the shapes suite needs a data directory (--data-dir or data.dir)")
        out = _shapes(m, data_dir, shapes)
    else:
        out = _benchmark_suite(suite, m, data_dir, max_examples)
    missing = [r["task"] for r in out["rows"] if r["status"] != "ok"]
    values = [r["value"] for r in out["rows"] if r["status"] == "ok"]
    out.update(suite=suite, missing=missing, num_tasks=len(out["rows"]),
               average=None if missing or not values else float(np.mean(values)),
               average_of_present=float(np.mean(values)) if values else None,
               seconds=round(time.perf_counter() - t0, 1))
    return out


def model_size(m) -> tuple[float, Optional[float]]:
    """(parameters in millions, GFLOPs of one image + one text forward) as open_clip's CSV has.

    FLOPs are XLA's count for the compiled encoders (two per multiply-add), None when the backend
    gives no cost analysis.
    """
    import jax

    params_m = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(m.params)) / 1e6
    size = int(m.preprocess.image_size)
    image = np.zeros((1, size, size, 3), np.float32)
    tokens = np.zeros((1, int(m.context_length)), np.int32)
    model = m.model
    try:
        flops = 0.0
        for method, x in ((model.encode_image, image), (model.encode_text, tokens)):
            fn = jax.jit(lambda p, x, method=method: model.apply({"params": p}, x, method=method)[0])
            cost = fn.lower(m.params, x).compile().cost_analysis()
            cost = cost[0] if isinstance(cost, (list, tuple)) else cost
            flops += float(cost["flops"])
        return params_m, flops / 1e9
    except (KeyError, TypeError, IndexError):
        return params_m, None
