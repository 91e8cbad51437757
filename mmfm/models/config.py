"""Typed model configs and the size table.

Each encoder takes its own small frozen dataclass, never the experiment config. Sizes follow
big_vision's table ("mu" is the tiny test size); `vit_config("B/16")` decodes a variant string.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Literal, Optional

# name: (width, depth, mlp_dim, heads). big_vision's ViT size table plus the SigLIP shape-optimised
# So400m and SigLIP 2's giant-opt (timm's vit_giantopt). "mu" is for tests only.
SIZES: dict[str, tuple[int, int, int, int]] = {
    "mu": (32, 2, 128, 2),
    "Ti": (192, 12, 768, 3),
    "S": (384, 12, 1536, 6),
    "M": (512, 12, 2048, 8),
    "B": (768, 12, 3072, 12),
    "L": (1024, 24, 4096, 16),
    "So400m": (1152, 27, 4304, 16),
    "H": (1280, 32, 5120, 16),
    "g": (1408, 40, 6144, 16),
    "gopt": (1536, 40, 6144, 16),
}

Pool = Literal["cls", "mean", "map", "none"]
TextPool = Literal["eot", "argmax", "last", "first", "mean"]
Act = Literal["gelu", "gelu_tanh", "quick_gelu", "relu"]
DType = Literal["float32", "bfloat16", "float16"]


def _check(cond: bool, key: str, msg: str) -> None:
    if not cond:
        raise ValueError(f"{key}: {msg}")


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
    """The transformer stack shared by both towers."""
    width: int = 32
    depth: int = 2
    mlp_dim: int = 128
    heads: int = 2
    act: Act = "gelu"
    ln_eps: float = 1e-6
    dropout: float = 0.0
    dtype: DType = "float32"  # compute dtype; params stay in param_dtype
    param_dtype: DType = "float32"
    scan: bool = False  # nn.scan over layers: compile time flat in depth
    remat: str = "none"  # none | full | dots (which activations to save)
    attn_impl: Optional[str] = None  # jax.nn.dot_product_attention implementation (None, 'cudnn', 'xla')

    def validate(self, prefix: str) -> None:
        for name in ("width", "depth", "mlp_dim", "heads"):
            _check(getattr(self, name) > 0, f"{prefix}.{name}", f"must be > 0, got {getattr(self, name)}")
        _check(self.width % self.heads == 0, f"{prefix}.heads",
               f"width {self.width} is not divisible by heads {self.heads}")
        _check(self.remat in ("none", "full", "dots"), f"{prefix}.remat",
               f"must be one of none|full|dots, got {self.remat!r}")
        _check(self.act in ("gelu", "gelu_tanh", "quick_gelu", "relu"), f"{prefix}.act",
               f"unknown activation {self.act!r}")


@dataclasses.dataclass(frozen=True)
class VitConfig(EncoderConfig):
    image_size: int = 32
    patch_size: int = 8
    channels: int = 3
    pool: Pool = "cls"
    posemb: Literal["learn", "sincos2d"] = "learn"
    # Patch embedding: one linear map per patch (ViT), or a small per-patch network (stems.py).
    stem: Literal["linear", "hmlp", "conv"] = "linear"
    patch_bias: bool = True  # CLIP's conv1 has no bias
    ln_pre: bool = False  # CLIP normalises tokens before the blocks
    ln_post: bool = True
    cls_posemb: bool = False  # CLIP: the position table also covers the cls token (N+1 rows)
    head: bool = True  # project to embed_dim; False (SigLIP/timm) requires embed_dim == width
    head_bias: bool = True
    # NaFlex (SigLIP 2): inputs are padded patch sequences of any aspect ratio; the learned position
    # grid (image_size / patch_size a side) is resized to each image's grid (models/naflex.py).
    naflex: bool = False

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid * self.grid

    def validate(self, prefix: str = "model.image") -> None:
        super().validate(prefix)
        # A linear stem is a stride-P convolution: like timm's, it drops the last image_size % P
        # rows and columns (SigLIP So400m/14 at 384 px sees a 27 x 27 grid of 378 px).
        _check(0 < self.patch_size <= self.image_size and
               (self.image_size % self.patch_size == 0 or self.stem == "linear"), f"{prefix}.patch_size",
               f"patch size {self.patch_size} does not divide image size {self.image_size} "
               f"(only the linear stem drops the remainder)")
        _check(self.pool in ("cls", "mean", "map", "none"), f"{prefix}.pool", f"unknown pool {self.pool!r}")
        _check(self.posemb in ("learn", "sincos2d"), f"{prefix}.posemb", f"unknown posemb {self.posemb!r}")
        _check(self.stem in ("linear", "hmlp", "conv"), f"{prefix}.stem",
               f"unknown stem {self.stem!r}; valid: linear, hmlp, conv")
        _check(not self.cls_posemb or (self.pool == "cls" and self.posemb == "learn"), f"{prefix}.cls_posemb",
               "needs pool='cls' and posemb='learn'")
        _check(not self.naflex or (self.stem == "linear" and self.posemb == "learn"), f"{prefix}.naflex",
               "needs stem='linear' and posemb='learn' (a learned grid to resize)")


@dataclasses.dataclass(frozen=True)
class TextConfig(EncoderConfig):
    vocab_size: int = 256
    context_length: int = 16
    causal: bool = True
    pool: TextPool = "eot"
    eot_id: int = 2  # the end-of-text id that 'eot' pooling looks for
    pad_id: int = 0
    mask_pad: bool = True  # key-padding mask (bidirectional towers); CLIP relies on causality instead
    head_bias: bool = False
    mlm_head: bool = False  # build the (embedding-tied) MLM head

    def validate(self, prefix: str = "model.text") -> None:
        super().validate(prefix)
        _check(self.vocab_size > 0, f"{prefix}.vocab_size", "must be > 0")
        _check(self.context_length > 0, f"{prefix}.context_length", "must be > 0")
        _check(self.pool in ("eot", "argmax", "last", "first", "mean"), f"{prefix}.pool",
               f"unknown pool {self.pool!r}")


@dataclasses.dataclass(frozen=True)
class DecoderConfig(EncoderConfig):
    """The light MAE decoder (He et al.: 8 blocks x 512 at ViT-L; 1-2 blocks are enough here)."""
    width: int = 32
    depth: int = 1
    mlp_dim: int = 128
    heads: int = 2


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    image: VitConfig
    text: TextConfig
    embed_dim: int = 32
    init_temperature: float = 0.07  # CLIP: logit scale = 1/0.07; SigLIP uses 10 with bias -10
    init_bias: Optional[float] = None  # None: no bias parameter (CLIP)
    mae_decoder: Optional[DecoderConfig] = None
    # > 0: a linear classification head on the image embedding (fine-tuning, `loss.classify_weight`)
    num_classes: int = 0
    # > 0: a bias-free linear map `distill_proj` from the embedding to a distillation teacher's
    # embedding width (`loss.distill_feature_weight`; the trainer sets it from the teacher).
    # Training only: exports drop it (mmfm.zoo.export) and inference never calls it.
    distill_dim: int = 0

    def validate(self) -> "ModelConfig":
        self.image.validate("model.image")
        self.text.validate("model.text")
        _check(self.embed_dim > 0, "model.embed_dim", "must be > 0")
        _check(self.init_temperature > 0, "model.init_temperature", "must be > 0")
        _check(self.image.head or self.embed_dim == self.image.width, "model.image.head",
               f"head=False needs embed_dim == image width ({self.embed_dim} != {self.image.width})")
        if self.mae_decoder is not None:
            self.mae_decoder.validate("model.mae_decoder")
            _check(self.image.image_size % self.image.patch_size == 0, "model.mae_decoder",
                   f"MAE reconstructs whole images: patch size {self.image.patch_size} must divide "
                   f"image size {self.image.image_size}")
        _check(self.num_classes >= 0, "model.num_classes", f"must be >= 0, got {self.num_classes}")
        _check(self.distill_dim >= 0, "model.distill_dim", f"must be >= 0, got {self.distill_dim}")
        return self


def parse_variant(variant: str) -> tuple[str, Optional[int]]:
    """'B/16' -> ('B', 16); 'mu' -> ('mu', None)."""
    m = re.fullmatch(r"([A-Za-z0-9]+)(?:/(\d+))?", variant)
    if not m or m.group(1) not in SIZES:
        raise ValueError(f"unknown model size {variant!r}; valid sizes: {', '.join(SIZES)} "
                         "(optionally with /patch, e.g. 'B/16')")
    return m.group(1), int(m.group(2)) if m.group(2) else None


def size_kwargs(size: str) -> dict:
    width, depth, mlp_dim, heads = SIZES[size]
    return dict(width=width, depth=depth, mlp_dim=mlp_dim, heads=heads)


def vit_config(variant: str, **overrides) -> VitConfig:
    size, patch = parse_variant(variant)
    kw = size_kwargs(size)
    if patch is not None:
        kw["patch_size"] = patch
    kw.update(overrides)
    return VitConfig(**kw)


def text_config(size: str, **overrides) -> TextConfig:
    size, _ = parse_variant(size)
    kw = size_kwargs(size)
    kw.update(overrides)
    return TextConfig(**kw)


def stem_stages(cfg: VitConfig) -> list[tuple[int, int]]:
    """(kernel, stride) of each stage that reduces a patch to 1x1; the last stage reaches `width`.

    hmlp: 4, then 2s until the patch is covered (16 -> 4, 2, 2). conv: 3x3 stride 2 until the
    side is <= 2, then one kernel covering the rest.
    """
    p, stages = cfg.patch_size, []
    if cfg.stem == "hmlp":
        first = 4 if p % 4 == 0 and p > 4 else p
        stages.append((first, first))
        side = p // first
        while side > 1:
            k = 2 if side % 2 == 0 else side
            stages.append((k, k))
            side //= k
        return stages
    side = p
    while side > 2 and side % 2 == 0:
        stages.append((3, 2))
        side //= 2
    stages.append((side, side))
    return stages


def stem_widths(cfg: VitConfig) -> list[int]:
    """Output channels per stage: a quarter of the width (at least 16), the last one `width`."""
    n = len(stem_stages(cfg))
    hidden = max(16, cfg.width // 4)
    return [hidden] * (n - 1) + [cfg.width]


def stem_params(im: VitConfig) -> int:
    """Parameters of the patch embedding (linear) or of a per-patch stem (mmfm.models.stems)."""
    if im.stem == "linear":
        return im.patch_size ** 2 * im.channels * im.width + (im.width if im.patch_bias else 0)
    n, c_in = 0, im.channels
    stages, widths = stem_stages(im), stem_widths(im)
    for i, ((k, _), w) in enumerate(zip(stages, widths)):
        last = i == len(stages) - 1
        n += k * k * c_in * w + (w if im.patch_bias or not last else 0)
        n += 0 if last else 2 * w  # LayerNorm scale and bias
        c_in = w
    return n


def count_params_closed_form(cfg: ModelConfig) -> int:
    """Parameter count from the config alone (a check on the modules, asserted by tests)."""
    def blocks(e: EncoderConfig) -> int:
        w, m = e.width, e.mlp_dim
        per = 2 * 2 * w + 4 * (w * w + w) + (w * m + m) + (m * w + w)
        return e.depth * per

    def map_head(e: EncoderConfig) -> int:
        w, m = e.width, e.mlp_dim
        return w + 4 * (w * w + w) + 2 * w + (w * m + m) + (m * w + w)

    im, tx = cfg.image, cfg.text
    n = stem_params(im)
    n += (im.num_patches + im.cls_posemb) * im.width if im.posemb == "learn" else 0
    n += im.width if im.pool == "cls" else 0
    n += 2 * im.width if im.ln_pre else 0
    n += blocks(im) + (2 * im.width if im.ln_post else 0)
    n += map_head(im) if im.pool == "map" else 0
    if im.head:
        n += im.width * cfg.embed_dim + (cfg.embed_dim if im.head_bias else 0)

    n += tx.vocab_size * tx.width + tx.context_length * tx.width + blocks(tx) + 2 * tx.width
    n += tx.width * cfg.embed_dim + (cfg.embed_dim if tx.head_bias else 0)
    if tx.mlm_head:  # dense + layernorm + output bias; the output matrix is the tied embedding
        n += tx.width * tx.width + tx.width + 2 * tx.width + tx.vocab_size

    n += 1 + (1 if cfg.init_bias is not None else 0)
    if cfg.mae_decoder is not None:
        d = cfg.mae_decoder
        n += im.width * d.width + d.width  # embed
        n += d.width  # mask token
        n += blocks(d) + 2 * d.width
        n += d.width * im.patch_size ** 2 * im.channels + im.patch_size ** 2 * im.channels
    n += (cfg.embed_dim + 1) * cfg.num_classes
    n += cfg.embed_dim * cfg.distill_dim
    return n


def _fields(cls) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def _make(cls, kw: dict, prefix: str):
    unknown = sorted(set(kw) - _fields(cls))
    if unknown:
        raise ValueError(f"{prefix}: unknown key(s) {unknown}; valid keys: {sorted(_fields(cls))}")
    return cls(**kw)


def model_config_from_dict(d: dict, **text_overrides) -> ModelConfig:
    """ModelConfig from a plain (or ConfigDict) mapping, as experiment configs and exports store it.

    `image` / `text` / `mae_decoder` take an optional `variant` ("B/16", "mu") plus field overrides;
    top-level `dtype`, `param_dtype`, `scan`, `remat` apply to every tower unless a tower sets them.
    """
    d = dict(d)
    shared = {k: d.pop(k) for k in ("dtype", "param_dtype", "scan", "remat", "attn_impl") if k in d}

    def tower(cls, sub: dict, prefix: str):
        sub = dict(sub)
        kw = dict(shared)
        variant = sub.pop("variant", None)
        if variant is not None:
            size, patch = parse_variant(variant)
            kw.update(size_kwargs(size))
            if patch is not None:
                kw["patch_size"] = patch
        kw.update(sub)
        return _make(cls, kw, prefix)

    image = tower(VitConfig, d.pop("image", {}), "model.image")
    text = tower(TextConfig, {**dict(d.pop("text", {})), **text_overrides}, "model.text")
    dec = d.pop("mae_decoder", None)
    decoder = tower(DecoderConfig, dec, "model.mae_decoder") if dec else None
    return _make(ModelConfig, dict(d, image=image, text=text, mae_decoder=decoder), "model").validate()


def model_config_to_dict(cfg: ModelConfig) -> dict:
    """JSON-able dict that model_config_from_dict reads back (exports and checkpoint metadata).

    `distill_dim` is written only when set: a training-only field, so exports and the metadata of
    runs without it stay readable by an mmfm that predates it."""
    d = dataclasses.asdict(cfg)
    if not d["distill_dim"]:
        del d["distill_dim"]
    return d
