"""MODEL_CARD.md, written into every export: what the model is, how it was made, what it scores.

    card = model_card(cfg, flat_params, source=..., run=RunRecord(...))

The card is built only from what the export and its run recorded: the model config and params
(architecture, parameter count, FLOPs), the training config (data, objective weights, steps,
optimizer, compute), the run's end-of-training eval (`eval_results.json`, with the number of
examples behind each metric) and any evaluation-suite results (`suite_results.json`: per-group
accuracy, compositional edits). Known failure modes are read off those results (the worst groups,
edit types near chance) and the training data's domain; nothing is claimed that was not measured.
"""
from __future__ import annotations

import dataclasses
from typing import Mapping, Optional, Sequence

import numpy as np

from mmfm.losses.objective import ObjectiveConfig
from mmfm.models.config import ModelConfig
from mmfm.train import flops as flops_lib

CARD_FILE = "MODEL_CARD.md"
BUILTIN_DATA = "captioned_shapes"
# A group this far below its metric's mean accuracy, or an edit type scored this close to chance
# (0.5: the true caption vs one negative), is listed as a failure mode.
GROUP_GAP = 0.1
NEAR_CHANCE = 0.6
LOSS_TERMS = (("contrastive_weight", "contrastive ({contrastive})"), ("mae_weight", "MAE (mask ratio {mae_ratio})"),
              ("mlm_weight", "MLM (mask ratio {mlm_ratio})"), ("classify_weight", "classification"),
              ("distill_weight", "distillation of a frozen teacher's similarities"),
              ("distill_feature_weight", "feature distillation (1 - cosine to a frozen teacher's "
               "embeddings through a training-only projection)"))


@dataclasses.dataclass(frozen=True)
class RunRecord:
    """What a training run recorded: its config and run_info, its eval and suite results."""
    config: Mapping
    step: int
    run_info: Mapping = dataclasses.field(default_factory=dict)
    eval_results: Optional[Mapping] = None  # eval_results.json
    suites: Sequence[Mapping] = ()  # suite_results.json payloads


def param_counts(flat_params: Mapping[str, np.ndarray]) -> dict:
    """{'total', 'image tower', 'text tower', 'other'} parameter counts of canonical flat params."""
    counts = {"image tower": 0, "text tower": 0, "other": 0}
    for k, v in flat_params.items():
        part = {"img": "image tower", "txt": "text tower"}.get(k.split("/", 1)[0], "other")
        counts[part] += int(np.prod(np.shape(v)))
    return dict(total=sum(counts.values()), **counts)


def _flop(n: float) -> str:
    for unit, scale in (("PFLOP", 1e15), ("TFLOP", 1e12), ("GFLOP", 1e9), ("MFLOP", 1e6)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n:.3g} FLOP"


def _millions(n: float) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e5 else f"{n:,.0f}"


def _architecture(cfg: ModelConfig, counts: dict) -> list[str]:
    im, tx = cfg.image, cfg.text
    fwd = flops_lib.image_forward_flops(cfg) + flops_lib.text_forward_flops(cfg)
    return [
        "## Model", "",
        f"- Two-tower image-text encoder, {cfg.embed_dim}-dimensional L2-normalised embeddings "
        f"({'sigmoid bias, ' if cfg.init_bias is not None else ''}learned temperature).",
        f"- Image tower: ViT, width {im.width}, depth {im.depth}, {im.heads} heads, MLP {im.mlp_dim}, "
        f"patch {im.patch_size} on {im.image_size} px images ({im.num_patches} patches), "
        f"{im.stem} stem, {im.pool} pooling{', NaFlex' if im.naflex else ''}.",
        f"- Text tower: transformer, width {tx.width}, depth {tx.depth}, {tx.heads} heads, MLP "
        f"{tx.mlp_dim}, context {tx.context_length}, vocabulary {tx.vocab_size:,}, "
        f"{'causal' if tx.causal else 'bidirectional'}, {tx.pool} pooling.",
        f"- Parameters: {_millions(counts['total'])} (image tower {_millions(counts['image tower'])}, "
        f"text tower {_millions(counts['text tower'])}, other {_millions(counts['other'])}).",
        f"- Forward FLOPs (matmuls) of one image plus one text: {_flop(fwd)}.", ""]


