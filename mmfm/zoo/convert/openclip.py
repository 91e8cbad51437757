"""open_clip CLIP state dict (safetensors) -> mmfm params.

Covers open_clip's native `CLIP` (VisionTransformer + text Transformer, as in ViT-B-32/B-16/L-14
and OpenAI's weights): conv1 without bias, class token whose position row is the first of
`positional_embedding`, ln_pre, resblocks with packed `in_proj`, ln_post on every token then the
cls token, `proj`; the causal text tower pooled at argmax (EOT has the largest id), `ln_final`,
`text_projection` (a [width, embed] matrix, so no transpose). PyTorch LayerNorm eps is 1e-5.
Timm-tower models (open_clip's SigLIP configs, keys `visual.trunk.*`) are not handled here: use the
Hugging Face or big_vision SigLIP weights.
"""
from __future__ import annotations

import dataclasses
from typing import Mapping, Optional

import numpy as np

from mmfm.models.config import ModelConfig, TextConfig, VitConfig
from mmfm.zoo.convert import common

TORCH_LN_EPS = 1e-5


def is_openclip(keys) -> bool:
    keys = set(keys)
    return "visual.conv1.weight" in keys and "token_embedding.weight" in keys


def infer_config(sd: Mapping[str, np.ndarray], *, head_width: int = 64, act: str = "gelu") -> ModelConfig:
    """The ModelConfig implied by the tensor shapes (heads = width // head_width, as open_clip)."""
    if any(k.startswith("visual.trunk.") for k in sd):
        raise ValueError("open_clip timm-tower checkpoint (visual.trunk.*) is not supported; for "
                         "SigLIP use the Hugging Face (--from hf) or big_vision (--from big_vision) weights")
    if not is_openclip(sd):
        raise ValueError("not an open_clip CLIP state dict: expected 'visual.conv1.weight' and "
                         f"'token_embedding.weight', got keys like {sorted(sd)[:5]}")
    conv = np.shape(sd["visual.conv1.weight"])
    width, patch = conv[0], conv[2]
    grid = int(round((np.shape(sd["visual.positional_embedding"])[0] - 1) ** 0.5))
    v_layers = common.count_layers(sd, r"^visual\.transformer\.resblocks\.(\d+)\.")
    t_layers = common.count_layers(sd, r"^transformer\.resblocks\.(\d+)\.")
    t_width = np.shape(sd["token_embedding.weight"])[1]
    shared = dict(act=act, ln_eps=TORCH_LN_EPS)
    image = VitConfig(width=width, depth=v_layers, heads=max(1, width // head_width),
                      mlp_dim=np.shape(sd["visual.transformer.resblocks.0.mlp.c_fc.weight"])[0],
                      image_size=grid * patch, patch_size=patch, pool="cls", patch_bias=False,
                      ln_pre=True, cls_posemb=True, head_bias=False, **shared)
    vocab = np.shape(sd["token_embedding.weight"])[0]
    text = TextConfig(width=t_width, depth=t_layers, heads=max(1, t_width // head_width),
                      mlp_dim=np.shape(sd["transformer.resblocks.0.mlp.c_fc.weight"])[0],
                      vocab_size=vocab, context_length=np.shape(sd["positional_embedding"])[0],
                      causal=True, pool="argmax", mask_pad=False, head_bias=False, eot_id=vocab - 1,
                      pad_id=0, **shared)
    return ModelConfig(image=image, text=text, embed_dim=np.shape(sd["visual.proj"])[1]).validate()


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


def convert(sd: Mapping[str, np.ndarray], cfg: Optional[ModelConfig] = None, *,
            head_width: int = 64, act: str = "gelu") -> tuple[ModelConfig, common.Flat]:
    """(config, canonical flat mmfm params). `cfg` (e.g. a registry architecture) fixes heads and
    activation, which the weights alone do not tell; without it they are inferred (open_clip's
    rule heads = width // head_width, `act`)."""
    inferred = infer_config(sd, head_width=head_width, act=act)
    cfg = cfg or inferred
    src = common.Source(sd, "open_clip state dict")
    out: common.Flat = {}
    out["img/embedding/kernel"] = common.conv_kernel(src["visual.conv1.weight"])
    out["img/cls"] = src["visual.class_embedding"].reshape(1, 1, -1)
    out["img/pos_embedding"] = src["visual.positional_embedding"][None]
    for a, b in (("ln_pre", "ln_pre"), ("ln_post", "ln_post")):
        out[f"img/{b}/scale"] = src[f"visual.{a}.weight"]
        out[f"img/{b}/bias"] = src[f"visual.{a}.bias"]
    _blocks(src, out, "visual.transformer.resblocks", "img/encoder", inferred.image.depth, cfg.image.heads)
    out["img/head/kernel"] = src["visual.proj"]
    out["txt/embedding/embedding"] = src["token_embedding.weight"]
    out["txt/pos_embedding"] = src["positional_embedding"][None]
    _blocks(src, out, "transformer.resblocks", "txt/encoder", inferred.text.depth, cfg.text.heads)
    out["txt/ln_final/scale"] = src["ln_final.weight"]
    out["txt/ln_final/bias"] = src["ln_final.bias"]
    out["txt/head/kernel"] = src["text_projection"]
    out["t"] = src["logit_scale"].reshape(1)
    if "logit_bias" in src:
        out["b"] = src["logit_bias"].reshape(1)
        if cfg.init_bias is None:
            cfg = dataclasses.replace(cfg, init_bias=0.0)
    src.check_all_used(ignore=("attn_mask",))
    return cfg, out
