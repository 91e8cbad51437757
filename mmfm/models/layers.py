"""Transformer building blocks shared by the image tower, text tower and MAE decoder.

Parameter names (`attn/query`, `mlp/fc1`, ...) are the checkpoint and conversion format: keep them
stable. Every weight carries logical axis names (mmfm.sharding) for the mesh rules.
"""
from __future__ import annotations

import functools
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.ad_checkpoint import checkpoint_name

from mmfm import sharding as sh
from mmfm.models.config import EncoderConfig

Array = jax.Array


def dtype_of(name: str) -> Any:
    return {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}[name]


def gelu_exact(x: Array) -> Array:
    """x * Phi(x) written with erf, as torch computes it. jax.nn.gelu's erfc form is the same
    function but its lowering costs ~5x more on CPU, a tenth of a CLIP train step there."""
    return x * 0.5 * (1.0 + jax.lax.erf(x * np.sqrt(0.5).astype(x.dtype)))


def activation(name: str):
    if name == "quick_gelu":  # OpenAI CLIP's x * sigmoid(1.702 x)
        return lambda x: x * jax.nn.sigmoid(1.702 * x)
    return {"gelu": gelu_exact,
            "gelu_tanh": functools.partial(nn.gelu, approximate=True), "relu": nn.relu}[name]


def dense_init(names: tuple[str, ...]):
    return nn.with_logical_partitioning(nn.initializers.xavier_uniform(), names)


def bias_init(names: tuple[str, ...]):
    return nn.with_logical_partitioning(nn.initializers.zeros_init(), names)


def layer_norm(cfg: EncoderConfig, name: str) -> nn.LayerNorm:
    return nn.LayerNorm(
        epsilon=cfg.ln_eps, dtype=dtype_of(cfg.dtype), param_dtype=dtype_of(cfg.param_dtype),
        scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), (sh.EMBED,)),
        bias_init=bias_init((sh.EMBED,)), name=name)


