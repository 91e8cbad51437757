"""Resuming a workdir with a changed config: changes logged, model or objective changes refused.

    changes = check_resume(saved_config, config_json, step=4, workdir="runs/demo")
    # logs "resuming runs/demo at step 4 with 2 changed config key(s)" and one line a key:
    #   config.optim.lr: 0.002 -> 0.001
    changes == {"optim.lr": (0.002, 0.001), "total_steps": (1800, 2400)}

Configs are compared as the JSON a checkpoint stores (`ConfigDict.to_json_best_effort`), key by
dotted key. Changing what the model is or what it optimises (`REFUSED`: `model.*`, `loss.*`, and
the data settings that shape the model) raises `ResumeConfigError`: the saved optimizer state and
step belong to the old model and objective. Everything else (learning rate, schedule length, eval
and log settings, data) is allowed and logged. `record_resume` keeps `run_info.json`'s history:
the config it shows is the current one, and `resumes` lists each resume with its changes.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

from mmfm import fileio

log = logging.getLogger("mmfm")

# Dotted keys (or prefixes) whose change makes a resumed state meaningless or unloadable.
REFUSED = ("model", "loss", "data.image_size", "data.context_length", "data.tokenizer")
ABSENT = "<absent>"  # a key only one of the two configs has
RUN_INFO = "run_info.json"


class ResumeConfigError(ValueError):
    """The workdir's checkpoint was trained with another model or objective than the config."""


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"optim.lr": 0.001, ...}: nested dicts to dotted keys; lists and scalars are leaves."""
    out: dict[str, Any] = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def config_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, tuple]:
    """{dotted key: (old value, new value)} for every key that differs (ABSENT when missing)."""
    a, b = flatten(_json(old)), flatten(_json(new))
    return {k: (a.get(k, ABSENT), b.get(k, ABSENT)) for k in sorted(set(a) | set(b))
            if a.get(k, ABSENT) != b.get(k, ABSENT)}


def _json(tree: Mapping[str, Any]) -> dict:
    """Tuples become lists, as in a saved config."""
    return json.loads(json.dumps(dict(tree), default=str))


def is_refused(key: str) -> bool:
    return any(key == p or key.startswith(p + ".") for p in REFUSED)


def _added_off(old: Any, new: Any) -> bool:
    """A key this mmfm added after the checkpoint was saved, at its off value (a new loss term's
    weight 0.0): the saved run trained exactly that objective, so resuming it is safe."""
    return old is ABSENT and new in (0, 0.0, False, "", None)


def _show(value: Any) -> str:
    return value if value is ABSENT else json.dumps(value)


def check_resume(saved: Mapping[str, Any], current: Mapping[str, Any], *, step: int,
                 workdir: str) -> dict[str, tuple]:
    """Logs every changed key; raises ResumeConfigError naming the model/objective ones."""
    changes = config_changes(saved, current)
    refused = {k: v for k, v in changes.items() if is_refused(k) and not _added_off(*v)}
    if refused:
        listed = ", ".join(f"{k}: {_show(o)} -> {_show(n)}" for k, (o, n) in refused.items())
        raise ResumeConfigError(
            f"{workdir} holds a checkpoint at step {step} trained with another model or "
            f"objective ({listed}); resuming it would continue the old run's optimizer state "
            f"on a different model or loss. Use a new --workdir, or a new one with "
            f"--config.resume_from={workdir} --config.resume_mode=params to start from its "
            f"weights")
    if changes:
        log.warning("resuming %s at step %d with %d changed config key(s):", workdir, step,
                    len(changes))
        for k, (o, n) in changes.items():
            log.warning("  config.%s: %s -> %s", k, _show(o), _show(n))
    return changes


def record_resume(workdir: str, info: dict, *, step: int | None,
                  changes: Mapping[str, tuple]) -> dict:
    """Writes `run_info.json`: `info` (the current config, ...) plus the `resumes` history.

    A fresh start (`step` None) begins a new history; each resume appends
    {"step", "changes": {key: [old, new]}} to the one already there.
    """
    path = fileio.join(workdir, RUN_INFO)
    history: list = []
    if step is not None and fileio.isfile(path):
        try:
            history = list(json.loads(fileio.read_text(path)).get("resumes", []))
        except (OSError, ValueError):
            history = []
    if step is not None:
        history.append({"step": int(step),
                        "changes": {k: [o, n] for k, (o, n) in changes.items()}})
    out = dict(info, resumes=history)
    fileio.write_atomic(path, json.dumps(out, indent=1))
    return out
