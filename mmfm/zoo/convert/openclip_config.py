"""open_clip model configs (the JSON `open_clip.add_model_config` takes, and the `model_cfg` of a
hub layout's `open_clip_config.json`) -> mmfm's `ModelConfig`, with nothing guessed.

The weights fix widths, depths, MLP sizes, vocabulary and context; the config fixes what they do
not: head counts (vision `width // head_width`, text `heads`), the activation (`quick_gelu`, or
GELU with `act_kwargs`), LayerNorm eps (`norm_kwargs`), text causality and pooling. Only open_clip's
native towers are supported; every option mmfm cannot reproduce is refused by name, never dropped.
"""
from __future__ import annotations

import json
import math
from typing import Any, Mapping, Optional

from mmfm import fileio
from mmfm.data.preprocess import Preprocess
from mmfm.models.config import ModelConfig, TextConfig, VitConfig

HUB_CONFIG = "open_clip_config.json"
HUB_WEIGHTS = "open_clip_model.safetensors"
TORCH_LN_EPS = 1e-5

# Options whose default is the only value mmfm reproduces: (key, default).
_VISION_FIXED = (("ls_init_value", None), ("attentional_pool", False), ("pos_embed_type", "learnable"),
                 ("block_type", None), ("qk_norm", False), ("scaled_cosine_attn", False),
                 ("scale_heads", False), ("scale_attn_inner", False), ("scale_attn", False),
                 ("scale_fc", False), ("image_seq_len", None))
_TEXT_FIXED = (("text_arch", "clip"), ("ls_init_value", None), ("embed_cls", False),
               ("proj_type", "linear"), ("block_type", None), ("qk_norm", False),
               ("scaled_cosine_attn", False), ("scale_heads", False), ("scale_attn_inner", False),
               ("scale_attn", False), ("scale_fc", False), ("variable_text", False),
               ("tokenizer_type", ""), ("reg_tokens", 0))
_TEXT_POOL = {"argmax": "argmax", "last": "last", "first": "first", "eos": "eot"}


class OpenClipConfigError(ValueError):
    """An open_clip config mmfm cannot reproduce exactly (the message names the key)."""


def _act(cfg: Mapping[str, Any], tower: Mapping[str, Any], where: str) -> str:
    kwargs = dict(tower.get("act_kwargs") or {})
    approx = kwargs.pop("approximate", "none")
    if kwargs:
        raise OpenClipConfigError(f"{where}.act_kwargs {sorted(kwargs)} are not supported")
    if cfg.get("quick_gelu", False):
        if approx != "none":
            raise OpenClipConfigError(f"{where}: quick_gelu together with act_kwargs.approximate")
        return "quick_gelu"
    if approx not in ("none", "tanh"):
        raise OpenClipConfigError(f"{where}.act_kwargs.approximate={approx!r}: valid 'none', 'tanh'")
    return "gelu_tanh" if approx == "tanh" else "gelu"


def _eps(tower: Mapping[str, Any], where: str) -> float:
    kwargs = dict(tower.get("norm_kwargs") or {})
    eps = float(kwargs.pop("eps", TORCH_LN_EPS))
    if kwargs:
        raise OpenClipConfigError(f"{where}.norm_kwargs {sorted(kwargs)} are not supported")
    return eps


def _fixed(tower: Mapping[str, Any], fixed, where: str) -> None:
    for key, default in fixed:
        if tower.get(key, default) != default:
            raise OpenClipConfigError(f"{where}.{key}={tower[key]!r} is not supported by mmfm's "
                                      f"open_clip converter (only {default!r})")


