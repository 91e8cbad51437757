"""`build_data` entries for prepared corpora (wds, jsonl), catalog datasets and mixtures.

Selected by `config.data.name` (see `build.DATASETS`); the keys they read:

  dir            TFDS data dir (prepared corpora live in dir/<wds|jsonl>/<dataset>/1.0.0)
  dataset        prepared corpus name, for name=wds|jsonl (`mmfm data prepare --name`)
  tokenizer      tokenizer file (.model or HF tokenizer.json); "" = the dataset's own (trained
                 at prepare time for corpora, from class-name prompts for catalog datasets)
  lowercase      lowercase captions before tokenising
  crop_scale     training random-resized-crop area range; (1, 1) = resize + centre crop
  flip           random horizontal flip in training
  transform      optional "module:function" factory `f(image_size, train, data_cfg) -> callable
                 (image, rng) -> uint8[H,W,3]`, replacing crop_scale/flip (plain Python, no DSL)
  mixture        for name=mixture: tuple of dicts, each overrides keys (name, dataset, dir,
                 ...) plus `weight`
"""
from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from mmfm import fileio
from mmfm.data import catalog, sources
from mmfm.data.tokenizers import load_tokenizer, train_tokenizer
from mmfm.data.transforms import make_image_transform, make_train_transform

COMMON_KEYS = frozenset({
    "name", "dir", "image_size", "num_train", "num_test", "seed", "context_length",
    "caption_drop", "caption_whole", "worker_count", "num_threads", "dataset", "tokenizer",
    "lowercase", "in_memory", "crop_scale", "flip", "transform", "mixture",
    # Fine-tuning: the integer field the classification term trains on, and a prefix of the
    # train split (few-label settings).
    "label", "max_train_examples"})
CORPUS_FORMATS = ("wds", "jsonl")


def _check_keys(cfg: Mapping[str, Any], where: str) -> None:
    unknown = set(cfg) - COMMON_KEYS - {"weight"}
    if unknown:
        raise ValueError(f"unknown {where} data config keys {sorted(unknown)}; "
                         f"valid: {sorted(COMMON_KEYS)}")


def load_callable(path: str):
    """'package.module:function' -> the function (clear errors for typos)."""
    module, sep, attr = path.partition(":")
    if not sep or not module or not attr:
        raise ValueError(f"config.data.transform must look like 'package.module:function', "
                         f"got {path!r}")
    try:
        fn = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"config.data.transform {path!r} cannot be imported: {e}") from e
    if not callable(fn):
        raise ValueError(f"config.data.transform {path!r} is not callable")
    return fn


def transforms_for(cfg: Mapping[str, Any]):
    """(train transform, eval transform) from the config."""
    size = int(cfg.get("image_size", 64))
    if cfg.get("transform"):
        factory = load_callable(cfg["transform"])
        return factory(size, True, dict(cfg)), factory(size, False, dict(cfg))
    train = make_train_transform(size, crop_scale=tuple(cfg.get("crop_scale") or (1.0, 1.0)),
                                 flip=bool(cfg.get("flip", False)))
    return train, make_image_transform(size)


class Component:
    """One dataset opened from config: adapted splits, tasks, skip counts, default tokenizer."""

    def __init__(self, cfg: Mapping[str, Any]):
        _check_keys(cfg, repr(cfg.get("name")))
        self.name, self.dir = cfg.get("name"), cfg.get("dir") or ""
        if not self.dir:
            raise ValueError(f"data config for {self.name!r} needs `dir` (config.data.dir)")
        self.prepare_skips: dict[str, int] = {}
        if self.name in CORPUS_FORMATS:
            from mmfm.data.builders.common import read_summary
            dataset = cfg.get("dataset") or ""
            self.builder = sources.open_prepared(self.name, self.dir, dataset)
            summary = read_summary(self.dir, self.name, dataset)
            self.prepare_skips = dict(summary["total"]["skipped"])
            self.label_keys: tuple[str, ...] = ()
            self.zeroshot: dict = {}
            self.tokenizer_path = sources.prepared_tokenizer_path(self.dir, self.name, dataset)
            self.corpus = None
            self.splits = tuple(self.builder.info.splits)
        elif self.name in catalog.CATALOG:
            self._train, self.info = catalog.open_catalog(self.name, self.dir, "train")
            self.label_keys = catalog.CATALOG[self.name].label_keys
            self.zeroshot = dict(self.info.zeroshot)
            self.tokenizer_path = fileio.join(self.dir, "mmfm_tokenizers", f"{self.name}.model")
            self.corpus = lambda: (t.format(n) for names, temps in self.zeroshot.values()
                                   for n in names for t in temps)
            self.splits = tuple(catalog.CATALOG[self.name].splits)
        else:
            raise ValueError(f"not a corpus or catalog dataset: {self.name!r}")

    def source(self, split: str):
        """Adapted random-access records of `split` ("train" or "test")."""
        if split not in self.splits:
            raise ValueError(f"{self.name} has splits {list(self.splits)}, not {split!r}")
        if self.name in CORPUS_FORMATS:
            return catalog.AdaptedSource(self.builder.as_data_source(split=split),
                                    sources.PreparedRecord())
        if split == "train":
            return self._train
        return catalog.open_catalog(self.name, self.dir, split)[0]


