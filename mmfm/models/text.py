"""Transformer text encoder with an (embedding-tied) MLM head."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmfm import sharding as sh
from mmfm.models import layers
from mmfm.models.config import TextConfig

Array = jax.Array


def pool_index(tokens: Array, cfg: TextConfig) -> Array:
    """Position [batch] whose hidden state represents the sequence."""
    if cfg.pool == "eot":
        is_eot = tokens == cfg.eot_id
        # A sequence without EOT (over-long, truncated by someone else) pools at its last position.
        return jnp.where(is_eot.any(-1), jnp.argmax(is_eot, axis=-1), tokens.shape[-1] - 1)
    if cfg.pool == "argmax":  # open_clip: EOT has the largest id in the CLIP BPE vocabulary
        return jnp.argmax(tokens, axis=-1)
    if cfg.pool == "last":
        return jnp.full(tokens.shape[:1], tokens.shape[-1] - 1)
    return jnp.zeros(tokens.shape[:1], jnp.int32)


class TextTransformer(nn.Module):
    """tokens int [batch, seq] -> (embedding [batch, embed_dim], out dict).

    out holds `tokens` [batch, seq, width] (final-normed hidden states), `pooled` [batch, width],
    and with `mlm=True` also `mlm_logits` [batch, seq, vocab] from the tied MLM head.
    """
    cfg: TextConfig
    embed_dim: int

    @nn.compact
    def __call__(self, tokens: Array, *, train: bool = False, mlm: bool = False):
        cfg = self.cfg
        dt, pdt = layers.dtype_of(cfg.dtype), layers.dtype_of(cfg.param_dtype)
        if tokens.shape[-1] > cfg.context_length:
            raise ValueError(f"tokens have length {tokens.shape[-1]} > model.text.context_length "
                             f"{cfg.context_length}")
        embed = nn.Embed(cfg.vocab_size, cfg.width, dtype=dt, param_dtype=pdt, name="embedding",
                         embedding_init=nn.with_logical_partitioning(
                             nn.initializers.normal(0.02), (sh.VOCAB, sh.EMBED)))
        pos = self.param("pos_embedding", nn.with_logical_partitioning(
            nn.initializers.normal(0.01), (None, sh.SEQ, sh.EMBED)), (1, cfg.context_length, cfg.width), pdt)
        seq = tokens.shape[-1]
        x = embed(tokens) + pos[:, :seq].astype(dt)

        mask = None
        if cfg.mask_pad and not cfg.causal:  # [batch, 1, 1, kv]: never attend to padding
            mask = (tokens != cfg.pad_id)[:, None, None, :]
        x = layers.Encoder(cfg, causal=cfg.causal, name="encoder")(x, mask, train)
        x = layers.layer_norm(cfg, "ln_final")(x)

        if cfg.pool == "mean":
            valid = (tokens != cfg.pad_id)[..., None].astype(x.dtype)
            pooled = (x * valid).sum(1) / jnp.maximum(valid.sum(1), 1)
        else:
            pooled = jnp.take_along_axis(x, pool_index(tokens, cfg)[:, None, None], axis=1)[:, 0]
        emb = nn.Dense(self.embed_dim, use_bias=cfg.head_bias, dtype=dt, param_dtype=pdt,
                       kernel_init=layers.dense_init((sh.EMBED, None)),
                       bias_init=layers.bias_init((None,)), name="head")(pooled)
        out = {"tokens": x, "pooled": pooled}
        if cfg.mlm_head and mlm:
            out["mlm_logits"] = self._mlm_logits(x, embed)
        return emb, out

    def _mlm_logits(self, x: Array, embed: nn.Embed) -> Array:
        """BERT-style head: dense -> gelu -> LN -> tied output embedding + bias."""
        cfg = self.cfg
        dt, pdt = layers.dtype_of(cfg.dtype), layers.dtype_of(cfg.param_dtype)
        h = nn.Dense(cfg.width, dtype=dt, param_dtype=pdt, name="mlm_dense",
                     kernel_init=layers.dense_init((sh.EMBED, None)), bias_init=layers.bias_init((None,)))(x)
        h = layers.layer_norm(cfg, "mlm_ln")(nn.gelu(h))
        bias = self.param("mlm_bias", nn.with_logical_partitioning(
            nn.initializers.zeros_init(), (sh.VOCAB,)), (cfg.vocab_size,), pdt)
        logits = embed.attend(h) + bias.astype(dt)
        return nn.with_logical_constraint(logits, (sh.BATCH, sh.SEQ, sh.VOCAB))
