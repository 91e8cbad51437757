"""The config boundary: experiment configs loaded, checked and translated into typed configs.

ml_collections' own error for an unknown override is a bare AttributeError; we check every
override path against the loaded (locked) config first and name the valid keys at that level.
`model_config` / `objective_config` turn an experiment config into the frozen dataclasses the
model and the objective take (they never see the experiment config itself).
"""
from __future__ import annotations

import dataclasses
import importlib.util
import os

import ml_collections

from mmfm import sharding as sh
from mmfm.losses.objective import ObjectiveConfig
from mmfm.models.config import ModelConfig, model_config_from_dict


def load_config(spec: str) -> ml_collections.ConfigDict:
    """'path/to/config.py[:arg]' -> the file's get_config(arg)."""
    path, _, arg = spec.partition(":")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file {path!r} does not exist")
    module_spec = importlib.util.spec_from_file_location("_mmfm_config", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ValueError(f"config file {path!r} has no get_config()")
    return module.get_config(arg or None)


def check_override_path(config: ml_collections.ConfigDict, dotted: str) -> None:
    """Raise ValueError naming the first unknown component of `dotted` and the valid keys there."""
    node, seen = config, []
    for part in dotted.split("."):
        if isinstance(node, ml_collections.ConfigDict) and part in node:
            node = node[part]
            seen.append(part)
            continue
        where = ".".join(seen) or "config"
        if isinstance(node, ml_collections.ConfigDict):
            valid = ", ".join(sorted(node.keys()))
            raise ValueError(f"unknown config key '{dotted}': '{part}' is not in {where}; "
                             f"valid keys in {where}: {valid}")
        raise ValueError(f"unknown config key '{dotted}': {where} is a {type(node).__name__}, "
                         "not a group of keys")


def model_config(config, tokenizer=None) -> ModelConfig:
    """Model config from `config.model`; vocabulary and special ids come from the tokenizer."""
    text = {}
    if tokenizer is not None:
        text = dict(vocab_size=tokenizer.vocab_size, eot_id=tokenizer.eot_id, pad_id=tokenizer.pad_id)
    text["context_length"] = config.data.context_length
    model = config.model.to_dict() if hasattr(config.model, "to_dict") else dict(config.model)
    model.setdefault("image", {})
    model["image"] = dict(model["image"], image_size=config.data.image_size)
    return model_config_from_dict(model, **text)


def objective_config(config) -> ObjectiveConfig:
    loss = config.loss.to_dict() if hasattr(config.loss, "to_dict") else dict(config.loss)
    valid = {f.name for f in dataclasses.fields(ObjectiveConfig)}
    unknown = sorted(set(loss) - valid)
    if unknown:
        raise ValueError(f"loss: unknown key(s) {unknown}; valid keys: {sorted(valid)}")
    return ObjectiveConfig(**loss).validate()


def check_batch(config, mesh) -> None:
    sh.check_batch_axes(mesh, config.batch_size)
    obj = objective_config(config)
    rows, shards = obj.masked_rows(config.batch_size), sh.num_batch_shards(mesh)
    if not (obj.use_mae or obj.use_mlm):
        return
    if config.batch_size % rows:
        raise ValueError(f"loss.masked_batch_frac={obj.masked_batch_frac} gives {rows} of "
                         f"{config.batch_size} rows to MAE/MLM, which does not divide the batch "
                         f"(use a fraction such as 1/2, 1/4, 1/8)")
    if rows % shards:
        raise ValueError(f"loss.masked_batch_frac={obj.masked_batch_frac} gives {rows} of "
                         f"{config.batch_size} rows to MAE/MLM, not divisible by the {shards} "
                         f"devices of the mesh's batch axes")
