"""Architectures (typed configs with open_clip's names) and pretrained tags.

An architecture is a function returning a `ModelConfig`; a pretrained tag (`PretrainedTag`) records
where a public release lives (source names), how to convert it, and the preprocessing and tokenizer
that travel with it. `list_models()` / `list_pretrained()` mirror open_clip.

Parameter counts equal open_clip's exactly (asserted for every name by tests/zoo/test_zoo_registry.py,
e.g. ViT-B-32 151,277,313; ViT-B-16-SigLIP 203,155,970; ViT-SO400M-14-SigLIP2 1,135,463,602).
SigLIP 2 at fixed resolution is SigLIP's architecture with Gemma's 256k-id vocabulary.
"""
from __future__ import annotations

import dataclasses
import difflib
from typing import Callable, Optional

from mmfm import fileio
from mmfm.data.preprocess import (INCEPTION_MEAN, INCEPTION_STD, OPENAI_MEAN,  # noqa: F401
                                  OPENAI_STD, Preprocess)
from mmfm.models.config import ModelConfig, text_config, vit_config


# PyTorch LayerNorm default; CLIP towers converted from torch use it. SigLIP (JAX-born) uses 1e-6.
TORCH_LN_EPS = 1e-5


def _clip(image_variant: str, text_size: str, embed_dim: int, *, image_size: int = 224,
          text_heads: Optional[int] = None, act: str = "gelu") -> ModelConfig:
    """open_clip's native CLIP: cls token, pre-LN, causal text tower pooled at EOT (argmax)."""
    common = dict(act=act, ln_eps=TORCH_LN_EPS)
    text_kw = dict(vocab_size=49408, context_length=77, pool="argmax", causal=True, mask_pad=False,
                   head_bias=False, **common)
    if text_heads is not None:
        text_kw["heads"] = text_heads
    return ModelConfig(
        image=vit_config(image_variant, image_size=image_size, patch_bias=False, ln_pre=True,
                         cls_posemb=True, head_bias=False, pool="cls", **common),
        text=text_config(text_size, **text_kw), embed_dim=embed_dim, init_temperature=0.07)


def _siglip(image_variant: str, text_size: str, *, image_size: int = 224, vocab_size: int = 32000,
            context_length: int = 64) -> ModelConfig:
    """SigLIP: no cls token, MAP pooling, no image projection, bidirectional text pooled last.
    The text head projects to the image width (giant-opt's 1152-wide text to 1536)."""
    common = dict(act="gelu_tanh", ln_eps=1e-6)
    image = vit_config(image_variant, image_size=image_size, pool="map", head=False, **common)
    return ModelConfig(
        image=image,
        text=text_config(text_size, vocab_size=vocab_size, context_length=context_length,
                         causal=False, mask_pad=False, pool="last", head_bias=True, **common),
        embed_dim=image.width, init_temperature=0.1, init_bias=-10.0)


def _mmfm(variant: str, image_size: int = 224) -> ModelConfig:
    """mmfm's own defaults (as experiments/configs/common.py): eot pooling, 1e-6 LN, GELU."""
    size = variant.split("/")[0]
    image = vit_config(variant, image_size=image_size, pool="cls")
    return ModelConfig(image=image, text=text_config(size, vocab_size=32000, context_length=64,
                                                     causal=True, pool="eot"),
                       embed_dim=image.width)


GEMMA_VOCAB = 256_000  # SigLIP 2's multilingual Gemma SentencePiece vocabulary
# SigLIP 2 at fixed resolution, with open_clip's names: (name, image variant, text size, pixels).
_SIGLIP2 = [
    *[(f"ViT-B-16-SigLIP2{sfx}", "B/16", "B", px) for sfx, px in
      (("", 224), ("-256", 256), ("-384", 384), ("-512", 512))],
    ("ViT-B-32-SigLIP2-256", "B/32", "B", 256),
    *[(f"ViT-L-16-SigLIP2-{px}", "L/16", "L", px) for px in (256, 384, 512)],
    ("ViT-SO400M-14-SigLIP2", "So400m/14", "So400m", 224),
    ("ViT-SO400M-14-SigLIP2-378", "So400m/14", "So400m", 378),
    *[(f"ViT-SO400M-16-SigLIP2-{px}", "So400m/16", "So400m", px) for px in (256, 384, 512)],
    *[(f"ViT-gopt-16-SigLIP2-{px}", "gopt/16", "So400m", px) for px in (256, 384)],
]

