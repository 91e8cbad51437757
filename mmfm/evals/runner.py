"""Evaluations run during training and at its end: retrieval, zero-shot and linear probes.

Glue between a model + params and the pure metric functions (retrieval, zeroshot, linear_probe).
Results are printed as a table, logged to metrics.jsonl/TensorBoard and written to eval.json.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Sequence

import jax
import numpy as np

from mmfm.evals.linear_probe import linear_probe
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


def evaluate_arrays(enc: Encoders, test: dict, probe_train: dict | None, zeroshot: dict) -> dict:
    """All metrics for one eval split (`test`) and optional probe-training arrays.

    Retrieval uses every test pair; zero-shot and probes use single-object images (their labels
    describe the only object) when `num_objects` is present.
    """
    results: dict[str, float] = {}
    img = enc.images(test["image"])
    txt = enc.tokens(test["tokens"])
    r = retrieval_metrics(img, txt, np.arange(len(img)), ks=(1, 5, 10))
    results.update({f"retrieval/{k}": float(v) for k, v in r.items()})

    single = np.ones(len(img), bool)
    if "num_objects" in test:
        single = np.asarray(test["num_objects"]) == 1
    for key, (names, templates) in zeroshot.items():
        if key not in test:
            continue
        labels = np.asarray(test[key])[single]
        cls = class_embeddings(enc.texts, list(names), list(templates))
        acc = zeroshot_accuracy(img[single], cls, labels, topk=(1,))
        results[f"zeroshot/{key}/top1"] = float(acc["top1"])
    if probe_train is not None:
        tr_single = np.ones(len(probe_train["image"]), bool)
        if "num_objects" in probe_train:
            tr_single = np.asarray(probe_train["num_objects"]) == 1
        tr_img = enc.images(probe_train["image"][tr_single])
        for key in zeroshot:
            if key not in test or key not in probe_train:
                continue
            res = linear_probe(tr_img, np.asarray(probe_train[key])[tr_single], img[single],
                               np.asarray(test[key])[single], num_classes=len(zeroshot[key][0]))
            results[f"probe/{key}/accuracy"] = float(res["accuracy"])
    return results


def format_table(results: dict) -> str:
    width = max(len(k) for k in results) if results else 10
    lines = [f"{'metric':<{width}}  value", "-" * (width + 9)]
    lines += [f"{k:<{width}}  {v:7.4f}" for k, v in sorted(results.items())]
    return "\n".join(lines)


def run_evals(trainer, state, writer, step: int) -> dict:
    """Evaluate the trainer's current params; log, print and write `eval.json` (main process)."""
    cfg = trainer.config
    cache = trainer.__dict__.setdefault("_eval_cache", {})
    if "test" not in cache:
        cache["test"] = trainer.eval_arrays()
        cache["probe"] = trainer.eval_arrays(split="train", max_examples=cfg.evals.probe_train_examples)
    params = jax.device_get(state.params)
    enc = Encoders(trainer.model, params, mean=tuple(cfg.preprocess.mean), std=tuple(cfg.preprocess.std),
                   tokenizer=trainer.tokenizer, context_length=cfg.data.context_length,
                   batch_size=cfg.evals.batch_size)
    results = evaluate_arrays(enc, cache["test"], cache["probe"], dict(trainer.data_info.zeroshot))
    writer.write(step, results, kind="eval")
    if writer.enabled:
        print(f"eval at step {step}:\n{format_table(results)}", flush=True)
        with open(os.path.join(trainer.workdir, "eval.json"), "w") as f:
            json.dump({"step": step, **results}, f, indent=1)
    return results
