"""Evaluations run during training and at its end: retrieval, zero-shot and linear probes.

Glue between a model + params and the pure metric functions (retrieval, zeroshot, linear_probe).
Results are printed as a table, logged to metrics.jsonl/TensorBoard and written to
`<workdir>/eval_results.json` (`RESULTS_FILE`, the same name and layout `mmfm eval` writes).
`train_and_evaluate` is the training loop (`mmfm.train.loop.train`) with these evaluations.
"""
from __future__ import annotations

import json
import logging
import time
from typing import Optional, Sequence

import numpy as np

from mmfm import fileio
from mmfm.evals.encoders import MeshEncoder
from mmfm.evals.evaluators import warn_if_small
from mmfm.evals.linear_probe import few_shot_probe, linear_probe
from mmfm.evals.model_io import EvalModel
from mmfm.evals.retrieval import retrieval_metrics
from mmfm.evals.zeroshot import class_embeddings, zeroshot_accuracy
from mmfm.train.loop import train

log = logging.getLogger("mmfm")

# {"step", "source", "metrics", "timings_s", "sizes"}, written by training and by `mmfm eval`
RESULTS_FILE = "eval_results.json"


def evaluate_arrays(m: EvalModel, test: dict, probe_train: dict | None, zeroshot: dict, *,
                    few_shot: Sequence[int] = (1, 5, 10), few_shot_seeds: Sequence[int] = (0, 1, 2),
                    timings: dict | None = None, sizes: dict | None = None) -> dict:
    """All metrics for one eval split (`test`) and optional probe-training arrays.

    Retrieval uses every test pair; zero-shot and probes use single-object images (their labels
    describe the only object) when `num_objects` is present. Few-shot probes (`few_shot` shots
    per class, one fit per seed) draw from the probe-training arrays and report mean and std over
    seeds. Wall seconds of each part go into `timings`, and the number of examples each metric
    saw into `sizes` (`retrieval_pairs`, `zeroshot_test`, `probe_train`), when dicts are given.
    """
    timings = {} if timings is None else timings
    sizes = {} if sizes is None else sizes
    results: dict[str, float] = {}
    warn_if_small("eval split of the training data", len(test["image"]))
    t0 = time.perf_counter()
    img = m.encode_pixels(test["image"])
    txt = m.encode_tokens(test["tokens"])
    timings["encode_test"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    r = retrieval_metrics(img, txt, np.arange(len(img)), ks=(1, 5, 10))
    results.update({f"retrieval/{k}": float(v) for k, v in r.items()})
    timings["retrieval"] = time.perf_counter() - t0
    sizes["retrieval_pairs"] = len(img)

    single = np.ones(len(img), bool)
    if "num_objects" in test:
        single = np.asarray(test["num_objects"]) == 1
    sizes["zeroshot_test"] = int(single.sum())
    t0 = time.perf_counter()
    for key, (names, templates) in zeroshot.items():
        if key not in test:
            continue
        labels = np.asarray(test[key])[single]
        cls = class_embeddings(m.encode_texts, list(names), list(templates))
        acc = zeroshot_accuracy(img[single], cls, labels, topk=(1,))
        results[f"zeroshot/{key}/top1"] = float(acc["top1"])
    timings["zeroshot"] = time.perf_counter() - t0
    if probe_train is not None:
        t0 = time.perf_counter()
        tr_single = np.ones(len(probe_train["image"]), bool)
        if "num_objects" in probe_train:
            tr_single = np.asarray(probe_train["num_objects"]) == 1
        tr_img = m.encode_pixels(probe_train["image"][tr_single])
        sizes["probe_train"] = int(tr_single.sum())
        timings["encode_probe_train"] = time.perf_counter() - t0
        timings["linear_probe"] = timings["few_shot"] = 0.0
        for key in zeroshot:
            if key not in test or key not in probe_train:
                continue
            tr_y, te_y = np.asarray(probe_train[key])[tr_single], np.asarray(test[key])[single]
            t0 = time.perf_counter()
            res = linear_probe(tr_img, tr_y, img[single], te_y, num_classes=len(zeroshot[key][0]))
            results[f"probe/{key}/accuracy"] = float(res["accuracy"])
            timings["linear_probe"] += time.perf_counter() - t0
            if few_shot:
                t0 = time.perf_counter()
                fs = few_shot_probe(tr_img, tr_y, img[single], te_y, shots=tuple(few_shot),
                                    seeds=tuple(few_shot_seeds), num_classes=len(zeroshot[key][0]))
                for k, v in fs.items():
                    results[f"fewshot/{key}/{k}shot/mean"] = v["mean"]
                    results[f"fewshot/{key}/{k}shot/std"] = v["std"]
                timings["few_shot"] += time.perf_counter() - t0
    return results


def format_table(results: dict) -> str:
    width = max(len(k) for k in results) if results else 10
    lines = [f"{'metric':<{width}}  value", "-" * (width + 9)]
    lines += [f"{k:<{width}}  {v:7.4f}" for k, v in sorted(results.items())]
    return "\n".join(lines)


class TrainingEvaluator:
    """The evaluations of one training run, built once and run on the sharded train state.

    The encoders are jitted once for the run on the training mesh and take the state's params as
    they are sharded (FSDP included); the eval arrays are loaded once. `due(step)`: at the end,
    every `evals.eval_every` steps, or when a named evaluator's `every` is due.
    """

    def __init__(self, trainer):
        from mmfm.evals import evaluators as evaluators_lib

        self.trainer, cfg = trainer, trainer.config
        self.encoder = MeshEncoder(trainer.model, mesh=trainer.mesh, rules=trainer.rules,
                                   param_sharding=trainer.state_sharding.params,
                                   batch_size=int(cfg.evals.batch_size))
        shapes = {k: cfg.data[k] for k in ("image_size", "num_train", "num_test", "seed")
                  if k in cfg.data}
        self.named = evaluators_lib.build_evaluators(cfg.evals, data_dir=cfg.data.get("dir"),
                                                     shapes=shapes)
        self.total_steps, self.every = int(cfg.total_steps), int(cfg.get("eval_every", 0) or 0)
        self._arrays: Optional[tuple] = None

    def due(self, step: int) -> bool:
        """Step 0 (before training): only evaluators with `at_start` (fine-tuning baselines)."""
        if step and (step == self.total_steps or (self.every and step % self.every == 0)):
            return True
        return any(e.due(step, self.total_steps) for e in self.named)

    def __call__(self, state, writer, step: int) -> dict:
        """Evaluates `state.params`; logs, prints and writes `RESULTS_FILE` (main process).

        Runs the built-in eval of the training data (retrieval, zero-shot, linear and few-shot
        probes), then every named evaluator of `config.evals` due at `step` (metrics prefixed with
        the evaluator's name).
        """
        tr, ev = self.trainer, self.trainer.config.evals
        m = EvalModel.from_trainer(tr, state.params, self.encoder)
        timings: dict[str, float] = {}
        sizes: dict[str, int] = {}
        results: dict[str, float] = {}
        if step:  # before training only the `at_start` evaluators run
            if self._arrays is None:
                self._arrays = (tr.eval_arrays(),
                                tr.eval_arrays(split="train", max_examples=ev.probe_train_examples))
            t0 = time.perf_counter()
            results = evaluate_arrays(m, *self._arrays, dict(tr.data_info.zeroshot),
                                      few_shot=tuple(ev.get("few_shot", (1, 5, 10))),
                                      few_shot_seeds=tuple(ev.get("few_shot_seeds", (0, 1, 2))),
                                      timings=timings, sizes=sizes)
            timings["total"] = time.perf_counter() - t0
        for e in self.named:
            if e.due(step, self.total_steps):
                t0 = time.perf_counter()
                results.update(e.run(m, workdir=tr.workdir, step=step))
                timings[f"evaluator/{e.name}"] = time.perf_counter() - t0
        log.info("eval at step %d took %s", step, {k: round(v, 2) for k, v in timings.items()})
        writer.write(step, results, kind="eval")
        if writer.enabled:
            print(f"eval at step {step}:\n{format_table(results)}", flush=True)
            fileio.write_atomic(fileio.join(tr.workdir, RESULTS_FILE), json.dumps(
                {"step": step, "source": {"workdir": tr.workdir, "kind": "training"},
                 "metrics": results, "timings_s": timings, "sizes": sizes}, indent=1))
        return results


def train_and_evaluate(config, workdir: str, *, max_steps: Optional[int] = None,
                       resolve_teacher=None) -> dict:
    """Trains (or resumes) in `workdir` with this run's evaluations; returns the last eval's metrics.
    `resolve_teacher`: loads an export / zoo distillation teacher (`mmfm.train.loop.Trainer`)."""
    return train(config, workdir, max_steps=max_steps, make_evaluator=TrainingEvaluator,
                 resolve_teacher=resolve_teacher)