ARCHITECTURES: dict[str, Callable[[], ModelConfig]] = {
    "ViT-B-32": lambda: _clip("B/32", "M", 512, text_heads=8),
    "ViT-B-32-quickgelu": lambda: _clip("B/32", "M", 512, text_heads=8, act="quick_gelu"),
    "ViT-B-16": lambda: _clip("B/16", "M", 512, text_heads=8),
    "ViT-B-16-quickgelu": lambda: _clip("B/16", "M", 512, text_heads=8, act="quick_gelu"),
    "ViT-L-14": lambda: _clip("L/14", "B", 768),
    "ViT-L-14-quickgelu": lambda: _clip("L/14", "B", 768, act="quick_gelu"),
    "ViT-L-14-336": lambda: _clip("L/14", "B", 768, image_size=336),
    "ViT-B-16-SigLIP": lambda: _siglip("B/16", "B"),
    "ViT-B-16-SigLIP-256": lambda: _siglip("B/16", "B", image_size=256),
    "ViT-B-16-SigLIP-384": lambda: _siglip("B/16", "B", image_size=384),
    "ViT-SO400M-14-SigLIP": lambda: _siglip("So400m/14", "So400m", context_length=16),
    "ViT-SO400M-14-SigLIP-384": lambda: _siglip("So400m/14", "So400m", image_size=384,
                                                context_length=64),
    **{name: (lambda v=v, t=t, s=s: _siglip(v, t, image_size=s, vocab_size=GEMMA_VOCAB))
       for name, v, t, s in _SIGLIP2},
    # NaFlex: a 16 x 16 learned grid, resized to each image's own patch grid
    **{name: (lambda v=v, t=t: apply_overrides(_siglip(v, t, image_size=256, vocab_size=GEMMA_VOCAB),
                                               {"image.naflex": True}))
       for name, v, t in (("ViT-B-16-SigLIP2-naflex", "B/16", "B"),
                          ("ViT-SO400M-16-SigLIP2-naflex", "So400m/16", "So400m"))},
    "mmfm-mu-8": lambda: _mmfm("mu/8", image_size=32),
    "mmfm-S-16": lambda: _mmfm("S/16"),
    "mmfm-B-16": lambda: _mmfm("B/16"),
}


def add_model_config(path: str, name: Optional[str] = None) -> list[str]:
    """Registers open_clip model config JSON files as architectures (as `open_clip.add_model_config`):
    a file (named by its stem, or `name`) or every *.json in a directory. Returns the names."""
    import os

    from mmfm.zoo.convert.openclip_config import model_config_from_openclip, read_json

    if fileio.isdir(path):
        files = sorted([fileio.join(path, n) for n in fileio.listdir(path) if n.endswith(".json")])
    elif fileio.isfile(path):
        files = [path]
    else:
        raise FileNotFoundError(f"open_clip model config not found: {path}")
    names = []
    for file in files:
        raw = read_json(file, "an open_clip model config")
        model_config_from_openclip(raw, where=file)  # refuse now, not at first use
        arch = name if name and len(files) == 1 else os.path.splitext(fileio.basename(file))[0]
        ARCHITECTURES[arch] = lambda raw=raw, file=file: model_config_from_openclip(raw, where=file)
        names.append(arch)
    return names


