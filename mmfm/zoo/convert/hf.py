"""Hugging Face `CLIPModel` / `SiglipModel` / `Siglip2Model` (model.safetensors + config.json) ->
mmfm params.

CLIP: pre_layrnorm (sic, HF's name), class token + position table covering it, post_layernorm
(HF applies it to the pooled cls token only; LayerNorm is per token, so mmfm's ln_post on every
token then cls pooling is the same), `visual_projection` / `text_projection` without bias, text
pooled at the first `eos_token_id` (or argmax for legacy configs with eos_token_id == 2).
SigLIP: patch conv with bias, no class token, MAP head with a packed in_proj, no image projection,
bidirectional text tower pooled at the last position, `text_model.head` with bias, logit bias.
Siglip2 (NaFlex): SigLIP with a linear patch embedding on flattened (row, col, channel) patches
(the same numbers as the stride-P convolution's kernel) and a `num_patches` position grid that the
tower resizes to each image's patch grid (mmfm.models.naflex).
"""
from __future__ import annotations

from typing import Any, Mapping, Optional

import numpy as np

from mmfm.models.config import ModelConfig, TextConfig, VitConfig
from mmfm.zoo.convert import common

_ACTS = {"quick_gelu": "quick_gelu", "gelu": "gelu", "gelu_pytorch_tanh": "gelu_tanh",
         "gelu_new": "gelu_tanh", "gelu_fast": "gelu_tanh", "relu": "relu"}


def _act(name: str, where: str) -> str:
    if name not in _ACTS:
        raise ValueError(f"config.json {where}.hidden_act={name!r} is not supported; supported: "
                         f"{sorted(_ACTS)}")
    return _ACTS[name]


def _tower(c: Mapping[str, Any], where: str) -> dict:
    try:
        return dict(width=c["hidden_size"], depth=c["num_hidden_layers"], heads=c["num_attention_heads"],
                    mlp_dim=c["intermediate_size"], act=_act(c.get("hidden_act", "gelu"), where),
                    ln_eps=float(c.get("layer_norm_eps", 1e-5)))
    except KeyError as e:
        raise ValueError(f"config.json {where} lacks {e}") from None


def infer_config(config: Mapping[str, Any]) -> ModelConfig:
    kind = config.get("model_type")
    v, t = config.get("vision_config", {}), config.get("text_config", {})
    if kind == "clip":
        image = VitConfig(**_tower(v, "vision_config"), image_size=v.get("image_size", 224),
                          patch_size=v.get("patch_size", 32), pool="cls", patch_bias=False,
                          ln_pre=True, cls_posemb=True, head_bias=False)
        eos = int(t.get("eos_token_id", 2))
        text = TextConfig(**_tower(t, "text_config"), vocab_size=t.get("vocab_size", 49408),
                          context_length=t.get("max_position_embeddings", 77), causal=True,
                          pool="argmax" if eos == 2 else "eot", eot_id=eos,
                          pad_id=int(t.get("pad_token_id", 0) or 0), mask_pad=False, head_bias=False)
        return ModelConfig(image=image, text=text, embed_dim=config.get("projection_dim", 512)).validate()
    if kind in ("siglip", "siglip2"):
        if not v.get("vision_use_head", True):
            raise ValueError("config.json vision_config.vision_use_head=false is not supported "
                             "(mmfm's SigLIP tower pools with the MAP head)")
        patch = v.get("patch_size", 16)
        if kind == "siglip2":  # the learned grid is sqrt(num_patches) patches a side
            grid = int(round(v.get("num_patches", 256) ** 0.5))
            if grid * grid != v.get("num_patches", 256):
                raise ValueError(f"config.json vision_config.num_patches={v['num_patches']} is not a square")
            size, extra = grid * patch, dict(naflex=True)
        else:
            size, extra = v.get("image_size", 224), {}
        image = VitConfig(**_tower(v, "vision_config"), image_size=size, patch_size=patch, pool="map",
                          head=False, **extra)
        text = TextConfig(**_tower(t, "text_config"), vocab_size=t.get("vocab_size", 32000),
                          context_length=t.get("max_position_embeddings", 64), causal=False,
                          pool="last", mask_pad=False, head_bias=True,
                          pad_id=int(t.get("pad_token_id", 1) or 0), eot_id=1)
        proj = t.get("projection_size", text.width)
        if proj != image.width:
            raise ValueError(f"config.json text_config.projection_size {proj} != vision hidden_size "
                             f"{image.width}: mmfm's SigLIP needs them equal")
        return ModelConfig(image=image, text=text, embed_dim=image.width, init_bias=-10.0).validate()
    raise ValueError(f"config.json model_type={kind!r}: supported are 'clip' (CLIPModel), "
                     "'siglip' (SiglipModel) and 'siglip2' (Siglip2Model)")


