"""Experiment-config loading and `--config.key=value` checking with messages that list valid keys.

ml_collections' own error for an unknown override is a bare AttributeError; we check every
override path against the loaded (locked) config first and name the valid keys at that level.
"""
from __future__ import annotations

import importlib.util
import os
from typing import Sequence

import ml_collections


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


def config_overrides(argv: Sequence[str], flag: str = "config") -> tuple[str | None, list[str]]:
    """(config spec, [override paths]) from argv-style flags."""
    spec, paths = None, []
    args = list(argv)
    for i, a in enumerate(args):
        if a == f"--{flag}" and i + 1 < len(args):
            spec = args[i + 1]
        elif a.startswith(f"--{flag}="):
            spec = a.split("=", 1)[1]
        elif a.startswith(f"--{flag}."):
            paths.append(a[len(flag) + 3:].split("=", 1)[0])
    return spec, paths


def check_argv(argv: Sequence[str], flag: str = "config") -> None:
    """Validate every `--config.x.y=` in argv against the config file before absl parses it."""
    spec, paths = config_overrides(argv, flag)
    if spec is None or not paths:
        return
    config = load_config(spec)
    for p in paths:
        check_override_path(config, p)
