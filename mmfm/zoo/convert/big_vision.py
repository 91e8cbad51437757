"""big_vision SigLIP `.npz` (two_towers: ViT image tower + text transformer) -> mmfm params.

big_vision is Flax too, so the math and most layouts already match mmfm: kernels are [in, out],
attention q/k/v kernels [width, heads, head_dim], the patch conv HWIO. Only the names differ
(`Transformer/encoderblock_{i}/MultiHeadDotProductAttention_0/query/kernel` ->
`encoder/block_{i}/attn/query_kernel`, ...). Scanned checkpoints (one stacked `encoderblock`) are
split per layer. big_vision's GELU is flax's default tanh approximation; LayerNorm eps 1e-6.
"""
from __future__ import annotations


from typing import Mapping, Optional

import numpy as np

from mmfm.models.config import ModelConfig, TextConfig, VitConfig
from mmfm.zoo.convert import common

_BLOCK_PARTS = {
    "LayerNorm_0": "ln1", "LayerNorm_1": "ln2",
    "MlpBlock_0/Dense_0": "mlp/fc1", "MlpBlock_0/Dense_1": "mlp/fc2",
}


def normalize_keys(npz: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Drops the `params/` prefix and splits stacked (scanned) `encoderblock/` tensors per layer."""
    out = {}
    for key, value in npz.items():
        key = key[len("params/"):] if key.startswith("params/") else key
        if "/encoderblock/" in key:
            for i, v in enumerate(np.asarray(value)):
                out[key.replace("/encoderblock/", f"/encoderblock_{i}/")] = v
        else:
            out[key] = np.asarray(value)
    return out


def is_big_vision(keys) -> bool:
    keys = {k[len("params/"):] if k.startswith("params/") else k for k in keys}
    return "img/embedding/kernel" in keys and "txt/Embed_0/embedding" in keys


def infer_config(p: Mapping[str, np.ndarray]) -> ModelConfig:
    if not is_big_vision(p):
        raise common.SourceError("not a big_vision two-towers npz: expected 'params/img/embedding/kernel' and "
                         f"'params/txt/Embed_0/embedding', got keys like {sorted(p)[:5]}")
    kh, _, _, width = p["img/embedding/kernel"].shape
    n_pos = p["img/pos_embedding"].shape[1]
    grid = int(round(n_pos ** 0.5))
    if grid * grid != n_pos:
        raise common.SourceError(f"img/pos_embedding has {n_pos} rows: not a square grid (cls-token models "
                         "are not supported by this converter)")
    shared = dict(act="gelu_tanh", ln_eps=1e-6)
    blk = "img/Transformer/encoderblock_0"
    image = VitConfig(width=width, depth=common.count_layers(p, r"^img/Transformer/encoderblock_(\d+)/"),
                      heads=p[f"{blk}/MultiHeadDotProductAttention_0/query/kernel"].shape[1],
                      mlp_dim=p[f"{blk}/MlpBlock_0/Dense_0/kernel"].shape[1], image_size=grid * kh,
                      patch_size=kh, pool="map" if "img/MAPHead_0/probe" in p else "mean",
                      head="img/head/kernel" in p, **shared)
    tblk = "txt/Encoder_0/encoderblock_0"
    vocab, t_width = p["txt/Embed_0/embedding"].shape
    text = TextConfig(width=t_width, depth=common.count_layers(p, r"^txt/Encoder_0/encoderblock_(\d+)/"),
                      heads=p[f"{tblk}/MultiHeadDotProductAttention_0/query/kernel"].shape[1],
                      mlp_dim=p[f"{tblk}/MlpBlock_0/Dense_0/kernel"].shape[1], vocab_size=vocab,
                      context_length=p["txt/pos_embedding"].shape[1], causal=False, pool="last",
                      mask_pad=False, head_bias="txt/head/bias" in p, eot_id=1, pad_id=0, **shared)
    embed = p["txt/head/kernel"].shape[1]
    return ModelConfig(image=image, text=text, embed_dim=embed,
                       init_bias=-10.0 if "b" in p else None).validate()


def _block(src: common.Source, out: common.Flat, s: str, d: str) -> None:
    for a, b in _BLOCK_PARTS.items():
        for leaf in (("scale", "bias") if a.startswith("LayerNorm") else ("kernel", "bias")):
            out[f"{d}/{b}/{leaf}"] = src[f"{s}/{a}/{leaf}"]
    _attn(src, out, f"{s}/MultiHeadDotProductAttention_0", f"{d}/attn")


def _attn(src, out, s: str, d: str) -> None:
    for name in ("query", "key", "value", "out"):
        out[f"{d}/{name}_kernel"] = src[f"{s}/{name}/kernel"]
        out[f"{d}/{name}_bias"] = src[f"{s}/{name}/bias"]


def convert(npz: Mapping[str, np.ndarray], cfg: Optional[ModelConfig] = None
            ) -> tuple[ModelConfig, common.Flat]:
    """(config, canonical flat mmfm params) from the arrays of a big_vision npz."""
    p = normalize_keys(npz)
    cfg = cfg or infer_config(p)
    src = common.Source(p, "big_vision npz")
    out: common.Flat = {"img/embedding/kernel": src["img/embedding/kernel"],
                        "img/pos_embedding": src["img/pos_embedding"]}
    if "img/embedding/bias" in src:
        out["img/embedding/bias"] = src["img/embedding/bias"]
    for i in range(common.count_layers(p, r"^img/Transformer/encoderblock_(\d+)/")):
        _block(src, out, f"img/Transformer/encoderblock_{i}", f"img/encoder/block_{i}")
    for leaf in ("scale", "bias"):
        out[f"img/ln_post/{leaf}"] = src[f"img/Transformer/encoder_norm/{leaf}"]
        out[f"txt/ln_final/{leaf}"] = src[f"txt/Encoder_0/encoder_norm/{leaf}"]
    if "img/MAPHead_0/probe" in src:
        m = "img/MAPHead_0"
        out["img/map_head/probe"] = src[f"{m}/probe"]
        _attn(src, out, f"{m}/MultiHeadDotProductAttention_0", "img/map_head/attn")
        for leaf in ("scale", "bias"):
            out[f"img/map_head/ln/{leaf}"] = src[f"{m}/LayerNorm_0/{leaf}"]
        for i, n in ((0, "fc1"), (1, "fc2")):
            for leaf in ("kernel", "bias"):
                out[f"img/map_head/mlp/{n}/{leaf}"] = src[f"{m}/MlpBlock_0/Dense_{i}/{leaf}"]
    for tower in ("img", "txt"):
        for leaf in ("kernel", "bias"):
            if f"{tower}/head/{leaf}" in src:
                out[f"{tower}/head/{leaf}"] = src[f"{tower}/head/{leaf}"]
    out["txt/embedding/embedding"] = src["txt/Embed_0/embedding"]
    out["txt/pos_embedding"] = src["txt/pos_embedding"]
    for i in range(common.count_layers(p, r"^txt/Encoder_0/encoderblock_(\d+)/")):
        _block(src, out, f"txt/Encoder_0/encoderblock_{i}", f"txt/encoder/block_{i}")
    out["t"] = src["t"].reshape(1)
    if "b" in src:
        out["b"] = src["b"].reshape(1)
    src.check_all_used()
    return cfg, out


