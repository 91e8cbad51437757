"""ViT image encoder with optional patch dropping (FLIP / MAE)."""
from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmfm import sharding as sh
from mmfm.patches import patchify
from mmfm.models import layers, naflex, stems
from mmfm.models.config import VitConfig

Array = jax.Array


class VisionTransformer(nn.Module):
    """images [batch, H, W, C] float -> (embedding [batch, embed_dim], out dict).

    `keep_idx` [batch, kept] selects which patches the encoder sees (after the position embedding
    is added, so kept patches keep their positions). out holds `tokens` (the encoded kept patches,
    [batch, kept, width], without the cls token), `pooled` [batch, width] and, for NaFlex input,
    `valid` [batch, kept] (which tokens are real patches).

    NaFlex input (mmfm.models.naflex): `images` are patches [batch, max_patches, P*P*C] with
    `spatial_shapes` [batch, 2] and `patch_valid` [batch, max_patches]; with `keep_idx`,
    `keep_valid` [batch, kept] marks the kept slots that hold real patches (masking.patch_mask_valid).
    """
    cfg: VitConfig
    embed_dim: int

    @nn.compact
    def __call__(self, images: Array, *, keep_idx: Optional[Array] = None, train: bool = False,
                 spatial_shapes: Optional[Array] = None, patch_valid: Optional[Array] = None,
                 keep_valid: Optional[Array] = None):
        cfg = self.cfg
        dt, pdt = layers.dtype_of(cfg.dtype), layers.dtype_of(cfg.param_dtype)
        p = cfg.patch_size
        flex = spatial_shapes is not None
        if flex:
            want = p * p * cfg.channels
            if images.ndim != 3 or images.shape[-1] != want or patch_valid is None:
                raise ValueError(f"NaFlex input: patches [batch, max_patches, {want}] with "
                                 f"spatial_shapes and patch_valid, got patches {images.shape}")
            if cfg.stem != "linear":
                raise ValueError(f"NaFlex needs model.image.stem='linear', got {cfg.stem!r}")
        elif images.shape[1:3] != (cfg.image_size, cfg.image_size):
            raise ValueError(f"images have shape {images.shape}, model.image.image_size is {cfg.image_size}")
        if cfg.posemb == "learn":
            pos = self.param("pos_embedding", nn.with_logical_partitioning(
                nn.initializers.normal(0.02), (None, sh.SEQ, sh.EMBED)),
                (1, cfg.num_patches + cfg.cls_posemb, cfg.width), pdt)
        else:
            pos = layers.sincos_2d(cfg.grid, cfg.width)[None]
        grid_table = pos[0, cfg.cls_posemb:]
        pos = jnp.asarray(pos, dt)
        valid = None
        if cfg.stem == "linear":
            conv = nn.Conv(cfg.width, (p, p), strides=(p, p), padding="VALID", use_bias=cfg.patch_bias,
                           dtype=dt, param_dtype=pdt, name="embedding",
                           kernel_init=layers.dense_init((None, None, sh.PATCH, sh.EMBED)),
                           bias_init=layers.bias_init((sh.EMBED,)))
            if flex:  # each flattened (row, col, channel) patch through the same stride-P kernel
                b, n, _ = images.shape
                x = conv(images.reshape(b * n, p, p, cfg.channels).astype(dt)).reshape(b, n, cfg.width)
                x_bnd = x + naflex.resize_position_grid(grid_table, spatial_shapes, n).astype(dt)
                valid = patch_valid.astype(bool)
            else:
                x = conv(images.astype(dt))
                x_bnd = x.reshape(x.shape[0], -1, cfg.width) + pos[:, cfg.cls_posemb:]
            if keep_idx is not None:
                idx = keep_idx.astype(jnp.int32)
                x_bnd = jnp.take_along_axis(x_bnd, idx[..., None], axis=1)
                if flex:
                    valid = (keep_valid.astype(bool) if keep_valid is not None
                             else jnp.take_along_axis(valid, idx, axis=1))
        else:  # per-patch stem: run it on the kept patches only (each token sees its own patch)
            patches = patchify(images.astype(dt), p)
            pos_n = pos[:, cfg.cls_posemb:]
            pos_bnd = jnp.broadcast_to(pos_n, (images.shape[0],) + pos_n.shape[1:])
            if keep_idx is not None:
                idx = keep_idx.astype(jnp.int32)
                patches = jnp.take_along_axis(patches, idx[..., None], axis=1)
                pos_bnd = jnp.take_along_axis(pos_bnd, idx[..., None], axis=1)
            x_bnd = stems.PatchStem(cfg, name="stem")(patches) + pos_bnd
        n_tokens = x_bnd.shape[1]
        attend = valid
        if cfg.pool == "cls":
            cls = self.param("cls", nn.with_logical_partitioning(
                nn.initializers.zeros_init(), (None, None, sh.EMBED)), (1, 1, cfg.width), pdt)
            cls = cls.astype(dt) + (pos[:, :1] if cfg.cls_posemb else 0)
            x_bnd = jnp.concatenate([jnp.tile(cls, (x_bnd.shape[0], 1, 1)), x_bnd], axis=1)
            if valid is not None:
                attend = jnp.concatenate([jnp.ones_like(valid[:, :1]), valid], axis=1)
        if cfg.ln_pre:
            x_bnd = layers.layer_norm(cfg, "ln_pre")(x_bnd)
        key_mask = None if attend is None else attend[:, None, None, :]  # padding is never attended
        x_bnd = layers.Encoder(cfg, name="encoder")(x_bnd, key_mask, train)
        if cfg.ln_post:
            x_bnd = layers.layer_norm(cfg, "ln_post")(x_bnd)

        tokens = x_bnd[:, -n_tokens:]
        if cfg.pool == "cls":
            pooled = x_bnd[:, 0]
        elif cfg.pool == "mean":
            if valid is None:
                pooled = tokens.mean(axis=1)
            else:
                w = valid[..., None].astype(tokens.dtype)
                pooled = jnp.sum(tokens * w, axis=1) / jnp.maximum(jnp.sum(w, axis=1), 1.0)
        elif cfg.pool == "map":
            pooled = layers.MapHead(cfg, name="map_head")(
                tokens, None if valid is None else valid[:, None, None, :])
        else:  # 'none': first token, for models that pool outside
            pooled = tokens[:, 0]
        emb = pooled
        if cfg.head:
            emb = nn.Dense(self.embed_dim, use_bias=cfg.head_bias, dtype=dt, param_dtype=pdt,
                           kernel_init=layers.dense_init((sh.EMBED, None)),
                           bias_init=layers.bias_init((None,)), name="head")(pooled)
        out = {"tokens": tokens, "pooled": pooled}
        if valid is not None:
            out["valid"] = valid
        return emb, out