def _layer_shapes(prefix: str, depth: int, width: int, mlp: int) -> dict:
    out = {}
    for i in range(depth):
        s = f"{prefix}.{i}"
        for ln in ("layer_norm1", "layer_norm2"):
            out[f"{s}.{ln}.weight"] = out[f"{s}.{ln}.bias"] = (width,)
        for n in ("q", "k", "v", "out"):
            out[f"{s}.self_attn.{n}_proj.weight"], out[f"{s}.self_attn.{n}_proj.bias"] = (width, width), (width,)
        out[f"{s}.mlp.fc1.weight"], out[f"{s}.mlp.fc1.bias"] = (mlp, width), (mlp,)
        out[f"{s}.mlp.fc2.weight"], out[f"{s}.mlp.fc2.bias"] = (width, mlp), (width,)
    return out


def expected_shapes(cfg: ModelConfig, model_type: str) -> dict[str, tuple[int, ...]]:
    """Every tensor of a Hugging Face CLIPModel / SiglipModel for `cfg`, with its shape."""
    im, tx, e = cfg.image, cfg.text, cfg.embed_dim
    w, tw, v, t = im.width, tx.width, "vision_model", "text_model"
    clip = model_type == "clip"
    patch = (w, im.channels, im.patch_size, im.patch_size)
    if model_type == "siglip2":  # nn.Linear on flattened patches
        patch = (w, im.patch_size * im.patch_size * im.channels)
    out = {f"{v}.embeddings.patch_embedding.weight": patch,
           f"{v}.embeddings.position_embedding.weight": (im.num_patches + clip, w)}
    if clip:
        out[f"{v}.embeddings.class_embedding"] = (w,)
        out[f"{v}.pre_layrnorm.weight"] = out[f"{v}.pre_layrnorm.bias"] = (w,)
    else:
        out[f"{v}.embeddings.patch_embedding.bias"] = (w,)
    out.update(_layer_shapes(f"{v}.encoder.layers", im.depth, w, im.mlp_dim))
    out[f"{v}.post_layernorm.weight"] = out[f"{v}.post_layernorm.bias"] = (w,)
    if not clip:
        h = f"{v}.head"
        out[f"{h}.probe"] = (1, 1, w)
        out[f"{h}.attention.in_proj_weight"], out[f"{h}.attention.in_proj_bias"] = (3 * w, w), (3 * w,)
        out[f"{h}.attention.out_proj.weight"], out[f"{h}.attention.out_proj.bias"] = (w, w), (w,)
        out[f"{h}.layernorm.weight"] = out[f"{h}.layernorm.bias"] = (w,)
        out[f"{h}.mlp.fc1.weight"], out[f"{h}.mlp.fc1.bias"] = (im.mlp_dim, w), (im.mlp_dim,)
        out[f"{h}.mlp.fc2.weight"], out[f"{h}.mlp.fc2.bias"] = (w, im.mlp_dim), (w,)
    out[f"{t}.embeddings.token_embedding.weight"] = (tx.vocab_size, tw)
    out[f"{t}.embeddings.position_embedding.weight"] = (tx.context_length, tw)
    out.update(_layer_shapes(f"{t}.encoder.layers", tx.depth, tw, tx.mlp_dim))
    out[f"{t}.final_layer_norm.weight"] = out[f"{t}.final_layer_norm.bias"] = (tw,)
    if clip:
        out["visual_projection.weight"], out["text_projection.weight"] = (e, w), (e, tw)
        out["logit_scale"] = ()
    else:
        out[f"{t}.head.weight"], out[f"{t}.head.bias"] = (e, tw), (e,)
        out["logit_scale"] = out["logit_bias"] = (1,)
    return out


_BUFFERS = ("text_model.embeddings.position_ids", "vision_model.embeddings.position_ids")


def _layers(src: common.Source, out: common.Flat, sprefix: str, dprefix: str, depth: int,
            heads: int) -> None:
    for i in range(depth):
        s, d = f"{sprefix}.{i}", f"{dprefix}/block_{i}"
        for a, b in (("layer_norm1", "ln1"), ("layer_norm2", "ln2")):
            out[f"{d}/{b}/scale"] = src[f"{s}.{a}.weight"]
            out[f"{d}/{b}/bias"] = src[f"{s}.{a}.bias"]
        w = {n: src[f"{s}.self_attn.{n}_proj.weight"] for n in ("q", "k", "v", "out")}
        b = {n: src[f"{s}.self_attn.{n}_proj.bias"] for n in ("q", "k", "v", "out")}
        common.torch_attention(out, f"{d}/attn", heads, q=w["q"], k=w["k"], v=w["v"], o=w["out"],
                               bq=b["q"], bk=b["k"], bv=b["v"], bo=b["out"])
        for n in ("fc1", "fc2"):
            out[f"{d}/mlp/{n}/kernel"] = common.linear(src[f"{s}.mlp.{n}.weight"])
            out[f"{d}/mlp/{n}/bias"] = src[f"{s}.mlp.{n}.bias"]


