"""A model ready for evaluation: params + preprocessing + tokenizer + encoders on a mesh.

    m = EvalModel.from_checkpoint("runs/demo")            # a training run (read-only, no data)
    m = EvalModel.from_trainer(trainer, state.params, encoder)   # inside training, sharded params
    img = m.encode_images(raw_images)                     # [n, D] L2-normalised, numpy
    txt = m.encode_texts(["a red circle"])                # [n, D]

Zoo models and exports are loaded by `mmfm.load_eval_model` (the API layer). Images are raw (PIL,
uint8 arrays of any size, encoded bytes); each is resized and normalised with the model's own
`Preprocess`, so catalog datasets of any resolution go through the same path as the training data.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np

from mmfm.data.preprocess import ImageTransform, Preprocess
from mmfm.evals.encoders import MeshEncoder

__all__ = ["EvalModel", "mae_settings"]


class EvalModel:
    """One (model, params) with its preprocessing and tokenizer; encoding runs on `encoder`.

    `params` must already be placed for `encoder` (`encoder.place(host_params)`, or the sharded
    training state); the constructors below do that.
    """

    def __init__(self, model, params, *, preprocess: Preprocess, tokenizer, context_length: int,
                 encoder: MeshEncoder, zeroshot: Optional[dict] = None, mae: Optional[dict] = None):
        self.model, self.params, self.preprocess = model, params, preprocess
        self.tokenizer, self.context_length, self.encoder = tokenizer, context_length, encoder
        self.transform = ImageTransform(preprocess)
        self.zeroshot = dict(zeroshot or {})  # label key -> (class names, templates), training data
        self.mae = dict(mae or {})  # {"norm_pix": bool, "ratio": float} when trained with MAE
        self.cache: dict[Any, Any] = {}  # features shared by the evaluators of one eval

    @property
    def batch_size(self) -> int:
        return self.encoder.batch_size

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_host_params(cls, model, params, *, batch_size: int = 256, **kwargs) -> "EvalModel":
        """Numpy params: placed once on a data-parallel mesh of this process's devices."""
        encoder = MeshEncoder(model, batch_size=batch_size)
        return cls(model, encoder.place(params), encoder=encoder, **kwargs)

    @classmethod
    def from_trainer(cls, trainer, params, encoder: MeshEncoder) -> "EvalModel":
        """The training state's params as they are sharded (no host copy)."""
        cfg = trainer.config
        pre = Preprocess(image_size=int(cfg.data.image_size), mean=tuple(cfg.preprocess.mean),
                         std=tuple(cfg.preprocess.std), interpolation="bilinear",
                         resize_mode="shortest")
        return cls(trainer.model, params, preprocess=pre, tokenizer=trainer.tokenizer,
                   context_length=int(cfg.data.context_length), encoder=encoder,
                   zeroshot=dict(trainer.data_info.zeroshot), mae=mae_settings(cfg.to_dict()))

    @classmethod
    def from_checkpoint(cls, path: str, *, batch_size: int = 256, step: Optional[int] = None):
        """From a training run (`checkpoint.load_run`): its workdir, checkpoints/ or a step dir."""
        from mmfm import checkpoint
        from mmfm.data.tokenizers import load_tokenizer
        from mmfm.models.config import model_config_from_dict
        from mmfm.models.multimodal import TwoTower

        run = checkpoint.load_run(path, step=step)
        model = TwoTower(model_config_from_dict(run.model_config))
        tokenizer = load_tokenizer(run.tokenizer_file, lowercase=run.tokenizer_lowercase)
        pre = run.preprocess
        pre = Preprocess(**{k: tuple(v) if isinstance(v, list) else v for k, v in pre.items()})
        out = cls.from_host_params(model, run.params, batch_size=batch_size, preprocess=pre,
                                   tokenizer=tokenizer, context_length=model.cfg.text.context_length,
                                   zeroshot=run.zeroshot, mae=mae_settings(run.config))
        out.run = run
        return out

    # ------------------------------------------------------------------ encoding
    def preprocess_images(self, images: Sequence[Any]) -> np.ndarray:
        """Raw images -> float32 `[n, S, S, 3]` normalised with the model's mean/std."""
        return np.stack([self.transform(im) for im in images]).astype(np.float32)

    def encode_images(self, images: Sequence[Any]) -> np.ndarray:
        """Raw images -> L2-normalised float32 `[n, D]`."""
        if not len(images):
            return np.zeros((0, self.model.cfg.embed_dim), np.float32)
        return self.encoder.images(self.params, self.preprocess_images(images))

    def encode_pixels(self, images_u8: np.ndarray) -> np.ndarray:
        """uint8 `[n, S, S, 3]` already at the model's size -> `[n, D]` (normalised in batches)."""
        out, bs = [], self.batch_size * 8  # bounded host memory for the float copy
        for i in range(0, len(images_u8), bs):
            out.append(self.encoder.images(self.params, self.transform.normalize(images_u8[i:i + bs])))
        return np.concatenate(out) if out else np.zeros((0, self.model.cfg.embed_dim), np.float32)

    def encode_image_source(self, source) -> np.ndarray:
        """An `ImageSource` (lazy records) -> `[n, D]`, decoding one batch of images at a time."""
        out, bs = [], self.batch_size
        for start in range(0, len(source), bs):
            out.append(self.encode_images(source.images(range(start, min(start + bs, len(source))))))
        return np.concatenate(out) if out else np.zeros((0, self.model.cfg.embed_dim), np.float32)

    def classify_image_source(self, source) -> np.ndarray:
        """An `ImageSource` -> the classifier's logits `[n, num_classes]` (fine-tuned runs)."""
        if not self.model.cfg.num_classes:
            raise ValueError("the model has no classification head (model.num_classes is 0)")
        out, bs = [], self.batch_size
        for start in range(0, len(source), bs):
            images = self.preprocess_images(source.images(range(start, min(start + bs, len(source)))))
            out.append(self.encoder.class_logits(self.params, images))
        return np.concatenate(out) if out else np.zeros((0, self.model.cfg.num_classes), np.float32)

    def patch_tokens(self, images: Sequence[Any]) -> np.ndarray:
        """Raw images -> the image tower's patch tokens `[n, num_patches, width]`, float32."""
        return self.encoder.patch_tokens(self.params, self.preprocess_images(images))

    def encode_tokens(self, tokens: np.ndarray) -> np.ndarray:
        return self.encoder.tokens(self.params, tokens)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Strings -> L2-normalised float32 `[n, D]` (tokenised to the model's context length)."""
        if not len(texts):
            return np.zeros((0, self.model.cfg.embed_dim), np.float32)
        return self.encode_tokens(self.tokenizer(list(texts), self.context_length))


def mae_settings(cfg: dict) -> dict:
    """{"norm_pix", "ratio"} of a run trained with MAE (from its experiment config), else {}."""
    loss = cfg.get("loss") or {}
    if not float(loss.get("mae_weight", 0.0) or 0.0):
        return {}
    return {"norm_pix": bool(loss.get("norm_pix", True)), "ratio": float(loss.get("mae_ratio", 0.75))}