def model_config_from_openclip(cfg: Mapping[str, Any], where: str = "open_clip model config"
                               ) -> ModelConfig:
    """The `ModelConfig` of an open_clip native CLIP model config (vision_cfg, text_cfg, ...)."""
    if "model_cfg" in cfg:  # a whole open_clip_config.json
        cfg = cfg["model_cfg"]
    v, t = dict(cfg.get("vision_cfg") or {}), dict(cfg.get("text_cfg") or {})
    wv, wt = f"{where}: vision_cfg", f"{where}: text_cfg"
    if v.get("timm_model_name"):
        raise OpenClipConfigError(f"{wv}.timm_model_name={v['timm_model_name']!r}: timm towers are not "
                                  "converted from open_clip; for SigLIP use the Hugging Face (--from hf) "
                                  "or big_vision (--from big_vision) weights")
    if t.get("hf_model_name"):
        raise OpenClipConfigError(f"{wt}.hf_model_name={t['hf_model_name']!r}: Hugging Face text "
                                  "towers are not converted from open_clip")
    if not isinstance(v.get("layers", 12), int):
        raise OpenClipConfigError(f"{wv}.layers={v['layers']!r}: ModifiedResNet towers are not supported")
    _fixed(v, _VISION_FIXED, wv)
    _fixed(t, _TEXT_FIXED, wt)
    image_size = v.get("image_size", 224)
    if isinstance(image_size, (list, tuple)):
        if len(set(image_size)) != 1:
            raise OpenClipConfigError(f"{wv}.image_size={image_size!r}: only square images")
        image_size = image_size[0]
    pool = v.get("pool_type", "tok")
    if pool != "tok":  # LayerNorm is per token, so final_ln_after_pool does not matter for 'tok'
        raise OpenClipConfigError(f"{wv}.pool_type={pool!r}: only 'tok' (class-token pooling)")
    width, head_width = int(v.get("width", 768)), int(v.get("head_width", 64))
    if width % head_width:
        raise OpenClipConfigError(f"{wv}: width {width} is not a multiple of head_width {head_width}")
    image = VitConfig(
        width=width, depth=int(v.get("layers", 12)), heads=width // head_width,
        mlp_dim=int(width * float(v.get("mlp_ratio", 4.0))), image_size=int(image_size),
        patch_size=int(v.get("patch_size", 16)), pool="cls", patch_bias=False,
        ln_pre=not v.get("no_ln_pre", False), cls_posemb=True, head_bias=False,
        act=_act(cfg, v, wv), ln_eps=_eps(v, wv))
    t_pool = t.get("pool_type", "argmax")
    if t_pool not in _TEXT_POOL:
        raise OpenClipConfigError(f"{wt}.pool_type={t_pool!r}: valid {sorted(_TEXT_POOL)}")
    vocab = int(t.get("vocab_size", 49408))
    if t_pool == "eos" and t.get("eos_id") is None:
        raise OpenClipConfigError(f"{wt}: pool_type 'eos' needs eos_id")
    t_width = int(t.get("width", 512))
    text = TextConfig(
        width=t_width, depth=int(t.get("layers", 12)), heads=int(t.get("heads", 8)),
        mlp_dim=int(t_width * float(t.get("mlp_ratio", 4.0))), vocab_size=vocab,
        context_length=int(t.get("context_length", 77)), causal=not t.get("no_causal_mask", False),
        pool=_TEXT_POOL[t_pool], eot_id=int(t.get("eos_id") if t.get("eos_id") is not None else vocab - 1),
        pad_id=int(t.get("pad_id", 0)), mask_pad=False, head_bias=bool(t.get("proj_bias", False)),
        act=_act(cfg, t, wt), ln_eps=_eps(t, wt))
    scale = float(cfg.get("init_logit_scale", math.log(1 / 0.07)))
    bias = cfg.get("init_logit_bias")
    try:
        return ModelConfig(image=image, text=text, embed_dim=int(cfg.get("embed_dim", 512)),
                           init_temperature=math.exp(-scale),
                           init_bias=None if bias is None else float(bias)).validate()
    except ValueError as e:
        raise OpenClipConfigError(f"{where}: {e}") from None


def read_json(path: str, what: str) -> dict:
    try:
        with fileio.open(path, encoding="utf-8") as f:
            return json.load(f)
    except ValueError as e:
        raise OpenClipConfigError(f"{path}: {what} is not valid JSON ({e})") from None


def preprocess_from_hub(cfg: Mapping[str, Any], image_size: int) -> Preprocess:
    """open_clip's `preprocess_cfg` (mean, std, interpolation, resize_mode) as a `Preprocess`."""
    p = dict(cfg.get("preprocess_cfg") or {})
    default = Preprocess(image_size=image_size)
    mode = p.get("resize_mode", "shortest")
    if mode not in ("shortest", "squash"):
        raise OpenClipConfigError(f"preprocess_cfg.resize_mode={mode!r}: mmfm has shortest, squash")
    return Preprocess(image_size=image_size, mean=tuple(p.get("mean", default.mean)),
                      std=tuple(p.get("std", default.std)),
                      interpolation=p.get("interpolation", default.interpolation), resize_mode=mode)


def hub_config_path(path: str) -> Optional[str]:
    """The open_clip_config.json of a hub-layout directory (or beside a weights file), if any."""
    base = path if fileio.isdir(path) else fileio.dirname(fileio.absolute(path))
    cand = fileio.join(base, HUB_CONFIG)
    return cand if fileio.isfile(cand) else None