def _ln(src, out, s: str, d: str) -> None:
    out[f"{d}/scale"] = src[f"{s}.weight"]
    out[f"{d}/bias"] = src[f"{s}.bias"]


def convert(sd: Mapping[str, np.ndarray], config: Mapping[str, Any],
            cfg: Optional[ModelConfig] = None, *, arch: Optional[str] = None,
            where: str = "config.json") -> tuple[ModelConfig, common.Flat]:
    """(config, canonical flat mmfm params) from HF tensors and the parsed config.json (read from
    `where`). Every tensor's shape is checked against config.json, and against `cfg` (a registry
    architecture named `arch`) when given, before anything is reshaped."""
    own = infer_config(config)
    what = f"Hugging Face {config.get('model_type')} safetensors"
    common.check_source_shapes(sd, expected_shapes(own, config.get("model_type")), where, what,
                               ignore=_BUFFERS)
    if cfg is not None:
        common.check_source_shapes(sd, expected_shapes(cfg, config.get("model_type")),
                                   arch or "the architecture", what, ignore=_BUFFERS)
    cfg = cfg or own
    src = common.Source(sd, what)
    out: common.Flat = {}
    v, t = "vision_model", "text_model"
    if config.get("model_type") == "siglip2":  # [width, P*P*C] -> the conv's HWIO kernel
        p, c = cfg.image.patch_size, cfg.image.channels
        out["img/embedding/kernel"] = np.ascontiguousarray(
            src[f"{v}.embeddings.patch_embedding.weight"].T.reshape(p, p, c, cfg.image.width))
    else:
        out["img/embedding/kernel"] = common.conv_kernel(src[f"{v}.embeddings.patch_embedding.weight"])
    out["img/pos_embedding"] = src[f"{v}.embeddings.position_embedding.weight"][None]
    _layers(src, out, f"{v}.encoder.layers", "img/encoder", cfg.image.depth, cfg.image.heads)
    _ln(src, out, f"{v}.post_layernorm", "img/ln_post")
    out["txt/embedding/embedding"] = src[f"{t}.embeddings.token_embedding.weight"]
    out["txt/pos_embedding"] = src[f"{t}.embeddings.position_embedding.weight"][None]
    _layers(src, out, f"{t}.encoder.layers", "txt/encoder", cfg.text.depth, cfg.text.heads)
    _ln(src, out, f"{t}.final_layer_norm", "txt/ln_final")
    out["t"] = src["logit_scale"].reshape(1)
    if config.get("model_type") == "clip":
        out["img/cls"] = src[f"{v}.embeddings.class_embedding"].reshape(1, 1, -1)
        _ln(src, out, f"{v}.pre_layrnorm", "img/ln_pre")
        out["img/head/kernel"] = common.linear(src["visual_projection.weight"])
        out["txt/head/kernel"] = common.linear(src["text_projection.weight"])
    else:
        out["img/embedding/bias"] = src[f"{v}.embeddings.patch_embedding.bias"]
        h = f"{v}.head"
        out["img/map_head/probe"] = src[f"{h}.probe"]
        qkv = common.split_in_proj(src[f"{h}.attention.in_proj_weight"], src[f"{h}.attention.in_proj_bias"])
        common.torch_attention(out, "img/map_head/attn", cfg.image.heads,
                               o=src[f"{h}.attention.out_proj.weight"],
                               bo=src[f"{h}.attention.out_proj.bias"], **qkv)
        _ln(src, out, f"{h}.layernorm", "img/map_head/ln")
        for n in ("fc1", "fc2"):
            out[f"img/map_head/mlp/{n}/kernel"] = common.linear(src[f"{h}.mlp.{n}.weight"])
            out[f"img/map_head/mlp/{n}/bias"] = src[f"{h}.mlp.{n}.bias"]
        out["txt/head/kernel"] = common.linear(src[f"{t}.head.weight"])
        out["txt/head/bias"] = src[f"{t}.head.bias"]
        out["b"] = src["logit_bias"].reshape(1)
    src.check_all_used(ignore=_BUFFERS)
    return cfg, out
