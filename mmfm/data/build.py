"""`build_data(config.data, ...)`: the config-level entry to every dataset mmfm trains on.

`config.data.name` picks the dataset: the built-in captioned_shapes (generated and prepared here on
first use), prepared user corpora (wds, jsonl), TFDS catalog datasets, or a weighted mixture
(`mmfm.data.datasets`). Each returns the same four pieces: a checkpointable train loader, an eval
arrays function, the tokenizer and a `DataInfo`.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from mmfm.data import datasets, synthetic
from mmfm.data.datasets import COMMON_KEYS
from mmfm.data.pipeline import DataInfo, TrainLoader, load_eval_arrays, make_train_loader
from mmfm.data.sources import SubsetSource, first_records, maybe_cached
from mmfm.data.tokenizers import load_tokenizer
from mmfm.data.transforms import make_image_transform, make_train_transform


def _config_dict(cfg: Any) -> dict[str, Any]:
    if hasattr(cfg, "to_dict"):  # ml_collections.ConfigDict
        return cfg.to_dict()
    if isinstance(cfg, Mapping):
        return dict(cfg)
    raise TypeError(f"data config must be a ConfigDict or a mapping, got {type(cfg).__name__}")


def _build_captioned_shapes(cfg: dict[str, Any], *, batch_size: int, seed: int,
                            shard_index: int, shard_count: int):
    unknown = set(cfg) - COMMON_KEYS
    if unknown:
        raise ValueError(f"unknown captioned_shapes data config keys {sorted(unknown)}; "
                         f"valid: {sorted(COMMON_KEYS)}")
    for key in ("dataset", "mixture", "transform"):
        if cfg.get(key):
            raise ValueError(f"config.data.{key} is not used by captioned_shapes; set "
                             f"config.data.name to wds/jsonl/mixture or leave it empty")
    if not cfg.get("dir"):
        raise ValueError("data config needs `dir` (where datasets are built and stored)")
    shapes = {k: cfg[k] for k in ("image_size", "num_train", "num_test", "seed") if k in cfg}
    builder = synthetic.prepare_captioned_shapes(cfg["dir"], **shapes)
    image_size = builder.builder_config.image_size
    tokenizer_path = synthetic.shapes_tokenizer_path(cfg["dir"], **shapes)
    if cfg.get("tokenizer"):
        tokenizer_path = cfg["tokenizer"]
    tokenizer = load_tokenizer(tokenizer_path, lowercase=bool(cfg.get("lowercase", False)))
    context_length = cfg.get("context_length", 32)
    drops = {k: float(v) for k, v in (cfg.get("caption_drop") or {}).items()}
    whole = float(cfg.get("caption_whole", 0.0))
    if whole and not any(drops.values()):
        raise ValueError("config.data.caption_whole is set but config.data.caption_drop drops "
                         "nothing: every caption is whole already")
    # No flip by default: captions name left/right.
    transform = make_image_transform(image_size)
    train_transform = make_train_transform(
        image_size, crop_scale=tuple(cfg.get("crop_scale") or (1.0, 1.0)),
        flip=bool(cfg.get("flip", False)))
    train_source = first_records(maybe_cached(builder.as_data_source(split="train"),
                                              bool(cfg.get("in_memory", False))),
                                 cfg.get("max_train_examples"))
    if cfg.get("label"):
        train_source = _single_object(train_source, cfg["label"])
    loader = make_train_loader(
        train_source, batch_size=batch_size, seed=seed, tokenizer=tokenizer,
        context_length=context_length, transform=train_transform,
        caption_fn=synthetic.CaptionDropper(drops, whole) if any(drops.values()) else None,
        shard_index=shard_index, shard_count=shard_count,
        worker_count=cfg.get("worker_count", 0), num_threads=cfg.get("num_threads", 2))
    test = builder.as_data_source(split="test")

    def eval_arrays_fn(split: str = "test", max_examples: int | None = None) -> dict[str, Any]:
        if split not in ("train", "test"):
            raise ValueError(f"captioned_shapes has splits 'train' and 'test', not {split!r}")
        source = test if split == "test" else builder.as_data_source(split="train")
        return load_eval_arrays(source, tokenizer, context_length, transform, max_examples)

    info = DataInfo(
        name="captioned_shapes", image_size=image_size, context_length=context_length,
        vocab_size=tokenizer.vocab_size, tokenizer_path=tokenizer_path,
        num_train=len(train_source), num_eval=len(test),
        examples_per_shard=loader.examples_per_shard,
        batches_per_epoch=loader.batches_per_epoch, zeroshot=dict(synthetic.ZEROSHOT))
    return loader, eval_arrays_fn, tokenizer, info


def _single_object(source, label: str) -> SubsetSource:
    """The records with one object: a shape/colour label describes only those (as in the evals)."""
    if label not in synthetic.ZEROSHOT:
        raise ValueError(f"config.data.label={label!r}: captioned_shapes labels are "
                         f"{sorted(synthetic.ZEROSHOT)}")
    keep = [i for i in range(len(source)) if int(source[i]["num_objects"]) == 1]
    if not keep:
        raise ValueError("config.data.label: no single-object training image among the "
                         f"{len(source)} records (raise config.data.max_train_examples)")
    return SubsetSource(source, keep)


# name -> fn(cfg dict, *, batch_size, seed, shard_index, shard_count)
#         -> (train_loader, eval_arrays_fn, tokenizer, info)
def _corpus_or_catalog(cfg: dict[str, Any], **kwargs):
    return datasets.build_corpus_or_catalog(cfg, **kwargs)


DATASETS: dict[str, Callable[..., tuple]] = {
    "captioned_shapes": _build_captioned_shapes,
    # prepared image-text corpora (`mmfm data prepare`): config.data.dataset names one
    "wds": _corpus_or_catalog, "jsonl": _corpus_or_catalog,
    # TFDS catalog datasets, prepared in config.data.dir
    "cifar10": _corpus_or_catalog, "cifar100": _corpus_or_catalog,
    "imagenet2012": _corpus_or_catalog, "coco_captions": _corpus_or_catalog,
    # weighted mixture of the above: config.data.mixture
    "mixture": _corpus_or_catalog,
}


def build_data(data_cfg: Any, *, batch_size: int, seed: int, shard_index: int = 0,
               shard_count: int = 1) -> tuple[TrainLoader, Callable[..., dict], Any, DataInfo]:
    """Config-level entry: prepares the dataset if missing and returns the pieces to train on.

    Args:
      data_cfg: ConfigDict (or mapping) with `name`, `dir` and the dataset's own fields (for
        captioned_shapes: image_size, num_train, num_test, seed (of the data), context_length,
        caption_drop (attribute -> prob; empty = full captions), caption_whole (share of
        captions left whole when caption_drop is set), in_memory (keep train records after
        their first read), worker_count, max_train_examples (the first N train records),
        label (fine-tuning: "shape" or "color"; keeps the single-object images)).
      batch_size: per-shard (per-host) batch size.
      seed: shuffling/augmentation seed (distinct from the dataset's generation seed).
      shard_index, shard_count: this host's shard, e.g. jax.process_index()/process_count().

    Returns:
      (train_loader, eval_arrays_fn, tokenizer, info). `eval_arrays_fn(split="test",
      max_examples=None)` loads a split in source order with full captions (see
      `load_eval_arrays`); split="train" serves linear-probe training data.
    """
    cfg = _config_dict(data_cfg)
    name = cfg.get("name")
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; available: {sorted(DATASETS)}")
    return DATASETS[name](cfg, batch_size=batch_size, seed=seed, shard_index=shard_index,
                          shard_count=shard_count)
