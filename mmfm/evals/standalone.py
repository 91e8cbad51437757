"""`mmfm eval`: run the evaluators of a config on a training checkpoint or a zoo model.

    mmfm eval --config CFG.py --checkpoint runs/demo [--out DIR]
    mmfm eval --config CFG.py --model ViT-B-32 --pretrained openai --out DIR
    mmfm eval --config CFG.py --model path/to/export --out DIR --config.evals.evaluators.c10.split=test

CFG is an ml_collections config file whose `evals.evaluators` lists the evaluators (see
`mmfm.evals.evaluators`); `data.dir` (if present) is the default dataset directory. With
`--checkpoint` and no `--config`, the run's own config is used. Results: OUT/eval_results.json
(metrics, step, source), OUT/metrics.jsonl and TensorBoard events (kind "eval"), OUT/pictures/.
"""
from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Optional

log = logging.getLogger("mmfm")


def evaluate(evals_cfg, model, *, out_dir: str, step: int = 0, data_dir: Optional[str] = None,
             shapes: Optional[dict] = None, source: Optional[dict] = None) -> dict:
    """Runs every evaluator of `evals_cfg` on an `EvalModel`; writes results; returns the metrics."""
    from mmfm.evals.evaluators import build_evaluators
    from mmfm.evals.runner import format_table
    from mmfm.train.metrics import MetricsWriter

    evaluators = build_evaluators(evals_cfg, data_dir=data_dir, shapes=shapes)
    if not evaluators:
        raise ValueError("config.evals.evaluators is empty: nothing to evaluate")
    os.makedirs(out_dir, exist_ok=True)
    results, timings = {}, {}
    for e in evaluators:
        t0 = time.perf_counter()
        results.update(e.run(model, workdir=out_dir, step=step))
        timings[e.name] = round(time.perf_counter() - t0, 3)
    writer = MetricsWriter(out_dir, enabled=True, resume_step=step)
    try:
        writer.write(step, results, kind="eval")
    finally:
        writer.close()
    with open(os.path.join(out_dir, "eval_results.json"), "w") as f:
        json.dump({"step": step, "source": source or {}, "metrics": results, "timings_s": timings},
                  f, indent=1)
    print(format_table(results), flush=True)
    return results


def _cfg_get(cfg, dotted: str, default=None):
    for part in dotted.split("."):
        if cfg is None or not hasattr(cfg, "get"):
            return default
        cfg = cfg.get(part)
    return default if cfg is None else cfg


def run(config, *, checkpoint: Optional[str] = None, model: Optional[str] = None,
        pretrained: Optional[str] = None, out: Optional[str] = None,
        data_dir: Optional[str] = None) -> dict:
    """Loads the model (exactly one of checkpoint / model) and evaluates it with `config.evals`."""
    from mmfm.evals.model_io import EvalModel

    if (checkpoint is None) == (model is None):
        raise ValueError("give exactly one of --checkpoint PATH or --model NAME_OR_EXPORT_PATH")
    if checkpoint is not None:
        from mmfm import checkpoint as ckpt_lib
        m = EvalModel.from_checkpoint(checkpoint, batch_size=int(_cfg_get(config, "evals.batch_size", 256)))
        run_cfg = m.run_config
        config = config if config is not None else run_cfg
        root, step = ckpt_lib.resolve(checkpoint)
        step = step if step is not None else _latest_step(root)
        out = out or os.path.join(os.path.dirname(os.path.normpath(root)), "eval")
        source = {"checkpoint": os.path.abspath(checkpoint), "step": step}
        shapes = {k: run_cfg.data[k] for k in ("image_size", "num_train", "num_test", "seed")
                  if k in run_cfg.data}
        data_dir = data_dir or _cfg_get(config, "data.dir") or run_cfg.data.get("dir")
    else:
        if config is None:
            raise ValueError("--model needs --config (which evaluators to run)")
        if not out:
            raise ValueError("--model needs --out DIR (where results are written)")
        m = EvalModel.from_zoo(model, pretrained, batch_size=int(_cfg_get(config, "evals.batch_size", 256)))
        step, source, shapes = 0, {"model": model, "pretrained": pretrained}, None
        data_dir = data_dir or _cfg_get(config, "data.dir")
    return evaluate(config.evals, m, out_dir=out, step=int(step), data_dir=data_dir, shapes=shapes,
                    source=source)


def _latest_step(root: str) -> int:
    steps = [int(d) for d in os.listdir(root) if d.isdigit()]
    return max(steps) if steps else 0


def eval_main(argv=None) -> None:
    """absl entry point of `mmfm eval` (flags in the module docstring)."""
    from absl import app, flags
    from ml_collections import config_flags

    f = flags.FLAGS
    if "checkpoint" not in f:
        if "config" not in f:
            config_flags.DEFINE_config_file("config", None, "config file with evals.evaluators",
                                            lock_config=True)
        flags.DEFINE_string("checkpoint", None, "training workdir, checkpoints/ dir or step dir")
        flags.DEFINE_string("model", None, "zoo architecture name or export/weights path")
        flags.DEFINE_string("pretrained", None, "pretrained tag for --model")
        flags.DEFINE_string("out", None, "results directory (default: <workdir>/eval)")
        flags.DEFINE_string("data_dir", None, "dataset directory (default: config.data.dir)")

    def main(_argv):
        from mmfm.cli import _setup_logging
        _setup_logging()
        try:
            run(f.config, checkpoint=f.checkpoint, model=f.model, pretrained=f.pretrained,
                out=f.out, data_dir=f.data_dir)
        except (ValueError, FileNotFoundError) as e:
            raise app.UsageError(str(e)) from None

    app.run(main, argv=argv or sys.argv)