def _tokenizer(cfg: Mapping[str, Any], component: Component):
    path = cfg.get("tokenizer") or component.tokenizer_path
    if not fileio.exists(path):
        if cfg.get("tokenizer") or component.corpus is None:
            raise FileNotFoundError(f"tokenizer not found: {path} (config.data.tokenizer)")
        train_tokenizer(component.corpus(), path)
    return load_tokenizer(path, lowercase=bool(cfg.get("lowercase", False))), path


def build_corpus_or_catalog(cfg: dict[str, Any], *, batch_size: int, seed: int,
                            shard_index: int, shard_count: int):
    """The `build_data` entry for wds, jsonl, catalog names and `mixture`."""
    from mmfm.data import pipeline  # the loader layer below this module
    _check_keys(cfg, repr(cfg.get("name")))
    in_memory = bool(cfg.get("in_memory", False))
    if cfg.get("name") == "mixture":
        parts = [dict(p) for p in (cfg.get("mixture") or ())]
        if not parts:
            raise ValueError("config.data.name='mixture' needs config.data.mixture, e.g. "
                             "(dict(name='wds', dataset='cc3m', weight=0.8), ...)")
        base = {k: v for k, v in cfg.items() if k not in ("mixture", "name", "dataset")}
        comps = [Component(dict(base, **{k: v for k, v in p.items() if k != "weight"}))
                 for p in parts]
        weights = [float(p.get("weight", 1.0)) for p in parts]
        safe = [sources.SafeSource(sources.maybe_cached(c.source("train"), in_memory))
                for c in comps]
        train = sources.MixtureSource(safe, weights, seed=int(cfg.get("seed", 0)))
        label_keys: tuple[str, ...] = ()  # labels differ between components
        prepare_skips: dict[str, int] = {}
        for c in comps:
            for reason, n in c.prepare_skips.items():
                prepare_skips[reason] = prepare_skips.get(reason, 0) + n
    else:
        comps = [Component(cfg)]
        train = sources.SafeSource(sources.first_records(
            sources.maybe_cached(comps[0].source("train"), in_memory), cfg.get("max_train_examples")))
        label_keys, prepare_skips = comps[0].label_keys, comps[0].prepare_skips
    first = comps[0]
    tokenizer, tokenizer_path = _tokenizer(cfg, first)
    context_length = int(cfg.get("context_length", 32))
    train_tf, eval_tf = transforms_for(cfg)
    loader = pipeline.make_train_loader(
        train, batch_size=batch_size, seed=seed, tokenizer=tokenizer,
        context_length=context_length, transform=train_tf, caption_fn=sources.pick_caption,
        shard_index=shard_index, shard_count=shard_count,
        worker_count=int(cfg.get("worker_count", 0)), num_threads=int(cfg.get("num_threads", 2)),
        label_keys=label_keys)
    loader.prepare_skips = prepare_skips
    eval_split = "test" if "test" in first.splits else "train"

    def eval_arrays_fn(split: str = "test", max_examples: int | None = None) -> dict[str, Any]:
        split = eval_split if split == "test" else split
        return pipeline.load_eval_arrays(first.source(split), tokenizer, context_length, eval_tf,
                                         max_examples, label_keys=first.label_keys)

    info = pipeline.DataInfo(
        name=cfg["name"], image_size=int(cfg.get("image_size", 64)),
        context_length=context_length, vocab_size=tokenizer.vocab_size,
        tokenizer_path=tokenizer_path, num_train=len(train),
        num_eval=len(first.source(eval_split)), examples_per_shard=loader.examples_per_shard,
        batches_per_epoch=loader.batches_per_epoch, zeroshot=first.zeroshot)
    return loader, eval_arrays_fn, tokenizer, info
