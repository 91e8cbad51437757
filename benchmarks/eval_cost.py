"""Cost of the demo's in-training eval, part by part (1000 test + 4000 probe-train examples).

    python benchmarks/eval_cost.py --checkpoint runs/demo [--repeats 3]

Loads a demo checkpoint, builds the same arrays `mmfm.evals.runner.TrainingEvaluator` uses, and times
`evaluate_arrays` (encode, retrieval, zero-shot, linear probe, few-shot 1/5/10 x 3 seeds).
The first call includes compilation (what every eval in a fresh training process pays for
its first eval); later calls are warm. Prints one table of medians plus the metrics.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import jax
import ml_collections


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--checkpoint", required=True, help="demo workdir / checkpoints dir / step dir")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--few_shot", default="1,5,10")
    a = p.parse_args()

    from mmfm.data.build import build_data
    from mmfm.evals.model_io import EvalModel
    from mmfm.evals.runner import evaluate_arrays, format_table

    from mmfm import checkpoint

    cfg = ml_collections.ConfigDict(checkpoint.load_run(a.checkpoint, params=False).config)
    m = EvalModel.from_checkpoint(a.checkpoint, batch_size=int(cfg.evals.batch_size))
    _, eval_arrays, _, info = build_data(cfg.data, batch_size=int(cfg.batch_size), seed=0)
    t0 = time.perf_counter()
    test = eval_arrays()
    probe = eval_arrays(split="train", max_examples=cfg.evals.probe_train_examples)
    load_s = time.perf_counter() - t0
    shots = tuple(int(s) for s in a.few_shot.split(",") if s)
    runs, results = [], None
    for _ in range(a.repeats):
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        results = evaluate_arrays(m, test, probe, dict(info.zeroshot), few_shot=shots,
                                  timings=timings)
        timings["total"] = time.perf_counter() - t0
        runs.append(timings)
    print(f"# {a.checkpoint}: {len(test['image'])} test / {len(probe['image'])} probe-train "
          f"examples, {jax.device_count()} devices, loading arrays {load_s:.1f} s")
    print(f"{'part':<20} {'first (s)':>10} {'warm median (s)':>16}")
    for k in runs[0]:
        warm = statistics.median(r[k] for r in runs[1:]) if len(runs) > 1 else float("nan")
        print(f"{k:<20} {runs[0][k]:>10.2f} {warm:>16.2f}")
    print(format_table(results))
    out = os.environ.get("EVAL_COST_JSON")
    if out:
        with open(out, "w") as f:
            json.dump({"timings": runs, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
