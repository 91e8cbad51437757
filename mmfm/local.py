"""Run serialized encoders (`mmfm export --format stablehlo`) with only jax and numpy.

    import mmfm.local
    m = mmfm.local.load("my_model.stablehlo")
    img = m.encode_image(pixels)                      # uint8 [B, S, S, 3] -> float32 [B, D]
    txt = m.encode_text(["a red circle", "a dog"])    # or int token ids [B, L]
    scores = img @ txt.T                              # cosine similarities (both L2-normalised)

Imports jax, numpy and the standard library; strings go through mmfm's tokenizer implementations
(mmfm.zoo.tokenizers: sentencepiece / tokenizers / ftfy), never flax, optax, orbax, grain,
TFDS or mmfm's model code. The directory layout is described in mmfm/zoo/serialize.py (which writes
it; this module only reads, so it keeps its own copy of the file names).
"""
from __future__ import annotations

import json
import os
from typing import Sequence

import jax
import numpy as np

FORMAT = "mmfm-serialized"
META_FILE = "serialized.json"
_BACKEND_PLATFORM = {"gpu": "cuda"}  # jax.default_backend() name -> jax.export platform name


class LocalModel:
    """The two serialized encoders of one model. Attributes: name, image_size, context_length,
    embed_dim, mean, std, interpolation, platforms, meta (the whole serialized.json), signature (each encoder's
    input, e.g. {"image": "uint8[b,224,224,3]", "text": "int32[b,77]"}: b is any batch size)."""

    def __init__(self, path: str, meta: dict, image_exported, text_exported):
        self.path, self.meta = path, meta
        self.name = meta["name"]
        self.image_size = int(meta["image_size"])
        self.context_length = int(meta["context_length"])
        self.embed_dim = int(meta["embed_dim"])
        self.mean, self.std = tuple(meta["mean"]), tuple(meta["std"])
        self.interpolation = meta.get("interpolation", "bilinear")  # how callers should resize
        self.platforms = tuple(meta["platforms"])
        self._channels = int(meta.get("channels", 3))
        self.signature = {"image": str(image_exported.in_avals[0]), "text": str(text_exported.in_avals[0])}
        # One jit per encoder: compiled once per batch size, then cached.
        self._image = jax.jit(image_exported.call)
        self._text = jax.jit(text_exported.call)
        self._tokenizer = None

    def encode_image(self, images) -> np.ndarray:
        """uint8 pixels [B, S, S, 3] at `image_size` (resized and cropped by the caller) ->
        L2-normalised float32 [B, D]; /255 and the model's mean/std are applied inside."""
        images = np.asarray(images)
        want = (self.image_size, self.image_size, self._channels)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != want:
            raise ValueError(f"{self.name}: images must be uint8 [batch, {want[0]}, {want[1]}, "
                             f"{want[2]}], got {images.dtype} {list(images.shape)}")
        return np.asarray(self._image(images))

    def tokenize(self, texts: str | Sequence[str]) -> np.ndarray:
        """Strings -> int32 token ids [B, context_length], as the model was trained."""
        if self._tokenizer is None:
            self._tokenizer = self._load_tokenizer()
        return self._tokenizer([texts] if isinstance(texts, str) else list(texts), self.context_length)

    def encode_text(self, texts) -> np.ndarray:
        """A list of strings, or int token ids [B, context_length] -> L2-normalised float32 [B, D]."""
        if isinstance(texts, str) or (isinstance(texts, (list, tuple)) and texts
                                      and isinstance(texts[0], str)):
            tokens = self.tokenize(texts)
        else:
            tokens = np.asarray(texts)
            if tokens.ndim != 2 or tokens.shape[1] != self.context_length or tokens.dtype.kind not in "iu":
                raise ValueError(f"{self.name}: token ids must be int [batch, {self.context_length}], "
                                 f"got {tokens.dtype} {list(tokens.shape)}")
        return np.asarray(self._text(tokens.astype(np.int32)))

    def _load_tokenizer(self):
        spec = self.meta.get("tokenizer")
        if not spec:
            raise ValueError(f"{self.name}: this artifact has no tokenizer; pass int token ids "
                             f"[batch, {self.context_length}] to encode_text")
        try:
            from mmfm.zoo.tokenizers import tokenizer_from_files
        except ImportError as e:
            raise ImportError(f"{self.name}: encoding strings needs the {spec['kind']!r} tokenizer, "
                              f"which needs {e.name!r} (pip install it), or pass int token ids "
                              f"[batch, {self.context_length}] to encode_text") from e
        paths = [os.path.join(self.path, n) for n in self.meta.get("tokenizer_files", [])]
        return tokenizer_from_files(spec["kind"], paths, lowercase=spec.get("lowercase", True),
                                    pad_id=spec.get("pad_id"))

    def __repr__(self) -> str:
        return (f"LocalModel({self.name!r}, image_size={self.image_size}, embed_dim={self.embed_dim}, "
                f"context_length={self.context_length}, platforms={list(self.platforms)})")


def read_meta(path: str) -> dict:
    """serialized.json of a serialized-encoders directory (checked)."""
    meta_path = os.path.join(path, META_FILE)
    if not os.path.isfile(meta_path):
        what = ("an mmfm export (params.safetensors): serialize it with `mmfm export --model "
                f"{path} --out DIR --format stablehlo`"
                if os.path.isfile(os.path.join(path, "config.json")) else f"no {META_FILE} there")
        raise FileNotFoundError(f"{path} is not a serialized mmfm model: {what}")
    with open(meta_path) as f:
        meta = json.load(f)
    if meta.get("format") != FORMAT:
        raise ValueError(f"{meta_path}: format {meta.get('format')!r}, expected {FORMAT!r}")
    return meta


def load(path: str) -> LocalModel:
    """Loads the serialized encoders in `path` (written by `mmfm export --format stablehlo`).
    They run on jax's default backend, which must be one they were lowered for (`.platforms`)."""
    from jax import export

    path = os.path.abspath(os.path.expanduser(path))
    meta = read_meta(path)
    here = _BACKEND_PLATFORM.get(jax.default_backend(), jax.default_backend())
    if here not in meta["platforms"]:
        raise ValueError(f"{path} was lowered for {meta['platforms']}, not for {here!r}: "
                         "run with JAX_PLATFORMS=cpu, or serialize it again where jax can lower "
                         f"for {here!r}")
    exported = []
    for key in ("image", "text"):
        with open(os.path.join(path, meta["files"][key]), "rb") as f:
            exported.append(export.deserialize(bytearray(f.read())))
    return LocalModel(path, meta, *exported)
