"""A weights source on disk -> (ModelConfig, canonical flat params, what the source says about its
preprocessing and tokenizer). The one place that decides which converter reads a path.

Sources: an mmfm export; a Hugging Face model directory (config.json + model.safetensors, with its
tokenizer and preprocessor_config.json files); open_clip's hub layout (open_clip_config.json +
open_clip_model.safetensors) or a bare open_clip state dict with an architecture; a big_vision npz.
"""
from __future__ import annotations

import json
from typing import Any, Optional

from mmfm import fileio
from mmfm.models.config import ModelConfig
from mmfm.zoo import pretrained
from mmfm.zoo.convert import openclip_config
from mmfm.zoo.pretrained import PICKLE_SUFFIXES, WeightsError, read_npz, read_safetensors, refuse_pickle
from mmfm.zoo.registry import INCEPTION_MEAN, INCEPTION_STD, Preprocess
from mmfm.zoo.source_tokenizer import TokenizerNotFound, find_tokenizer

CONVERTERS = ("mmfm", "hf", "openclip", "big_vision")
_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic"}  # PIL's enum values


def _read_json(path: str) -> dict:
    try:
        with fileio.open(path, encoding="utf-8") as f:
            return json.load(f)
    except ValueError as e:
        raise WeightsError(f"{path}: not valid JSON ({e})") from None


def detect_converter(path: str) -> str:
    """'mmfm' | 'hf' | 'openclip' | 'big_vision' for a file or directory."""
    if fileio.isdir(path):
        cfg_path = fileio.join(path, "config.json")
        cfg = _read_json(cfg_path) if fileio.isfile(cfg_path) else {}
        if cfg.get("format") == "mmfm-export":
            return "mmfm"
        if cfg.get("model_type") and fileio.isfile(fileio.join(path, "model.safetensors")):
            return "hf"
        names = fileio.listdir(path)
        if openclip_config.HUB_CONFIG in names:
            return "openclip"
        if cfg.get("model_type"):
            return "hf"  # an HF directory without its safetensors: convert_source says what is missing
        for n in names:
            if n.endswith(PICKLE_SUFFIXES):
                refuse_pickle(fileio.join(path, n))
        if any(n.endswith(".npz") for n in names):
            return "big_vision"
        if any(n.endswith(".safetensors") for n in names):
            return "openclip"
        raise WeightsError(f"{path}: no mmfm export (config.json with format 'mmfm-export'), Hugging "
                           "Face model (config.json + model.safetensors), open_clip hub layout "
                           f"({openclip_config.HUB_CONFIG}), .npz or .safetensors found")
    refuse_pickle(path)
    if path.endswith(".npz"):
        return "big_vision"
    if path.endswith(".safetensors"):
        return "openclip"
    raise WeightsError(f"{path}: unknown weights format; mmfm reads .safetensors and .npz only")


def _single(path: str, suffix: str, preferred: Optional[str] = None) -> str:
    if fileio.isfile(path):
        return path
    if preferred and fileio.isfile(fileio.join(path, preferred)):
        return fileio.join(path, preferred)
    found = sorted(n for n in fileio.listdir(path) if n.endswith(suffix))
    if len(found) != 1:
        for n in fileio.listdir(path):
            if n.endswith(PICKLE_SUFFIXES):
                refuse_pickle(fileio.join(path, n))
        raise WeightsError(f"{path}: expected one {suffix} file, found {found}")
    return fileio.join(path, found[0])


def hf_preprocess(base_dir: str, cfg: ModelConfig) -> Preprocess:
    """The image preprocessing of a Hugging Face directory (preprocessor_config.json), else the
    family's default (CLIP: OpenAI mean/std, resize + centre crop; SigLIP: 0.5, squash)."""
    default = default_preprocess(cfg)
    path = fileio.join(base_dir, "preprocessor_config.json")
    if not fileio.isfile(path):
        return default
    p = _read_json(path)
    if "max_num_patches" in p:  # Siglip2ImageProcessor (NaFlex): aspect ratio kept, patch budget
        return Preprocess(image_size=cfg.image.image_size, mean=tuple(p.get("image_mean", default.mean)),
                          std=tuple(p.get("image_std", default.std)),
                          interpolation=_RESAMPLE.get(p.get("resample"), "bilinear"), resize_mode="squash",
                          max_num_patches=int(p["max_num_patches"]),
                          patch_size=int(p.get("patch_size", cfg.image.patch_size)))
    size = p.get("crop_size") if p.get("do_center_crop") else p.get("size")
    if isinstance(size, dict):
        size = size.get("height") or size.get("shortest_edge")
    mode = "shortest" if p.get("do_center_crop") or "shortest_edge" in (p.get("size") or {}) else "squash"
    return Preprocess(image_size=int(size or cfg.image.image_size),
                      mean=tuple(p.get("image_mean", default.mean)), std=tuple(p.get("image_std", default.std)),
                      interpolation=_RESAMPLE.get(p.get("resample"), default.interpolation), resize_mode=mode)


