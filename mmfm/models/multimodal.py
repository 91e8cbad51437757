"""Two towers + projections + learned temperature/bias + masked-prediction heads.

The wrapper owns normalisation, temperature and bias; no module computes a loss. Outputs are a dict
of named arrays so objectives, evaluators and probes need no model changes.
"""
from __future__ import annotations

import math
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmfm import sharding as sh
from mmfm.models.config import ModelConfig
from mmfm.models.heads import MaeDecoder
from mmfm.models.text import TextTransformer
from mmfm.models.vit import VisionTransformer

Array = jax.Array


def l2_normalize(x: Array, eps: float = 1e-6) -> Array:
    x = x.astype(jnp.float32)
    return x / jnp.sqrt(jnp.sum(x * x, axis=-1, keepdims=True) + eps)


class TwoTower(nn.Module):
    """Image + text encoders sharing an embedding space.

    Parameter tree: `img/...`, `txt/...`, `t` (log of the logit scale), `b` (SigLIP bias, when
    `init_bias` is set), `mae_decoder/...` (when configured), `classifier/...` (a linear head on
    the image embedding, when `num_classes > 0`; zero-initialised, so fine-tuning starts from
    uniform predictions), `distill_proj/kernel` `[embed_dim, distill_dim]` (when `distill_dim >
    0`: feature distillation's map into the teacher's embedding space, training only).
    """
    cfg: ModelConfig

    def setup(self):
        cfg = self.cfg
        self.img = VisionTransformer(cfg.image, cfg.embed_dim)
        self.txt = TextTransformer(cfg.text, cfg.embed_dim)
        self.t = self.param("t", nn.initializers.constant(math.log(1.0 / cfg.init_temperature)), (1,))
        if cfg.init_bias is not None:
            self.b = self.param("b", nn.initializers.constant(cfg.init_bias), (1,))
        if cfg.mae_decoder is not None:
            self.mae_decoder = MaeDecoder(cfg.mae_decoder, cfg.image)
        if cfg.num_classes:
            self.classifier = nn.Dense(
                cfg.num_classes, kernel_init=nn.with_logical_partitioning(
                    nn.initializers.zeros_init(), (sh.EMBED, None)),
                bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), (None,)))
        if cfg.distill_dim:
            # One map for both towers: they share one embedding space, and so does the teacher;
            # a shared map keeps the projected image and text embeddings comparable.
            self.distill_proj = nn.Dense(
                cfg.distill_dim, use_bias=False, dtype=jnp.float32,
                kernel_init=nn.with_logical_partitioning(nn.initializers.xavier_uniform(),
                                                         (sh.EMBED, None)))

    def encode_image(self, images: Array, *, keep_idx: Optional[Array] = None, train: bool = False,
                     spatial_shapes: Optional[Array] = None, patch_valid: Optional[Array] = None,
                     keep_valid: Optional[Array] = None):
        """images [batch, H, W, C] (normalised floats), or NaFlex patches [batch, max_patches,
        P*P*C] with spatial_shapes / patch_valid -> (L2-normalised [batch, embed_dim], out)."""
        emb, out = self.img(images, keep_idx=keep_idx, train=train, spatial_shapes=spatial_shapes,
                            patch_valid=patch_valid, keep_valid=keep_valid)
        return l2_normalize(emb), out

    def classify(self, images: Array, *, train: bool = False) -> Array:
        """images [batch, H, W, C] (normalised) -> class logits [batch, num_classes], float32."""
        emb, _ = self.img(images, train=train)
        return self._class_logits(emb)

    def _class_logits(self, emb: Array) -> Array:
        if not self.cfg.num_classes:
            raise ValueError("the model has no classifier (model.num_classes is 0)")
        return self.classifier(emb.astype(jnp.float32))

    def encode_text(self, tokens: Array, *, train: bool = False, mlm: bool = False):
        """tokens int [batch, seq] -> (L2-normalised [batch, embed_dim], out)."""
        emb, out = self.txt(tokens, train=train, mlm=mlm)
        return l2_normalize(emb), out

    def logit_params(self) -> tuple[Array, Optional[Array]]:
        scale = jnp.exp(self.t[0].astype(jnp.float32))
        bias = self.b[0].astype(jnp.float32) if self.cfg.init_bias is not None else None
        return scale, bias

    def __call__(self, images: Array, tokens: Array, *, con_keep: Optional[Array] = None,
                 mae_keep: Optional[Array] = None, mlm_tokens: Optional[Array] = None,
                 mae_images: Optional[Array] = None, contrastive: bool = True,
                 mae_shares_view: bool = False, classify: bool = False, train: bool = False):
        """One training forward pass; every branch is optional so any loss weight may be zero.

        con_keep / mae_keep: [batch, kept] patch indices of the contrastive / reconstruction views
        (None = all patches for the contrastive view). With `mae_shares_view` the MAE decoder reuses
        the contrastive pass (equal masking ratios: one encoder pass serves both losses).
        mlm_tokens: [rows, seq] tokens with masked positions replaced; its pass yields `mlm/logits`.
        mae_images: the reconstruction view's images when it covers other rows than `images` (a
        sub-batch, `loss.masked_batch_frac`); None = `images`.
        classify: class logits of the whole images (`cls/logits`), from the contrastive pass when
        it sees every patch. With `cfg.distill_dim` the contrastive pass also yields `img/distill`
        and `txt/distill`: the L2-normalised embeddings through `distill_proj`.
        """
        out = {}
        img_out = None
        if contrastive:
            raw_emb, img_out = self.img(images, keep_idx=con_keep, train=train)
            img_emb = l2_normalize(raw_emb)
            txt_emb, _ = self.encode_text(tokens, train=train)
            scale, bias = self.logit_params()
            out.update({"img/emb": img_emb, "txt/emb": txt_emb, "scale": scale})
            if bias is not None:
                out["bias"] = bias
            if self.cfg.distill_dim:  # [batch, distill_dim], unnormalised
                out["img/distill"] = self.distill_proj(img_emb)
                out["txt/distill"] = self.distill_proj(txt_emb)
        if mae_keep is not None:
            if self.cfg.mae_decoder is None:
                raise ValueError("mae_keep given but model.mae_decoder is not configured")
            if mae_shares_view and mae_images is not None:
                raise ValueError("mae_shares_view reuses the contrastive pass; it cannot take "
                                 "separate mae_images")
            if not (mae_shares_view and img_out is not None):
                mae_in = images if mae_images is None else mae_images
                _, img_out = self.encode_image(mae_in, keep_idx=mae_keep, train=train)
            out["mae/pred"] = self.mae_decoder(img_out["tokens"], mae_keep, train=train)
        if mlm_tokens is not None:
            if not self.cfg.text.mlm_head:
                raise ValueError("mlm_tokens given but model.text.mlm_head is False")
            _, txt_out = self.encode_text(mlm_tokens, train=train, mlm=True)
            out["mlm/logits"] = txt_out["mlm_logits"]
        if classify:
            if not (contrastive and con_keep is None):
                raw_emb, _ = self.img(images, train=train)
            out["cls/logits"] = self._class_logits(raw_emb)
        return out


def init_inputs(cfg: ModelConfig, batch: int = 1) -> dict:
    """Dummy inputs that reach every parameter the config enables (for init / eval_shape)."""
    im = cfg.image
    inputs = {
        "images": jnp.zeros((batch, im.image_size, im.image_size, im.channels), jnp.float32),
        "tokens": jnp.zeros((batch, cfg.text.context_length), jnp.int32),
    }
    if cfg.mae_decoder is not None:
        inputs["mae_keep"] = jnp.tile(jnp.arange(im.num_patches)[None], (batch, 1))
    if cfg.text.mlm_head:
        inputs["mlm_tokens"] = inputs["tokens"]
    return inputs


def init_params(model: TwoTower, rng: Array, batch: int = 1):
    """Boxed (logically partitioned) parameter tree of `model`."""
    inputs = init_inputs(model.cfg, batch)
    return model.init({"params": rng}, inputs.pop("images"), inputs.pop("tokens"),
                      classify=model.cfg.num_classes > 0, **inputs)["params"]
