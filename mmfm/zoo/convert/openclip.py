"""open_clip CLIP state dict (safetensors) -> mmfm params.

Covers open_clip's native `CLIP` (VisionTransformer + text Transformer, as in ViT-B-32/B-16/L-14
and OpenAI's weights): conv1 without bias, class token whose position row is the first of
`positional_embedding`, ln_pre, resblocks with packed `in_proj`, ln_post on every token then the
cls token, `proj`; the text tower pooled as its config says (argmax for CLIP), `ln_final`,
`text_projection` (a [width, embed] matrix, so no transpose).

The state dict alone does not say how many heads the towers have or which activation they use, so
`convert` needs the architecture: a registry name, an open_clip model config, or the
`open_clip_config.json` of open_clip's hub layout (see openclip_config.py). Every tensor's shape is
checked against that architecture before anything is reshaped.
Timm-tower models (open_clip's SigLIP configs, keys `visual.trunk.*`) are not handled here: use the
Hugging Face or big_vision SigLIP weights.
"""
from __future__ import annotations

import dataclasses
from typing import Mapping

import numpy as np

from mmfm.models.config import ModelConfig
from mmfm.zoo.convert import common

NEEDS_CONFIG = ("the weights do not record head counts, activation or LayerNorm eps: pass "
                "--arch NAME (`mmfm zoo` lists them) or --model_config FILE (an open_clip model "
                "config JSON), or keep open_clip's hub layout (open_clip_config.json beside "
                "open_clip_model.safetensors)")


def is_openclip(keys) -> bool:
    keys = set(keys)
    return "visual.conv1.weight" in keys and "token_embedding.weight" in keys


def check_is_openclip(sd: Mapping[str, np.ndarray]) -> None:
    if any(k.startswith("visual.trunk.") for k in sd):
        raise common.SourceError("open_clip timm-tower checkpoint (visual.trunk.*) is not supported; "
                                 "for SigLIP use the Hugging Face (--from hf) or big_vision "
                                 "(--from big_vision) weights")
    if not is_openclip(sd):
        raise common.SourceError("not an open_clip CLIP state dict: expected 'visual.conv1.weight' and "
                                 f"'token_embedding.weight', got keys like {sorted(sd)[:5]}")


def _block_shapes(prefix: str, depth: int, width: int, mlp: int) -> dict:
    out = {}
    for i in range(depth):
        s = f"{prefix}.{i}"
        for ln in ("ln_1", "ln_2"):
            out[f"{s}.{ln}.weight"] = out[f"{s}.{ln}.bias"] = (width,)
        out[f"{s}.attn.in_proj_weight"], out[f"{s}.attn.in_proj_bias"] = (3 * width, width), (3 * width,)
        out[f"{s}.attn.out_proj.weight"], out[f"{s}.attn.out_proj.bias"] = (width, width), (width,)
        out[f"{s}.mlp.c_fc.weight"], out[f"{s}.mlp.c_fc.bias"] = (mlp, width), (mlp,)
        out[f"{s}.mlp.c_proj.weight"], out[f"{s}.mlp.c_proj.bias"] = (width, mlp), (width,)
    return out


def expected_shapes(cfg: ModelConfig, has_bias: bool) -> dict[str, tuple[int, ...]]:
    """Every tensor of an open_clip native CLIP state dict for `cfg`, with its shape."""
    im, tx = cfg.image, cfg.text
    w, p = im.width, im.patch_size
    out = {"visual.conv1.weight": (w, im.channels, p, p), "visual.class_embedding": (w,),
           "visual.positional_embedding": (im.num_patches + 1, w)}
    if im.ln_pre:
        out["visual.ln_pre.weight"] = out["visual.ln_pre.bias"] = (w,)
    out.update(_block_shapes("visual.transformer.resblocks", im.depth, w, im.mlp_dim))
    out["visual.ln_post.weight"] = out["visual.ln_post.bias"] = (w,)
    out["visual.proj"] = (w, cfg.embed_dim)
    tw = tx.width
    out["token_embedding.weight"] = (tx.vocab_size, tw)
    out["positional_embedding"] = (tx.context_length, tw)
    out.update(_block_shapes("transformer.resblocks", tx.depth, tw, tx.mlp_dim))
    out["ln_final.weight"] = out["ln_final.bias"] = (tw,)
    if tx.head_bias:  # open_clip's proj_bias makes the projection an nn.Linear
        out["text_projection.weight"], out["text_projection.bias"] = (cfg.embed_dim, tw), (cfg.embed_dim,)
    else:
        out["text_projection"] = (tw, cfg.embed_dim)
    out["logit_scale"] = ()
    if has_bias:
        out["logit_bias"] = ()
    return out


