"""Evaluations run during training and at its end: retrieval, zero-shot and linear probes.

Glue between a model + params and the pure metric functions (retrieval, zeroshot, linear_probe).
Results are printed as a table, logged to metrics.jsonl/TensorBoard and written to eval.json.
"""
from __future__ import annotations

import json
import logging
import os
import time
from typing import Sequence

import jax
import numpy as np

from mmfm.evals.linear_probe import few_shot_probe, linear_probe
from mmfm.evals.retrieval import retrieval_metrics
from mmfm.evals.zeroshot import class_embeddings, zeroshot_accuracy
from mmfm.train.step import normalize_images

log = logging.getLogger("mmfm")


class Encoders:
    """Batched, jitted image/text encoding for one set of params. Outputs numpy [n, embed_dim]."""

    def __init__(self, model, params, *, mean, std, tokenizer, context_length: int, batch_size: int = 256):
        self.params, self.tokenizer, self.context_length = params, tokenizer, context_length
        self.batch_size = batch_size

        @jax.jit
        def enc_img(params, images_u8):
            x = normalize_images(images_u8, mean, std)
            return model.apply({"params": params}, x, method=model.encode_image)[0]

        @jax.jit
        def enc_txt(params, tokens):
            return model.apply({"params": params}, tokens, method=model.encode_text)[0]

        self._img, self._txt = enc_img, enc_txt

    def _batched(self, fn, x: np.ndarray) -> np.ndarray:
        out, n, bs = [], len(x), self.batch_size
        for i in range(0, n, bs):
            chunk = x[i:i + bs]
            pad = bs - len(chunk)  # pad the last chunk so every call has one shape (one compile)
            if pad:
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, axis=0)])
            out.append(np.asarray(fn(self.params, chunk))[:bs - pad])
        return np.concatenate(out) if out else np.zeros((0, 0), np.float32)

    def images(self, images_u8: np.ndarray) -> np.ndarray:
        return self._batched(self._img, images_u8)

    def tokens(self, tokens: np.ndarray) -> np.ndarray:
        return self._batched(self._txt, tokens)

    def texts(self, texts: Sequence[str]) -> np.ndarray:
        return self.tokens(self.tokenizer(list(texts), self.context_length))


def evaluate_arrays(enc: Encoders, test: dict, probe_train: dict | None, zeroshot: dict, *,
                    few_shot: Sequence[int] = (1, 5, 10), few_shot_seeds: Sequence[int] = (0, 1, 2),
                    timings: dict | None = None) -> dict:
    """All metrics for one eval split (`test`) and optional probe-training arrays.

    Retrieval uses every test pair; zero-shot and probes use single-object images (their labels
    describe the only object) when `num_objects` is present. Few-shot probes (`few_shot` shots
    per class, one fit per seed) draw from the probe-training arrays and report mean and std over
    seeds. Wall seconds of each part go into `timings` when a dict is given.
    """
    timings = {} if timings is None else timings
    results: dict[str, float] = {}
    t0 = time.perf_counter()
    img = enc.images(test["image"])
    txt = enc.tokens(test["tokens"])
    timings["encode_test"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    r = retrieval_metrics(img, txt, np.arange(len(img)), ks=(1, 5, 10))
    results.update({f"retrieval/{k}": float(v) for k, v in r.items()})
    timings["retrieval"] = time.perf_counter() - t0

    single = np.ones(len(img), bool)
    if "num_objects" in test:
        single = np.asarray(test["num_objects"]) == 1
    t0 = time.perf_counter()
    for key, (names, templates) in zeroshot.items():
        if key not in test:
            continue
        labels = np.asarray(test[key])[single]
        cls = class_embeddings(enc.texts, list(names), list(templates))
        acc = zeroshot_accuracy(img[single], cls, labels, topk=(1,))
        results[f"zeroshot/{key}/top1"] = float(acc["top1"])
    timings["zeroshot"] = time.perf_counter() - t0
    if probe_train is not None:
        t0 = time.perf_counter()
        tr_single = np.ones(len(probe_train["image"]), bool)
        if "num_objects" in probe_train:
            tr_single = np.asarray(probe_train["num_objects"]) == 1
        tr_img = enc.images(probe_train["image"][tr_single])
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


def eval_schedule(config):
    """step -> whether the loop evaluates: the end, `eval_every`, or a named evaluator's `every`."""
    from mmfm.evals import evaluators as evaluators_lib
    named = evaluators_lib.build_evaluators(config.evals)  # parsed once, not per step

    def due(step: int) -> bool:
        if step == config.total_steps or (config.eval_every and step % config.eval_every == 0):
            return True
        return any(e.due(step, config.total_steps) for e in named)
    return due


def run_evals(trainer, state, writer, step: int) -> dict:
    """Evaluate the trainer's current params; log, print and write `eval.json` (main process).

    Runs the built-in eval of the training data (retrieval, zero-shot, linear and few-shot probes)
    and then every named evaluator of `config.evals` that is due at `step` (see
    `mmfm.evals.evaluators`); their metrics are prefixed with the evaluator's name.
    """
    cfg = trainer.config
    ev = cfg.evals
    cache = trainer.__dict__.setdefault("_eval_cache", {})
    if "test" not in cache:
        cache["test"] = trainer.eval_arrays()
        cache["probe"] = trainer.eval_arrays(split="train", max_examples=ev.probe_train_examples)
    params = jax.device_get(state.params)
    enc = Encoders(trainer.model, params, mean=tuple(cfg.preprocess.mean), std=tuple(cfg.preprocess.std),
                   tokenizer=trainer.tokenizer, context_length=cfg.data.context_length,
                   batch_size=ev.batch_size)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    results = evaluate_arrays(enc, cache["test"], cache["probe"], dict(trainer.data_info.zeroshot),
                              few_shot=tuple(ev.get("few_shot", (1, 5, 10))),
                              few_shot_seeds=tuple(ev.get("few_shot_seeds", (0, 1, 2))),
                              timings=timings)
    timings["total"] = time.perf_counter() - t0
    from mmfm.evals import evaluators as evaluators_lib  # named evaluators (catalog datasets)
    shapes = {k: cfg.data[k] for k in ("image_size", "num_train", "num_test", "seed") if k in cfg.data}
    named = evaluators_lib.build_evaluators(ev, data_dir=cfg.data.get("dir"), shapes=shapes)
    total_steps = int(cfg.get("total_steps", 0) or 0)
    due = [e for e in named if e.due(step, total_steps)]
    if due:
        handle = evaluators_lib.EvalModel.from_trainer(trainer, params)
        for e in due:
            t0 = time.perf_counter()
            results.update(e.run(handle, workdir=trainer.workdir, step=step))
            timings[f"evaluator/{e.name}"] = time.perf_counter() - t0
    log.info("eval at step %d took %s", step, {k: round(v, 2) for k, v in timings.items()})
    writer.write(step, results, kind="eval")
    if writer.enabled:
        print(f"eval at step {step}:\n{format_table(results)}", flush=True)
        with open(os.path.join(trainer.workdir, "eval.json"), "w") as f:
            json.dump({"step": step, **results, "timings_s": timings}, f, indent=1)
    return results