def default_preprocess(cfg: ModelConfig) -> Preprocess:
    """CLIP's preprocessing, or SigLIP's for MAP-pooled towers (NaFlex: its grid as the budget)."""
    if cfg.image.naflex:
        return Preprocess(cfg.image.image_size, INCEPTION_MEAN, INCEPTION_STD, "bilinear", "squash",
                          max_num_patches=cfg.image.num_patches, patch_size=cfg.image.patch_size)
    if cfg.image.pool == "map":
        return Preprocess(cfg.image.image_size, INCEPTION_MEAN, INCEPTION_STD, "bicubic", "squash")
    return Preprocess(image_size=cfg.image.image_size)


def _tokenizer_info(base_dir: str, cfg: ModelConfig, family: str, explicit: Optional[str],
                    hint: str = "") -> dict:
    try:
        spec, files = find_tokenizer(base_dir, cfg, family, explicit=explicit, hint=hint)
    except TokenizerNotFound as e:
        return {"tokenizer_error": str(e)}
    return {"tokenizer": spec, "tokenizer_files": files}


def _openclip(path: str, cfg: Optional[ModelConfig], arch: Optional[str], tokenizer: Optional[str]):
    from mmfm.zoo.convert import openclip

    weights = _single(path, ".safetensors", preferred=openclip_config.HUB_WEIGHTS)
    sd = read_safetensors(weights)  # a truncated or pickled file is reported before anything else
    hub_path = openclip_config.hub_config_path(path)
    hub = openclip_config.read_json(hub_path, "open_clip_config.json") if hub_path else None
    if cfg is None:
        if hub is None:
            raise WeightsError(f"{weights}: a bare open_clip state dict; {openclip.NEEDS_CONFIG}")
        cfg, arch = openclip_config.model_config_from_openclip(hub, where=hub_path), hub_path
    model_cfg, flat = openclip.convert(sd, cfg, arch or "the architecture")
    base = fileio.dirname(fileio.absolute(weights))
    pre = (openclip_config.preprocess_from_hub(hub, model_cfg.image.image_size) if hub
           else default_preprocess(model_cfg))
    hf_tok = ((hub or {}).get("model_cfg", {}).get("text_cfg") or {}).get("hf_tokenizer_name")
    hint = f" (its {openclip_config.HUB_CONFIG} names the hub tokenizer {hf_tok!r})" if hf_tok else ""
    return model_cfg, flat, {"preprocess": pre, **_tokenizer_info(base, model_cfg, "openclip", tokenizer, hint)}


def convert_source(path: str, converter: Optional[str] = None, cfg: Optional[ModelConfig] = None, *,
                   arch: Optional[str] = None, tokenizer: Optional[str] = None
                   ) -> tuple[ModelConfig, dict, dict[str, Any]]:
    """(ModelConfig, canonical flat params, info) from a source file or directory.

    `cfg` (named `arch` in errors) is the architecture for sources that do not define one (bare
    open_clip state dicts; big_vision npz files get it checked). info: 'preprocess', and either
    'tokenizer' + 'tokenizer_files' or 'tokenizer_error' (the message naming the places searched);
    `tokenizer` is a tokenizer file chosen by the user.
    """
    from mmfm.zoo.convert import big_vision, hf

    if not fileio.exists(path):
        raise FileNotFoundError(f"{path}: path not found")
    converter = converter or detect_converter(path)
    if converter not in CONVERTERS:
        raise ValueError(f"unknown converter {converter!r}; valid: {', '.join(CONVERTERS)}")
    if converter == "mmfm":
        return pretrained.load_export(path)
    if converter == "openclip":
        return _openclip(path, cfg, arch, tokenizer)
    if converter == "hf":
        if not fileio.isdir(path):
            raise WeightsError(f"{path}: a Hugging Face model is a directory with config.json and "
                               "model.safetensors")
        cfg_path = fileio.join(path, "config.json")
        if not fileio.isfile(cfg_path):
            raise WeightsError(f"{path}: config.json not found (a Hugging Face model directory has "
                               "config.json beside model.safetensors)")
        config = _read_json(cfg_path)
        st = fileio.join(path, "model.safetensors")
        if not fileio.isfile(st):
            if fileio.isfile(fileio.join(path, "pytorch_model.bin")):
                refuse_pickle(fileio.join(path, "pytorch_model.bin"))
            raise WeightsError(f"{path}: model.safetensors not found (sharded checkpoints are not "
                               "supported yet)")
        model_cfg, flat = hf.convert(read_safetensors(st), config, cfg, arch=arch, where=cfg_path)
        family = "siglip" if config.get("model_type") in ("siglip", "siglip2") else "clip"
        return model_cfg, flat, {"hf_config": config, "preprocess": hf_preprocess(path, model_cfg),
                                 **_tokenizer_info(path, model_cfg, family, tokenizer)}
    weights = _single(path, ".npz")
    model_cfg, flat = big_vision.convert(read_npz(weights), cfg)
    base = fileio.dirname(fileio.absolute(weights))
    return model_cfg, flat, {"preprocess": default_preprocess(model_cfg),
                             **_tokenizer_info(base, model_cfg, "siglip", tokenizer)}
