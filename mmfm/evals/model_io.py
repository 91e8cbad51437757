"""A model ready for evaluation: params + preprocessing + tokenizer, from a run or from the zoo.

    m = EvalModel.from_checkpoint("runs/demo")            # a training workdir / checkpoint dir
    m = EvalModel.from_zoo("ViT-B-32", "openai")         # or an `mmfm export` directory
    img = m.encode_images(raw_images)                     # [n, D] L2-normalised, numpy
    txt = m.encode_texts(["a red circle"])                # [n, D]

Images are raw (PIL, uint8 arrays of any size, encoded bytes); each is resized and normalised with
the model's own `Preprocess` (the eval transform of `mmfm.zoo.transforms`), so catalog datasets of
any resolution go through the same path as the training data.
"""
from __future__ import annotations

import json
import os
from typing import Any, Optional, Sequence

import jax
import numpy as np

from mmfm.zoo.registry import Preprocess
from mmfm.zoo.transforms import ImageTransform

__all__ = ["EvalModel"]


class EvalModel:
    """Jitted batched encoders for one (model, params); every call pads to one batch shape."""

    def __init__(self, model, params, *, preprocess: Preprocess, tokenizer, context_length: int,
                 batch_size: int = 256, zeroshot: Optional[dict] = None, mae: Optional[dict] = None):
        self.model, self.params, self.preprocess = model, params, preprocess
        self.tokenizer, self.context_length, self.batch_size = tokenizer, context_length, batch_size
        self.transform = ImageTransform(preprocess)
        self.zeroshot = dict(zeroshot or {})  # label key -> (class names, templates), training data
        self.mae = dict(mae or {})  # {"norm_pix": bool, "ratio": float} when trained with MAE
        self._img = jax.jit(lambda p, x: model.apply({"params": p}, x, method=model.encode_image)[0])
        self._txt = jax.jit(lambda p, t: model.apply({"params": p}, t, method=model.encode_text)[0])
        self.cache: dict[Any, Any] = {}  # features shared by evaluators of one run

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_trainer(cls, trainer, params) -> "EvalModel":
        cfg = trainer.config
        pre = Preprocess(image_size=int(cfg.data.image_size), mean=tuple(cfg.preprocess.mean),
                         std=tuple(cfg.preprocess.std), interpolation="bilinear",
                         resize_mode="shortest")
        return cls(trainer.model, params, preprocess=pre, tokenizer=trainer.tokenizer,
                   context_length=int(cfg.data.context_length),
                   batch_size=int(cfg.evals.get("batch_size", 256)),
                   zeroshot=dict(trainer.data_info.zeroshot), mae=_mae_settings(cfg))

    @classmethod
    def from_checkpoint(cls, path: str, *, batch_size: int = 256, step: Optional[int] = None):
        """From a training run: `path` is its workdir, its checkpoints/ dir or one step dir."""
        from mmfm import checkpoint
        from mmfm.data.pipeline import build_data
        from mmfm.models.multimodal import TwoTower
        from mmfm.train.loop import model_config
        import ml_collections

        root, _ = checkpoint.resolve(path)
        workdir = os.path.dirname(os.path.normpath(root))
        info_path = os.path.join(workdir, "run_info.json")
        if not os.path.isfile(info_path):
            raise FileNotFoundError(f"--checkpoint {path}: {info_path} not found (expected a "
                                    "training workdir, its checkpoints/ dir or a step dir)")
        with open(info_path) as f:
            cfg = ml_collections.ConfigDict(json.load(f)["config"])
        batch = max(1, int(cfg.batch_size) // jax.process_count())
        _, _, tokenizer, data_info = build_data(cfg.data, batch_size=batch, seed=int(cfg.seed))
        model = TwoTower(model_config(cfg, tokenizer))
        _, state = checkpoint.load_state(path, step)
        params = jax.tree.map(np.asarray, state["params"])
        pre = Preprocess(image_size=int(cfg.data.image_size), mean=tuple(cfg.preprocess.mean),
                         std=tuple(cfg.preprocess.std), interpolation="bilinear",
                         resize_mode="shortest")
        out = cls(model, params, preprocess=pre, tokenizer=tokenizer,
                  context_length=int(cfg.data.context_length), batch_size=batch_size,
                  zeroshot=dict(data_info.zeroshot), mae=_mae_settings(cfg))
        out.run_config = cfg
        return out

    @classmethod
    def from_zoo(cls, name: str, pretrained: Optional[str] = None, *, batch_size: int = 256):
        """An architecture (+ pretrained tag) or a path (`mmfm export` dir, weights file)."""
        from mmfm import api

        model, params, info = api._create(name, pretrained, mesh=None, overrides=None, sha256=None,
                                          cache_dir=None, offline=None, seed=0, rules=None)
        tokenizer = api.make_tokenizer(info.tokenizer, info.base_dir)
        zeroshot = {k: (tuple(v[0]), tuple(v[1])) for k, v in (info.zeroshot or {}).items()}
        return cls(model, params, preprocess=info.preprocess, tokenizer=tokenizer,
                   context_length=int(info.tokenizer.context_length or model.cfg.text.context_length),
                   batch_size=batch_size, zeroshot=zeroshot)

    # ------------------------------------------------------------------ encoding
    def _batched(self, fn, arrays: np.ndarray) -> np.ndarray:
        out, bs = [], self.batch_size
        for i in range(0, len(arrays), bs):
            chunk = arrays[i:i + bs]
            pad = bs - len(chunk)  # one shape for every call: one compile
            if pad:
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, axis=0)])
            out.append(np.asarray(fn(self.params, chunk))[:bs - pad])
        return np.concatenate(out) if out else np.zeros((0, self.model.cfg.embed_dim), np.float32)

    def preprocess_images(self, images: Sequence[Any]) -> np.ndarray:
        """Raw images -> float32 `[n, S, S, 3]` normalised with the model's mean/std."""
        return np.stack([self.transform(im) for im in images]).astype(np.float32)

    def encode_images(self, images: Sequence[Any]) -> np.ndarray:
        """Raw images -> L2-normalised float32 `[n, D]`."""
        if not len(images):
            return np.zeros((0, self.model.cfg.embed_dim), np.float32)
        return self._batched(self._img, self.preprocess_images(images))

    def encode_image_source(self, source) -> np.ndarray:
        """An `ImageSource` (lazy records) -> `[n, D]`, decoding one batch of images at a time."""
        out, bs = [], self.batch_size
        for start in range(0, len(source), bs):
            out.append(self.encode_images(source.images(range(start, min(start + bs, len(source))))))
        return np.concatenate(out) if out else np.zeros((0, self.model.cfg.embed_dim), np.float32)

    def encode_tokens(self, tokens: np.ndarray) -> np.ndarray:
        return self._batched(self._txt, np.asarray(tokens, np.int32))

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Strings -> L2-normalised float32 `[n, D]` (tokenised to the model's context length)."""
        if not len(texts):
            return np.zeros((0, self.model.cfg.embed_dim), np.float32)
        return self.encode_tokens(self.tokenizer(list(texts), self.context_length))


def _mae_settings(cfg) -> dict:
    loss = cfg.get("loss", None)
    if loss is None or not float(loss.get("mae_weight", 0.0) or 0.0):
        return {}
    return {"norm_pix": bool(loss.get("norm_pix", True)), "ratio": float(loss.get("mae_ratio", 0.75))}
