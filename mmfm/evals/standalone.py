"""`mmfm eval`: run the evaluators of a config on a training checkpoint or a zoo model.

    mmfm eval --config CFG.py --checkpoint runs/demo [--out DIR]     (evaluate_checkpoint)
    mmfm eval --config CFG.py --model ViT-B-32 --pretrained openai --out DIR
    mmfm eval --config CFG.py --model path/to/export --out DIR --config.evals.evaluators.c10.split=test

CFG is an ml_collections config file whose `evals.evaluators` lists the evaluators (see
`mmfm.evals.evaluators`); `data.dir` (if present) is the default dataset directory. With
`--checkpoint` and no `--config`, the run's own config is used; when it names no evaluators, the
run's own end-of-training eval runs (retrieval, zero-shot and probes on its data's test split). Results: OUT/eval_results.json
(metrics, step, source), OUT/metrics.jsonl and TensorBoard events (kind "eval"), OUT/pictures/.
"""
from __future__ import annotations

import json
import logging
import time
from typing import Optional

from mmfm import fileio

log = logging.getLogger("mmfm")


def evaluate(evals_cfg, model, *, out_dir: str, step: int = 0, data_dir: Optional[str] = None,
             shapes: Optional[dict] = None, source: Optional[dict] = None) -> dict:
    """Runs every evaluator of `evals_cfg` on an `EvalModel`; writes results; returns the metrics."""
    from mmfm.evals.evaluators import build_evaluators

    evaluators = build_evaluators(evals_cfg, data_dir=data_dir, shapes=shapes)
    if not evaluators:
        raise ValueError("config.evals.evaluators is empty: nothing to evaluate")
    fileio.makedirs(out_dir)
    results, timings = {}, {}
    for e in evaluators:
        t0 = time.perf_counter()
        results.update(e.run(model, workdir=out_dir, step=step))
        timings[e.name] = round(time.perf_counter() - t0, 3)
    return write_results(out_dir, step, results, timings, source)


def evaluate_training_data(run_config, model, *, out_dir: str, step: int,
                           source: Optional[dict] = None) -> dict:
    """The run's own end-of-training eval (retrieval, zero-shot, probes on its data's test split)."""
    from mmfm.data.build import build_data
    from mmfm.evals.runner import evaluate_arrays

    ev = run_config.evals
    _, eval_arrays, _, info = build_data(run_config.data, batch_size=int(run_config.batch_size),
                                         seed=int(run_config.seed))
    timings: dict = {}
    sizes: dict = {}
    results = evaluate_arrays(
        model, eval_arrays(), eval_arrays(split="train", max_examples=ev.probe_train_examples),
        dict(info.zeroshot), few_shot=tuple(ev.get("few_shot", (1, 5, 10))),
        few_shot_seeds=tuple(ev.get("few_shot_seeds", (0, 1, 2))), timings=timings, sizes=sizes)
    return write_results(out_dir, step, results, {k: round(v, 3) for k, v in timings.items()},
                         source, sizes=sizes)


def write_results(out_dir: str, step: int, results: dict, timings: dict,
                  source: Optional[dict], sizes: Optional[dict] = None) -> dict:
    """OUT/eval_results.json, OUT/metrics.jsonl + TensorBoard (kind "eval") and a printed table."""
    from mmfm.evals.runner import RESULTS_FILE, format_table
    from mmfm.train.metrics import MetricsWriter

    fileio.makedirs(out_dir)
    writer = MetricsWriter(out_dir, enabled=True, resume_step=step)
    try:
        writer.write(step, results, kind="eval")
    finally:
        writer.close()
    fileio.write_atomic(fileio.join(out_dir, RESULTS_FILE), json.dumps(
        {"step": step, "source": source or {}, "metrics": results, "timings_s": timings,
         "sizes": sizes or {}}, indent=1))
    print(format_table(results), flush=True)
    return results


def config_get(cfg, dotted: str, default=None):
    """`cfg.a.b` for a dotted key, or `default` when any part is missing (cfg may be None)."""
    for part in dotted.split("."):
        if cfg is None or not hasattr(cfg, "get"):
            return default
        cfg = cfg.get(part)
    return default if cfg is None else cfg


def evaluate_checkpoint(config, checkpoint: str, *, out: Optional[str] = None,
                        data_dir: Optional[str] = None) -> dict:
    """Evaluates a training run (read-only) with `config.evals`, else the run's own config."""
    import ml_collections

    from mmfm.evals.model_io import EvalModel

    m = EvalModel.from_checkpoint(checkpoint,
                                  batch_size=int(config_get(config, "evals.batch_size", 256)))
    run = m.run
    run_cfg = ml_collections.ConfigDict(run.config)
    config = config if config is not None else run_cfg
    out = out or fileio.join(run.workdir, "eval")
    shapes = {k: run_cfg.data[k] for k in ("image_size", "num_train", "num_test", "seed")
              if k in run_cfg.data}
    data_dir = data_dir or config_get(config, "data.dir") or run_cfg.data.get("dir")
    source = {"checkpoint": fileio.absolute(checkpoint), "step": run.step}
    from mmfm.evals.evaluators import evaluator_configs
    if not evaluator_configs(config.evals):  # none configured: the run's own training-time eval
        return evaluate_training_data(run_cfg, m, out_dir=out, step=run.step, source=source)
    return evaluate(config.evals, m, out_dir=out, step=run.step, data_dir=data_dir, shapes=shapes,
                    source=source)


def evaluate_suite(suite: str, model, *, out_dir: str, name: str, pretrained: str = "",
                   data_dir: Optional[str] = None, shapes: Optional[dict] = None,
                   csv_path: Optional[str] = None, max_examples: Optional[int] = None,
                   source: Optional[dict] = None) -> dict:
    """Runs suite `suite` (`mmfm.evals.suites`) on an `EvalModel`; writes and prints the results."""
    from mmfm.evals import suite_report, suites

    result = suites.run_suite(suite, model, data_dir=data_dir, shapes=shapes,
                              max_examples=max_examples)
    params_m, flops_b = suites.model_size(model)
    table = suite_report.write_suite_results(result, out_dir, name=name, pretrained=pretrained,
                                             csv_path=csv_path, params_m=params_m,
                                             flops_b=flops_b, source=source)
    print(table, flush=True)
    return result


def suite_on_checkpoint(suite: str, checkpoint: str, *, out: Optional[str] = None,
                        data_dir: Optional[str] = None, csv_path: Optional[str] = None,
                        max_examples: Optional[int] = None, batch_size: int = 256,
                        name: Optional[str] = None) -> dict:
    """A suite on a training run, with its data settings. The run is only read; results go to
    `out` (default <workdir>/suite_NAME, as `mmfm eval` writes <workdir>/eval)."""
    import ml_collections

    from mmfm.evals.model_io import EvalModel

    m = EvalModel.from_checkpoint(checkpoint, batch_size=batch_size)
    run = m.run
    data = ml_collections.ConfigDict(run.config).data
    shapes = {k: data[k] for k in ("image_size", "num_train", "num_test", "seed") if k in data}
    return evaluate_suite(
        suite, m, out_dir=out or fileio.join(run.workdir, f"suite_{suite}"),
        name=name or fileio.basename(fileio.absolute(run.workdir).rstrip("/")),
        pretrained=f"step{run.step}", data_dir=data_dir or data.get("dir"), shapes=shapes,
        csv_path=csv_path, max_examples=max_examples,
        source={"checkpoint": fileio.absolute(checkpoint), "step": run.step})
