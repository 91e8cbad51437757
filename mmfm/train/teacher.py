"""The frozen teacher of distillation (`loss.distill_weight` or `distill_feature_weight` > 0,
`config.distill`), loaded once.

    distill.teacher = "runs/demo"        a training run (read-only, `checkpoint.load_run`)
                    = "exports/demo"     an mmfm export, or a zoo architecture with
                    = "ViT-B-32"         distill.pretrained = "openai" (through `resolve`, below)
                    = "init"             a randomly initialised `distill.init_model` (smoke tests:
                                         every code path of distillation without a trained run)

The teacher's params are placed on the training mesh with their own shardings (the logical axis
rules of the student) and handed to the jitted step as a separate, non-donated argument: they
are never part of the train state, so they get no gradient, no optimizer update and are never
written into a checkpoint; a resumed run loads the teacher again from the config.

Feature distillation also gives the student a projection into the teacher's embedding space:
`with_distill_projection` sets the student's `distill_dim` to the teacher's embed_dim, so the
projection is an ordinary parameter of the student (optimized, sharded, checkpointed).

Exports and zoo models are read by the API layer, above this one: the entry point passes
`resolve(name, pretrained, mesh, rules) -> (model, params, preprocess, tokenizer)` in.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import numpy as np

from mmfm import fileio
from mmfm import sharding as sh
from mmfm.config_utils import model_config, objective_config
from mmfm.models.config import ModelConfig, model_config_from_dict
from mmfm.models.multimodal import TwoTower, init_params
from mmfm.train.state import param_shardings

log = logging.getLogger("mmfm")

INIT = "init"
# Texts both tokenizers must map to the same ids (plus the data's zero-shot class names).
PROBE_TEXTS = ("a small red circle left of a large blue square",
               "a photo of a green triangle.", "Two objects: a purple star and a yellow cross!")

Resolver = Callable[[str, Optional[str], Any, Any], tuple]


@dataclasses.dataclass(frozen=True)
class TeacherSpec:
    """The static half of the teacher (hashable: part of the jitted step's closure)."""
    model: TwoTower
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


@dataclasses.dataclass
class Teacher:
    spec: TeacherSpec
    params: Any  # placed on the mesh with `shardings`
    shardings: Any
    source: str


def load_teacher(config, *, tokenizer, mesh, rules, zeroshot: Optional[dict] = None,
                 resolve: Optional[Resolver] = None) -> Optional[Teacher]:
    """The teacher of `config.distill`, checked against the student's data; None without distill.

    tokenizer: the student's data tokenizer (the teacher must give the same ids);
    zeroshot: the data's {label: (class names, templates)}, extra texts for that check.
    """
    from mmfm.checkpoint import is_run_dir

    obj = objective_config(config)
    if not obj.needs_teacher:
        return None
    dist = config.get("distill") or {}
    source, pretrained = str(dist.get("teacher") or ""), str(dist.get("pretrained") or "") or None
    if not source:
        weight = "distill_weight" if obj.use_distill else "distill_feature_weight"
        raise ValueError(f"distill.teacher: loss.{weight} > 0 needs a teacher (a training "
                         "run, an mmfm export dir, or a zoo architecture with distill.pretrained)")
    data = config.data
    if source == INIT:
        model = TwoTower(_init_model_config(config, tokenizer))
        spec = TeacherSpec(model, int(data.image_size), tuple(config.preprocess.mean),
                           tuple(config.preprocess.std))
        shardings = param_shardings(model, mesh, rules)
        with sh.mesh_context(mesh, rules):
            init = jax.jit(lambda r: nn.meta.unbox(init_params(model, r)), out_shardings=shardings)
            params = init(jax.random.PRNGKey(int(config.seed) + 1))
        teacher_tok = tokenizer
    elif is_run_dir(source):
        spec, params, shardings, teacher_tok = _from_run(source, mesh, rules)
    elif resolve is None:
        why = "not found" if not fileio.exists(source) else "not a training run"
        raise ValueError(f"distill.teacher={source!r}: {why}; exports and zoo models are read "
                         "when training through `mmfm train` / `python -m mmfm.train`")
    else:
        try:
            model, params, pre, teacher_tok = resolve(source, pretrained, mesh, rules)
        except (ValueError, FileNotFoundError, KeyError) as e:
            raise ValueError(f"distill.teacher={source!r}: {e}") from None
        spec = TeacherSpec(model, int(pre.image_size), tuple(pre.mean), tuple(pre.std))
        shardings = jax.tree.map(lambda a: a.sharding, params)
    check_same_tokens(tokenizer, teacher_tok, int(data.context_length), spec.model,
                      extra=_class_names(zeroshot), where=f"distill.teacher={source!r}")
    if spec.image_size != int(data.image_size):
        log.info("distillation: teacher images resized %d -> %d px in the step",
                 int(data.image_size), spec.image_size)
    n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
    log.info("distillation teacher %s: %d params (frozen)", source, n)
    return Teacher(spec, params, shardings, source)


def with_distill_projection(model_cfg: ModelConfig, obj, teacher_dim: int) -> ModelConfig:
    """The student's config with `distill_dim` = `teacher_dim` (the teacher's embed_dim) under
    feature distillation (`obj.use_distill_feature`); unchanged (and checked to be 0) otherwise."""
    if not obj.use_distill_feature:
        if model_cfg.distill_dim:
            raise ValueError(f"model.distill_dim={model_cfg.distill_dim} builds a projection that "
                             "only loss.distill_feature_weight > 0 trains; leave it at 0")
        return model_cfg
    if model_cfg.distill_dim not in (0, teacher_dim):
        raise ValueError(f"model.distill_dim={model_cfg.distill_dim}: feature distillation "
                         f"projects into the teacher's embedding ({teacher_dim} wide); leave it "
                         "at 0")
    log.info("feature distillation: projection %d -> %d (the teacher's embed_dim)",
             model_cfg.embed_dim, teacher_dim)
    return dataclasses.replace(model_cfg, distill_dim=teacher_dim)


def _init_model_config(config, tokenizer):
    """`distill.init_model` (a `config.model`-like dict; empty: the student's) at the data's sizes."""
    init_model = (config.get("distill") or {}).get("init_model") or {}
    init_model = init_model.to_dict() if hasattr(init_model, "to_dict") else dict(init_model)
    if not init_model:
        return model_config(config, tokenizer)
    shim = type("Cfg", (), {"data": config.data, "model": init_model})()
    return model_config(shim, tokenizer)


def _from_run(path: str, mesh, rules):
    from mmfm import checkpoint
    from mmfm.data.tokenizers import load_tokenizer

    run = checkpoint.load_run(path, params=False)
    model = TwoTower(model_config_from_dict(run.model_config))
    shardings = param_shardings(model, mesh, rules)
    abstract = jax.eval_shape(lambda r: nn.meta.unbox(init_params(model, r)), jax.random.PRNGKey(0))
    target = jax.tree.map(lambda s, shd: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=shd),
                          abstract, shardings)
    params = checkpoint.load_run(path, step=run.step, target=target).params
    pre = run.preprocess
    spec = TeacherSpec(model, int(pre["image_size"]), tuple(pre["mean"]), tuple(pre["std"]))
    tok = load_tokenizer(run.tokenizer_file, lowercase=run.tokenizer_lowercase)
    return spec, params, shardings, tok