def sincos_2d(grid: int, width: int, temperature: float = 10_000.0) -> np.ndarray:
    """Fixed 2-D sin-cos position embedding [grid*grid, width] (MoCo v3 / big_vision layout)."""
    if width % 4:
        raise ValueError(f"sincos2d position embedding needs width divisible by 4, got {width}")
    y, x = np.mgrid[:grid, :grid]
    omega = 1.0 / temperature ** (np.arange(width // 4) / (width // 4 - 1 if width > 4 else 1))
    y = y.reshape(-1)[:, None] * omega[None]
    x = x.reshape(-1)[:, None] * omega[None]
    return np.concatenate([np.sin(x), np.cos(x), np.sin(y), np.cos(y)], axis=1).astype(np.float32)


def cast(a, dtype):
    """`a` in `dtype`, and `a` itself when it already is: a quantized kernel (a qwix `WithAux`,
    float dtype, no working `astype`) must reach its einsum as it is, or qwix takes it for an
    activation."""
    return a if a.dtype == dtype else a.astype(dtype)


class Attention(nn.Module):
    """Multi-head self-attention (or cross-attention when `kv` is given).

    x: [batch, q_len, width]; kv: [batch, kv_len, width]; mask: bool broadcastable to
    [batch, heads, q_len, kv_len] (True = attend).
    """
    cfg: EncoderConfig

    def _proj(self, name: str, x: Array, shape: tuple[int, ...], names: tuple, in_axis, out_axis,
              eq: str, bias_shape: tuple[int, ...], bias_names: tuple) -> Array:
        cfg = self.cfg
        init = nn.initializers.variance_scaling(1.0, "fan_avg", "uniform", in_axis=in_axis,
                                                out_axis=out_axis)
        kernel = self.param(f"{name}_kernel", nn.with_logical_partitioning(init, names), shape,
                            dtype_of(cfg.param_dtype))
        bias = self.param(f"{name}_bias", bias_init(bias_names), bias_shape, dtype_of(cfg.param_dtype))
        dt = dtype_of(cfg.dtype)
        return jnp.einsum(eq, cast(x, dt), cast(kernel, dt)) + cast(bias, dt)

    @nn.compact
    def __call__(self, x: Array, kv: Optional[Array] = None, *, mask: Optional[Array] = None,
                 causal: bool = False) -> Array:
        cfg = self.cfg
        kv = x if kv is None else kv
        hd = cfg.width // cfg.heads
        qkv = dict(shape=(cfg.width, cfg.heads, hd), names=(sh.EMBED, sh.HEADS, sh.KV), in_axis=0,
                   out_axis=(1, 2), eq="btd,dhk->bthk", bias_shape=(cfg.heads, hd),
                   bias_names=(sh.HEADS, sh.KV))
        q = self._proj("query", x, **qkv)
        k = self._proj("key", kv, **qkv)
        v = self._proj("value", kv, **qkv)
        out = jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=causal,
                                           implementation=cfg.attn_impl)
        return self._proj("out", out, (cfg.heads, hd, cfg.width), (sh.HEADS, sh.KV, sh.EMBED),
                          (0, 1), 2, "bthk,hkd->btd", (cfg.width,), (sh.EMBED,))


class Mlp(nn.Module):
    cfg: EncoderConfig

    @nn.compact
    def __call__(self, x: Array) -> Array:
        cfg = self.cfg
        kw = dict(dtype=dtype_of(cfg.dtype), param_dtype=dtype_of(cfg.param_dtype))
        h = nn.Dense(cfg.mlp_dim, kernel_init=dense_init((sh.EMBED, sh.MLP)),
                     bias_init=bias_init((sh.MLP,)), name="fc1", **kw)(x)
        h = nn.with_logical_constraint(activation(cfg.act)(h), (sh.BATCH, sh.SEQ, sh.MLP))
        return nn.Dense(cfg.width, kernel_init=dense_init((sh.MLP, sh.EMBED)),
                        bias_init=bias_init((sh.EMBED,)), name="fc2", **kw)(h)


class EncoderBlock(nn.Module):
    """Pre-LN block: x + attn(ln(x)), then x + mlp(ln(x)). x: [batch, seq, width]."""
    cfg: EncoderConfig
    causal: bool = False

    @nn.compact
    def __call__(self, x: Array, mask: Optional[Array] = None, train: bool = False):
        cfg = self.cfg
        x = nn.with_logical_constraint(x, (sh.BATCH, sh.SEQ, sh.EMBED))
        h = Attention(cfg, name="attn")(layer_norm(cfg, "ln1")(x), mask=mask, causal=self.causal)
        h = nn.Dropout(cfg.dropout)(h, deterministic=not train)
        x = x + checkpoint_name(h, "attn_out")
        h = Mlp(cfg, name="mlp")(layer_norm(cfg, "ln2")(x))
        h = nn.Dropout(cfg.dropout)(h, deterministic=not train)
        x = x + checkpoint_name(h, "mlp_out")
        return nn.with_logical_constraint(x, (sh.BATCH, sh.SEQ, sh.EMBED)), None


_REMAT_POLICIES = {
    "full": None,  # save nothing: recompute the whole block
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


class Encoder(nn.Module):
    """`depth` EncoderBlocks, looped (params `block_0`...) or scanned (params `blocks`, stacked).

    x: [batch, seq, width] -> [batch, seq, width] (no final norm; towers own that).
    """
    cfg: EncoderConfig
    causal: bool = False

    @nn.compact
    def __call__(self, x: Array, mask: Optional[Array] = None, train: bool = False) -> Array:
        cfg = self.cfg
        block = EncoderBlock
        if cfg.remat != "none":
            block = nn.remat(block, prevent_cse=not cfg.scan, static_argnums=(3,),
                             policy=_REMAT_POLICIES[cfg.remat])
        if cfg.scan:
            stack = nn.scan(
                block, variable_axes={"params": 0}, split_rngs={"params": True, "dropout": True},
                in_axes=(nn.broadcast, nn.broadcast), length=cfg.depth,
                metadata_params={nn.PARTITION_NAME: sh.LAYERS})
            x, _ = stack(cfg, self.causal, name="blocks")(x, mask, train)
        else:
            for i in range(cfg.depth):
                x, _ = block(cfg, self.causal, name=f"block_{i}")(x, mask, train)
        return x


class MapHead(nn.Module):
    """Multihead attention pooling (big_vision MAP): a learned probe attends over the tokens.

    x: [batch, seq, width] -> [batch, width]; `mask` [batch, 1, 1, seq] (True = attend) keeps
    padding out of the pooling.
    """
    cfg: EncoderConfig

    @nn.compact
    def __call__(self, x: Array, mask: Optional[Array] = None) -> Array:
        cfg = self.cfg
        probe = self.param("probe", nn.with_logical_partitioning(
            nn.initializers.xavier_uniform(), (None, None, sh.EMBED)), (1, 1, cfg.width),
            dtype_of(cfg.param_dtype))
        probe = jnp.tile(probe.astype(x.dtype), (x.shape[0], 1, 1))
        x = Attention(cfg, name="attn")(probe, x, mask=mask)
        x = x + Mlp(cfg, name="mlp")(layer_norm(cfg, "ln")(x))
        return x[:, 0]