def _objective(loss: Mapping) -> str:
    terms = [f"{name.format(**{k: loss.get(k) for k in ('contrastive', 'mae_ratio', 'mlm_ratio')})} "
             f"x {loss[key]:g}" for key, name in LOSS_TERMS if float(loss.get(key, 0) or 0) > 0]
    drop = float(loss.get("patch_drop", 0) or 0)
    return " + ".join(terms) + (f"; FLIP patch drop {drop:g} in the contrastive view" if drop else "")


def _training(cfg: ModelConfig, run: RunRecord) -> list[str]:
    c, data = run.config, run.config.get("data", {})
    name = data.get("dataset") or data.get("name", "?")
    if name == BUILTIN_DATA:
        name = (f"{BUILTIN_DATA} (mmfm's built-in synthetic captioned shapes: "
                f"{data.get('num_train', '?')} train / {data.get('num_test', '?')} test images of "
                f"{data.get('image_size', '?')} px)")
    opt, batch = c.get("optim", {}), int(c.get("batch_size", 0))
    lines = ["## Training", "", f"- Data: {name}.", f"- Objective: {_objective(c.get('loss', {}))}."]
    loss, teacher = c.get("loss", {}), (c.get("distill") or {}).get("teacher")
    if teacher and (loss.get("distill_weight") or loss.get("distill_feature_weight")):
        tag = (c.get("distill") or {}).get("pretrained")
        lines.append(f"- Distillation teacher: {teacher}" + (f" (pretrained {tag})" if tag else "") + ".")
    lines.append(f"- Steps: {run.step:,} of {int(c.get('total_steps', run.step)):,} at global batch "
                 f"{batch} ({run.step * batch:,} examples seen).")
    if opt:
        lines.append(f"- Optimizer: {opt.get('name')} (lr {opt.get('lr')}, warmup "
                     f"{opt.get('warmup_steps')} steps, weight decay {opt.get('weight_decay')}, "
                     f"gradient clip {opt.get('grad_clip')}).")
    try:
        known = {f.name for f in dataclasses.fields(ObjectiveConfig)}
        obj = ObjectiveConfig(**{k: v for k, v in c.get("loss", {}).items() if k in known})
        per_example = flops_lib.train_flops_per_example(cfg, obj)
        total = per_example * batch * run.step
        info = run.run_info
        where = (f" on {info['devices']} device(s), {info.get('processes', 1)} process(es), mesh "
                 f"{info.get('mesh')}" if info.get("devices") else "")
        lines.append(f"- Compute: {_flop(per_example)} per example (matmuls, forward + "
                     f"backward), {_flop(total)} in all{where}.")
    except (KeyError, TypeError, ValueError):
        pass  # a config this mmfm cannot read back: the card still lists the rest
    return lines + [""]


def _evaluation(run: RunRecord) -> list[str]:
    lines = ["## Evaluation", ""]
    ev = run.eval_results
    if ev and ev.get("metrics"):
        sizes = ev.get("sizes") or {}
        what = {"retrieval_pairs": "image-caption pairs for retrieval",
                "zeroshot_test": "single-object test images for zero-shot and probes",
                "probe_train": "images to train the probes"}
        n = "; ".join(f"{v:,} {what.get(k, k)}" for k, v in sizes.items()) or (
            f"a test split of {run.config.get('data', {}).get('num_test', '?')} examples; this run "
            "did not record how many each metric used")
        lines += [f"The run's own eval at step {ev.get('step')}, on its data's test split"
                  + (f" ({n})." if n else "."), "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.4f} |" for k, v in sorted(ev["metrics"].items())
                  if not k.endswith("/std")]
        lines.append("")
    else:
        lines += ["No evaluation was recorded with this model.", ""]
    for suite in run.suites:
        lines += _suite_section(suite)
    return lines