def _class_names(zeroshot: Optional[dict]) -> tuple[str, ...]:
    return tuple(str(n) for names, _ in (zeroshot or {}).values() for n in names)


def check_same_tokens(student_tok, teacher_tok, context_length: int, teacher_model: TwoTower, *,
                      extra=(), where: str = "distill.teacher") -> None:
    """The teacher must read the student's token ids as its own: same vocabulary, special ids and
    ids of sample texts, and a context at least as long as the data's."""
    problems = []
    for attr in ("vocab_size", "pad_id", "eot_id"):
        a, b = getattr(student_tok, attr, None), getattr(teacher_tok, attr, None)
        if a != b:
            problems.append(f"{attr} {b} (student's data: {a})")
    if not problems:
        texts = list(PROBE_TEXTS) + list(extra)
        a = np.asarray(student_tok(texts, context_length))
        b = np.asarray(teacher_tok(texts, context_length))
        bad = [t for t, x, y in zip(texts, a, b) if not np.array_equal(x, y)]
        if bad:
            problems.append(f"other token ids for {bad[0]!r}")
    if problems:
        raise ValueError(f"{where}: the teacher's tokenizer differs from the student's data "
                         f"tokenizer ({'; '.join(problems)}); distillation feeds both models the "
                         "same token ids, so train the student on the teacher's tokenizer "
                         "(config.data.tokenizer)")
    teacher_ctx = teacher_model.cfg.text.context_length
    if teacher_ctx < context_length:
        raise ValueError(f"{where}: the teacher's text context is {teacher_ctx} tokens, shorter "
                         f"than the student's data (data.context_length={context_length})")