def _blocks(src: common.Source, out: common.Flat, sprefix: str, dprefix: str, depth: int,
            heads: int) -> None:
    for i in range(depth):
        s, d = f"{sprefix}.{i}", f"{dprefix}/block_{i}"
        for a, b in (("ln_1", "ln1"), ("ln_2", "ln2")):
            out[f"{d}/{b}/scale"] = src[f"{s}.{a}.weight"]
            out[f"{d}/{b}/bias"] = src[f"{s}.{a}.bias"]
        qkv = common.split_in_proj(src[f"{s}.attn.in_proj_weight"], src[f"{s}.attn.in_proj_bias"])
        common.torch_attention(out, f"{d}/attn", heads, o=src[f"{s}.attn.out_proj.weight"],
                               bo=src[f"{s}.attn.out_proj.bias"], **qkv)
        for a, b in (("c_fc", "fc1"), ("c_proj", "fc2")):
            out[f"{d}/mlp/{b}/kernel"] = common.linear(src[f"{s}.mlp.{a}.weight"])
            out[f"{d}/mlp/{b}/bias"] = src[f"{s}.mlp.{a}.bias"]


def convert(sd: Mapping[str, np.ndarray], cfg: ModelConfig, arch: str = "open_clip config"
            ) -> tuple[ModelConfig, common.Flat]:
    """(config, canonical flat mmfm params) for the architecture `cfg` (named `arch` in errors)."""
    if cfg is None:
        raise common.SourceError(f"open_clip state dict: {NEEDS_CONFIG}")
    check_is_openclip(sd)
    has_bias = "logit_bias" in sd
    common.check_source_shapes(sd, expected_shapes(cfg, has_bias), arch, "open_clip state dict",
                               ignore=("attn_mask",))
    src = common.Source(sd, "open_clip state dict")
    out: common.Flat = {}
    out["img/embedding/kernel"] = common.conv_kernel(src["visual.conv1.weight"])
    out["img/cls"] = src["visual.class_embedding"].reshape(1, 1, -1)
    out["img/pos_embedding"] = src["visual.positional_embedding"][None]
    for a, b in (("ln_pre", "ln_pre"), ("ln_post", "ln_post")):
        if f"visual.{a}.weight" in src:
            out[f"img/{b}/scale"] = src[f"visual.{a}.weight"]
            out[f"img/{b}/bias"] = src[f"visual.{a}.bias"]
    _blocks(src, out, "visual.transformer.resblocks", "img/encoder", cfg.image.depth, cfg.image.heads)
    out["img/head/kernel"] = src["visual.proj"]
    out["txt/embedding/embedding"] = src["token_embedding.weight"]
    out["txt/pos_embedding"] = src["positional_embedding"][None]
    _blocks(src, out, "transformer.resblocks", "txt/encoder", cfg.text.depth, cfg.text.heads)
    out["txt/ln_final/scale"] = src["ln_final.weight"]
    out["txt/ln_final/bias"] = src["ln_final.bias"]
    if cfg.text.head_bias:
        out["txt/head/kernel"] = common.linear(src["text_projection.weight"])
        out["txt/head/bias"] = src["text_projection.bias"]
    else:
        out["txt/head/kernel"] = src["text_projection"]
    out["t"] = src["logit_scale"].reshape(1)
    if has_bias:
        out["b"] = src["logit_bias"].reshape(1)
        if cfg.init_bias is None:
            cfg = dataclasses.replace(cfg, init_bias=0.0)
    src.check_all_used(ignore=("attn_mask",))
    return cfg, out
