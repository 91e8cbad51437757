"""The light MAE decoder: encoded kept patches + mask tokens -> pixels of every patch."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmfm import sharding as sh
from mmfm.models import layers
from mmfm.models.config import DecoderConfig, VitConfig

Array = jax.Array


def scatter_tokens(kept_bkd: Array, keep_idx_bk: Array, fill_d: Array, num_patches: int) -> Array:
    """Place kept tokens back at their patch positions; removed positions get `fill_d`.

    kept [batch, kept, dim], keep_idx [batch, kept] -> [batch, num_patches, dim].
    """
    b, _, d = kept_bkd.shape
    full = jnp.broadcast_to(fill_d.astype(kept_bkd.dtype), (b, num_patches, d))
    return jax.vmap(lambda f, i, x: f.at[i].set(x))(full, keep_idx_bk, kept_bkd)


class MaeDecoder(nn.Module):
    """tokens [batch, kept, enc_width], keep_idx [batch, kept] -> pred [batch, patches, P*P*C].

    Predictions follow mmfm.losses.patchify's order: patches row-major, pixels (row, col, channel).
    """
    cfg: DecoderConfig
    image: VitConfig

    @nn.compact
    def __call__(self, tokens: Array, keep_idx: Array, *, train: bool = False) -> Array:
        cfg, im = self.cfg, self.image
        dt, pdt = layers.dtype_of(cfg.dtype), layers.dtype_of(cfg.param_dtype)
        x = nn.Dense(cfg.width, dtype=dt, param_dtype=pdt, name="embed",
                     kernel_init=layers.dense_init((sh.EMBED, None)),
                     bias_init=layers.bias_init((None,)))(tokens)
        mask_token = self.param("mask_token", nn.with_logical_partitioning(
            nn.initializers.normal(0.02), (sh.EMBED,)), (cfg.width,), pdt)
        x = scatter_tokens(x, keep_idx, mask_token, im.num_patches)
        x = x + jnp.asarray(layers.sincos_2d(im.grid, cfg.width)[None], dt)
        x = layers.Encoder(cfg, name="encoder")(x, None, train)
        x = layers.layer_norm(cfg, "ln")(x)
        out = im.patch_size ** 2 * im.channels
        return nn.Dense(out, dtype=dt, param_dtype=pdt, name="pred",
                        # Input dim `embed`: FSDP shards this kernel like every other one
                        # (it is the largest leaf of a small decoder).
                        kernel_init=layers.dense_init((sh.EMBED, sh.PATCH)),
                        bias_init=layers.bias_init((sh.PATCH,)))(x)
