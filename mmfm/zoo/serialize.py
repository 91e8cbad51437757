"""Serialized encoders: a directory that runs a model's two encoders with only jax and numpy.

    OUT/image_encoder.jaxexport  uint8 pixels [b, S, S, 3] -> L2-normalised f32 [b, D]
                                 (/255 and the model's mean/std inside, as a lookup table)
    OUT/text_encoder.jaxexport   int32 token ids [b, L] -> L2-normalised f32 [b, D]
    OUT/serialized.json          {"format": "mmfm-serialized", name, image_size, mean, std,
                                  embed_dim, context_length, tokenizer, platforms, versions}
    OUT/<tokenizer file(s)>      copied in, as in export directories (none for the shipped CLIP BPE)

Each encoder is `jax.export`ed (StableHLO) with a symbolic batch dimension `b` and the params baked
in as constants, so one file serves every batch size. `mmfm.local.load(OUT)` reads it back.
`write_serialized` takes any (model, params) pair: from `mmfm.create_model_and_transforms`, a run,
or a quantized export whose `apply` runs int8 weights.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mmfm import fileio
from mmfm.version import __version__
from mmfm.zoo.model_card import CARD_FILE

log = logging.getLogger("mmfm")

FORMAT = "mmfm-serialized"
FORMAT_VERSION = 1
META_FILE = "serialized.json"
IMAGE_FILE = "image_encoder.jaxexport"
TEXT_FILE = "text_encoder.jaxexport"
# Lowered for all three when this jax can (it can on a CPU-only machine: lowering needs no device).
PLATFORMS = ("cpu", "cuda", "tpu")


def _image_fn(model, params, mean: np.ndarray, std: np.ndarray):
    # A uint8 pixel has 256 values, so preprocessing is a [256, C] table computed here with numpy,
    # exactly as mmfm.data.preprocess normalises: XLA:CPU's division is not correctly rounded
    # (up to 2 ulp off), and the table makes the artifact see the library's very inputs.
    table = (np.arange(256, dtype=np.float32)[:, None] / 255.0 - mean) / std
    channel = np.arange(len(mean))

    def encode(pixels_u8):
        x = jnp.asarray(table)[pixels_u8.astype(jnp.int32), channel]
        return model.apply({"params": params}, x, method=model.encode_image)[0].astype(jnp.float32)
    return encode


def _text_fn(model, params):
    def encode(tokens):
        return model.apply({"params": params}, tokens, method=model.encode_text)[0].astype(jnp.float32)
    return encode


def _export(fn, arg: jax.ShapeDtypeStruct, platforms: Sequence[str]):
    from jax import export

    return export.export(jax.jit(fn), platforms=tuple(platforms))(arg)


def export_encoders(model, params, *, image_size: int, mean, std, context_length: int,
                    platforms: Optional[Sequence[str]] = None):
    """(image Exported, text Exported, platforms used). `platforms=None` tries cpu+cuda+tpu and
    falls back to cpu alone when this jax cannot lower for the others (logged)."""
    from jax import export

    b, = export.symbolic_shape("b")
    mean = np.asarray(mean, np.float32)
    std = np.asarray(std, np.float32)
    image_arg = jax.ShapeDtypeStruct((b, image_size, image_size, model.cfg.image.channels), jnp.uint8)
    text_arg = jax.ShapeDtypeStruct((b, context_length), jnp.int32)
    tries = [tuple(platforms)] if platforms else [PLATFORMS, ("cpu",)]
    for i, plats in enumerate(tries):
        try:
            image = _export(_image_fn(model, params, mean, std), image_arg, plats)
            text = _export(_text_fn(model, params), text_arg, plats)
            return image, text, plats
        except Exception as e:  # noqa: BLE001 - retried for cpu only, the reason logged
            if i + 1 == len(tries):
                raise
            log.warning("lowering for %s failed (%s: %s); lowering for cpu only", ",".join(plats),
                        type(e).__name__, str(e).splitlines()[0] if str(e) else "")
    raise AssertionError


def _artifact_section(meta: dict) -> str:
    return "\n".join([
        "## Serialized encoders", "",
        f"- `{IMAGE_FILE}`: uint8 pixels [batch, {meta['image_size']}, {meta['image_size']}, "
        f"{meta['channels']}] in (mean/std inside), L2-normalised [batch, {meta['embed_dim']}] out.",
        f"- `{TEXT_FILE}`: int32 token ids [batch, {meta['context_length']}] in, the same "
        "embeddings out.",
        f"- Any batch size (symbolic), lowered for {', '.join(meta['platforms'])} with jax "
        f"{meta['jax_version']}; `mmfm.local.load(DIR)` runs them with only jax and numpy.", ""])


def write_serialized(model, params, preprocess, tokenizer_spec, tokenizer_files: Sequence[str],
                     out: str, *, name: str, platforms: Optional[Sequence[str]] = None,
                     card: Optional[str] = None) -> str:
    """Writes the serialized encoders of (model, params) to `out` (replaced atomically).

    preprocess: a `Preprocess` (its mean/std go inside the image encoder; its resize settings are
      recorded for the caller, who feeds uint8 images already at the model's size).
    tokenizer_spec: a `TokenizerSpec`, or None (the text encoder then takes token ids only).
    tokenizer_files: the paths of `tokenizer_spec.files()`, copied in under their names.
    card: the model's MODEL_CARD.md text (e.g. its export's), written with a section on the
      artifact appended.
    """
    cfg = model.cfg
    if cfg.image.naflex:
        raise ValueError(f"{name}: NaFlex models take variable-size patch sequences; only "
                         "fixed-size models can be serialized")
    if fileio.is_url(out):
        raise ValueError(f"--out {out}: serialized encoders are written to a local directory")
    size = int(cfg.image.image_size)
    if preprocess.image_size != size:
        raise ValueError(f"{name}: preprocess image_size {preprocess.image_size} != the model's {size}")
    context_length = int(cfg.text.context_length)
    if tokenizer_spec is not None and tokenizer_spec.context_length:
        context_length = int(tokenizer_spec.context_length)
    by_name = {fileio.basename(f): f for f in tokenizer_files}
    tok_names = list(tokenizer_spec.files()) if tokenizer_spec is not None else []
    missing = [n for n in tok_names if n not in by_name or not fileio.isfile(by_name[n])]
    if missing:
        raise FileNotFoundError(f"tokenizer {tokenizer_spec.kind!r} needs its file(s) {missing}; got "
                                f"{list(tokenizer_files)}")

    image, text, plats = export_encoders(model, params, image_size=size, mean=preprocess.mean,
                                         std=preprocess.std, context_length=context_length,
                                         platforms=platforms)
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "name": name,
            "image_size": size, "channels": int(cfg.image.channels),
            "mean": [float(v) for v in preprocess.mean], "std": [float(v) for v in preprocess.std],
            "interpolation": preprocess.interpolation, "resize_mode": preprocess.resize_mode,
            "embed_dim": int(image.out_avals[0].shape[-1]), "context_length": context_length,
            "tokenizer": dataclasses.asdict(tokenizer_spec) if tokenizer_spec is not None else None,
            "tokenizer_files": tok_names, "platforms": list(plats),
            "files": {"image": IMAGE_FILE, "text": TEXT_FILE},
            "mmfm_version": __version__, "jax_version": jax.__version__}

    def write(tmp: str) -> None:
        for fname, exported in ((IMAGE_FILE, image), (TEXT_FILE, text)):
            with open(os.path.join(tmp, fname), "wb") as f:
                f.write(exported.serialize())
        for n in tok_names:
            fileio.copy(by_name[n], os.path.join(tmp, n))
        if card is not None:
            with open(os.path.join(tmp, CARD_FILE), "w") as f:
                f.write(card.rstrip("\n") + "\n\n" + _artifact_section(meta))
        with open(os.path.join(tmp, META_FILE), "w") as f:
            json.dump(meta, f, indent=1)

    return fileio.write_dir_atomic(out, write, prefix=".serialized-")