def _suite_section(suite: Mapping) -> list[str]:
    counts = suite.get("counts") or {}
    n = ", ".join(f"{k.replace('_', ' ')} {v:,}" for k, v in counts.items())
    lines = [f"### Suite `{suite.get('suite')}`" + (f" ({n})" if n else ""), "",
             "| metric | value |", "|---|---|"]
    metrics = suite.get("metrics") or {}
    lines += [f"| {k} | {v:.4f} |" for k, v in sorted(metrics.items())
              if isinstance(v, (int, float)) and "/worst_" not in k and "/spread_" not in k]
    groups = suite.get("groups") or {}
    if groups:
        lines += ["", "Per group (accuracy, examples):", "", "| metric / attribute | worst group | "
                  "worst | best | groups |", "|---|---|---|---|---|"]
        for key, g in sorted(groups.items()):
            per = ", ".join(f"{name} {v['accuracy']:.2f} ({v['count']})"
                            for name, v in sorted(g["groups"].items()))
            lines.append(f"| {key} | {g['worst_group']} | {g['worst']:.3f} | {g['best']:.3f} | {per} |")
    return lines + [""]


def failure_modes(run: Optional[RunRecord]) -> list[str]:
    """Findings read off the recorded results: weak groups, edit types near chance, data domain."""
    found = []
    if run is not None and run.config.get("data", {}).get("name") == BUILTIN_DATA \
            and not run.config.get("data", {}).get("dataset"):
        found.append("Trained only on synthetic coloured shapes on a plain background: it has seen "
                     "no natural image and no caption outside that grammar, and should not be "
                     "expected to transfer to either.")
    for suite in (run.suites if run else ()):
        for key, g in sorted((suite.get("groups") or {}).items()):
            weak = [f"{name} ({v['accuracy']:.2f}, {v['count']} examples)"
                    for name, v in sorted(g["groups"].items())
                    if v["accuracy"] < g.get("mean", g["best"]) - GROUP_GAP and v["count"] >= 10]
            if weak:
                found.append(f"`{key}`: groups more than {GROUP_GAP:g} below the mean accuracy "
                             f"{g.get('mean', float('nan')):.2f}: {', '.join(weak)}.")
        comp = {k.split("/", 1)[1]: v for k, v in (suite.get("metrics") or {}).items()
                if k.startswith("compositional/") and k.split("/", 1)[1] not in ("mean", "overall")}
        chance = sorted(k for k, v in comp.items() if v < NEAR_CHANCE)
        if chance:
            found.append("Compositional edits scored near chance (true caption vs one edit, "
                         f"chance 0.5): {', '.join(f'{k} {comp[k]:.2f}' for k in chance)}: it does "
                         "not reliably bind these attributes to their objects.")
    if run is None or not run.suites:
        found.append("No per-group evaluation was recorded: run `mmfm eval --suite shapes` (or a "
                     "benchmark suite) and export again to list the groups it fails on.")
    return found


def model_card(cfg: ModelConfig, flat_params: Mapping[str, np.ndarray], *, name: str,
               source: Optional[Mapping] = None, run: Optional[RunRecord] = None,
               extra: Sequence[str] = ()) -> str:
    """The markdown card of one export. `extra`: more sections (e.g. quantization), as lines."""
    source = dict(source or {})
    lines = [f"# Model card: {name}", ""]
    lines += _architecture(cfg, param_counts(flat_params))
    if run is not None:
        lines += _training(cfg, run)
    else:
        where = source.get("path") or source.get("workdir") or "?"
        lines += ["## Training", "", f"- Converted from {source.get('kind', 'an external source')} "
                  f"weights at {where}; how they were trained is not recorded here: see the source "
                  "model's own card. mmfm checked the converted tensors' shapes, not the training.", ""]
        lines += ["## Evaluation", "", "Not evaluated by mmfm at export time: `mmfm eval --model "
                  "THIS_DIR --suite clip_benchmark` scores it.", ""]
    if run is not None:
        lines += _evaluation(run)
    lines += list(extra)
    lines += ["## Known failure modes", ""] + [f"- {f}" for f in failure_modes(run)] + [""]
    lines += ["## Intended use", "",
              "- Image-text embeddings for zero-shot classification and retrieval research, in the "
              "domain of its training data; evaluate on your own data before relying on it.",
              "- Not for decisions about people, nor for any use where an error causes harm: "
              "nothing here measured fairness or robustness beyond the results above.", ""]
    return "\n".join(lines)