def _unknown(kind: str, name: str, valid) -> ValueError:
    valid = sorted(valid)
    close = difflib.get_close_matches(name, valid, n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    return ValueError(f"unknown {kind} {name!r}.{hint} Valid: {', '.join(valid)}")


def list_models() -> list[str]:
    """Registered architecture names (open_clip naming plus mmfm's own sizes)."""
    return sorted(ARCHITECTURES)


def get_model_config(name: str, **overrides) -> ModelConfig:
    """The `ModelConfig` of architecture `name`; `overrides` replace top-level or tower fields.

    `overrides` keys: ModelConfig fields, or `image.<field>` / `text.<field>`, or tower-shared
    fields (`dtype`, `param_dtype`, `scan`, `remat`, `attn_impl`, `act`, `ln_eps`) applied to both.
    """
    if name not in ARCHITECTURES:
        raise _unknown("architecture", name, ARCHITECTURES)
    return apply_overrides(ARCHITECTURES[name](), overrides)


_SHARED = ("dtype", "param_dtype", "scan", "remat", "attn_impl", "act", "ln_eps")


def apply_overrides(cfg: ModelConfig, overrides: Optional[dict]) -> ModelConfig:
    """One overrides dict for every config change (no growing set of force_* flags)."""
    image, text, top = {}, {}, {}
    for key, value in (overrides or {}).items():
        if key.startswith("image."):
            image[key[6:]] = value
        elif key.startswith("text."):
            text[key[5:]] = value
        elif key in _SHARED:
            image[key] = text[key] = value
        else:
            top[key] = value
    for prefix, kw, obj in (("image", image, cfg.image), ("text", text, cfg.text), ("", top, cfg)):
        valid = {f.name for f in dataclasses.fields(obj)}
        bad = sorted(set(kw) - valid)
        if bad:
            raise ValueError(f"unknown override key(s) {[f'{prefix}.{b}' if prefix else b for b in bad]}; "
                             f"valid {prefix or 'top-level'} keys: {sorted(valid)} "
                             f"(or shared: {list(_SHARED)})")
    cfg = dataclasses.replace(cfg, image=dataclasses.replace(cfg.image, **image),
                              text=dataclasses.replace(cfg.text, **text), **top)
    return cfg.validate()


CLIP_VOCAB_FILE = "vocab.json"  # a CLIP BPE's ids, beside its merges.txt (Hugging Face's names)


@dataclasses.dataclass(frozen=True)
class TokenizerSpec:
    """Which tokenizer a model uses. kind: clip_bpe, sentencepiece, siglip, hf."""
    kind: str = "clip_bpe"
    # The file name inside the source or export: sentencepiece / siglip: the .model file; hf: the
    # tokenizer.json; clip_bpe: None for the shipped BPE, else merges.txt (with vocab.json beside).
    file: Optional[str] = None
    context_length: int = 77
    lowercase: bool = True
    pad_id: Optional[int] = None  # None: the tokenizer's own

    def files(self) -> tuple[str, ...]:
        """Every file this tokenizer reads (what an export must carry)."""
        if self.file is None:
            return ()
        return (self.file, CLIP_VOCAB_FILE) if self.kind == "clip_bpe" else (self.file,)


@dataclasses.dataclass(frozen=True)
class PretrainedTag:
    """A known public release: where it lives, how to convert it, how to feed it."""
    arch: str
    tag: str
    converter: str  # openclip | hf | big_vision | mmfm
    source: str  # the release's public name (hub repo id or bucket path)
    files: tuple[str, ...]  # file names inside `source` that the converter reads
    url_base: Optional[str] = None  # URL prefix the files are fetched from when not cached
    sha256: dict = dataclasses.field(default_factory=dict)  # file -> sha256 (verified when given)
    preprocess: Preprocess = Preprocess()
    tokenizer: TokenizerSpec = TokenizerSpec()
    overrides: dict = dataclasses.field(default_factory=dict)  # config changes (e.g. quick_gelu)


_HF = "https://huggingface.co/{}/resolve/main/"
_CLIP_TOK = TokenizerSpec("clip_bpe", None, 77, True)
_SIGLIP_PRE = Preprocess(224, INCEPTION_MEAN, INCEPTION_STD, "bicubic", "squash")


def _hf_clip(arch: str, tag: str, repo: str, **kw) -> PretrainedTag:
    return PretrainedTag(arch, tag, "hf", repo, ("model.safetensors", "config.json"),
                         _HF.format(repo), tokenizer=_CLIP_TOK, **kw)


def _openclip(arch: str, tag: str, repo: str, **kw) -> PretrainedTag:
    return PretrainedTag(arch, tag, "openclip", repo, ("open_clip_model.safetensors",),
                         _HF.format(repo), tokenizer=_CLIP_TOK, **kw)


def _hf_siglip(arch: str, tag: str, repo: str, size: int, ctx: int) -> PretrainedTag:
    return PretrainedTag(arch, tag, "hf", repo, ("model.safetensors", "config.json", "spiece.model"),
                         _HF.format(repo), preprocess=dataclasses.replace(_SIGLIP_PRE, image_size=size),
                         tokenizer=TokenizerSpec("siglip", "spiece.model", ctx, True, pad_id=1))


_HF_SIGLIP2_FILES = ("model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json",
                     "preprocessor_config.json")


def _hf_siglip2(arch: str, repo: str, size: int) -> PretrainedTag:
    """SigLIP 2 (fixed resolution) from Hugging Face: a SiglipModel with Gemma's tokenizer.json.
    The preprocessing and tokenizer actually used are read from the downloaded files; these
    values document them."""
    return PretrainedTag(arch, "webli", "hf", repo, _HF_SIGLIP2_FILES, _HF.format(repo),
                         preprocess=dataclasses.replace(_SIGLIP_PRE, image_size=size, interpolation="bilinear"),
                         tokenizer=TokenizerSpec("hf", "tokenizer.json", 64, True, pad_id=0))


def _bv_siglip(arch: str, tag: str, npz: str, size: int, ctx: int) -> PretrainedTag:
    return PretrainedTag(arch, tag, "big_vision", "gs://big_vision/siglip/" + npz, (npz,), None,
                         preprocess=dataclasses.replace(_SIGLIP_PRE, image_size=size),
                         tokenizer=TokenizerSpec("siglip", "spiece.model", ctx, True, pad_id=1))


_QUICK = {"act": "quick_gelu"}
# sha256 values are left empty where we have not verified them ourselves: pass the file's sha256
# to `create_model(..., sha256=...)` (or rely on the hub's transport integrity) until filled in.
PRETRAINED: dict[tuple[str, str], PretrainedTag] = {(t.arch, t.tag): t for t in (
    _openclip("ViT-B-32", "openai", "timm/vit_base_patch32_clip_224.openai", overrides=_QUICK),
    _openclip("ViT-B-32", "laion2b_s34b_b79k", "laion/CLIP-ViT-B-32-laion2B-s34B-b79K"),
    _openclip("ViT-B-16", "openai", "timm/vit_base_patch16_clip_224.openai", overrides=_QUICK),
    _openclip("ViT-B-16", "laion2b_s34b_b88k", "laion/CLIP-ViT-B-16-laion2B-s34B-b88K"),
    _openclip("ViT-L-14", "openai", "timm/vit_large_patch14_clip_224.openai", overrides=_QUICK),
    _openclip("ViT-L-14", "laion2b_s32b_b82k", "laion/CLIP-ViT-L-14-laion2B-s32B-b82K"),
    _hf_clip("ViT-B-32", "hf-openai", "openai/clip-vit-base-patch32", overrides=_QUICK),
    _hf_clip("ViT-B-16", "hf-openai", "openai/clip-vit-base-patch16", overrides=_QUICK),
    _hf_clip("ViT-L-14", "hf-openai", "openai/clip-vit-large-patch14", overrides=_QUICK),
    _hf_siglip("ViT-B-16-SigLIP", "webli", "google/siglip-base-patch16-224", 224, 64),
    _hf_siglip("ViT-SO400M-14-SigLIP", "webli", "google/siglip-so400m-patch14-224", 224, 16),
    _bv_siglip("ViT-B-16-SigLIP", "bv-webli", "webli_en_b16_224_63724782.npz", 224, 64),
    _bv_siglip("ViT-SO400M-14-SigLIP", "bv-webli", "webli_en_so400m_224_57633886.npz", 224, 16),
    *(_hf_siglip2(arch, f"google/siglip2-{repo}", size) for arch, repo, size in (
        ("ViT-B-16-SigLIP2", "base-patch16-224", 224), ("ViT-B-16-SigLIP2-256", "base-patch16-256", 256),
        ("ViT-B-16-SigLIP2-384", "base-patch16-384", 384), ("ViT-B-16-SigLIP2-512", "base-patch16-512", 512),
        ("ViT-B-32-SigLIP2-256", "base-patch32-256", 256),
        ("ViT-L-16-SigLIP2-256", "large-patch16-256", 256), ("ViT-L-16-SigLIP2-384", "large-patch16-384", 384),
        ("ViT-L-16-SigLIP2-512", "large-patch16-512", 512),
        ("ViT-SO400M-14-SigLIP2", "so400m-patch14-224", 224),
        ("ViT-SO400M-16-SigLIP2-256", "so400m-patch16-256", 256),
        ("ViT-SO400M-16-SigLIP2-384", "so400m-patch16-384", 384),
        ("ViT-SO400M-16-SigLIP2-512", "so400m-patch16-512", 512),
        ("ViT-gopt-16-SigLIP2-256", "giant-opt-patch16-256", 256),
        ("ViT-gopt-16-SigLIP2-384", "giant-opt-patch16-384", 384),
        ("ViT-B-16-SigLIP2-naflex", "base-patch16-naflex", 256),
        ("ViT-SO400M-16-SigLIP2-naflex", "so400m-patch16-naflex", 256))),
)}


def list_pretrained() -> list[tuple[str, str]]:
    """(architecture, tag) pairs of known public releases."""
    return sorted(PRETRAINED)


def get_pretrained_tag(arch: str, tag: str) -> PretrainedTag:
    if arch not in ARCHITECTURES:
        raise _unknown("architecture", arch, ARCHITECTURES)
    if (arch, tag) not in PRETRAINED:
        tags = [t for a, t in PRETRAINED if a == arch]
        raise _unknown(f"pretrained tag for {arch}", tag, tags) if tags else ValueError(
            f"no pretrained tags for {arch!r}; architectures with tags: "
            f"{sorted({a for a, _ in PRETRAINED})}")
    return PRETRAINED[(arch, tag)]
