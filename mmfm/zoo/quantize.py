"""Int8 weight quantization of mmfm models with qwix (Google's JAX quantization library).

Post-training, weight-only by default: every matmul with a weight operand (attention q/k/v/out,
MLP fc1/fc2, the towers' projection heads, the hMLP stem cells, the MAE decoder) holds int8 values
and one float32 scale per output channel (symmetric absmax: scale = max|w| / 127.5 over the
contracted axes, q = round(w / scale) in [-128, 127]); the text token embedding holds int8 rows
with one scale per row. LayerNorms, biases, position tables, the temperature and a convolutional
(linear) patch embedding stay float32: together they are a few percent of a ViT-B.

The model is the same `TwoTower` with its methods wrapped by `qwix.quantize_model`: qwix
intercepts `dot_general` / `einsum` inside `model.apply` and runs them on the int8 `QArray`s
(dequantised in the matmul on CPU), so `model.apply({"params": p}, x, method=model.encode_image)`
works unchanged on the quantized params. Activations stay float by default.

`activations="int8"` (W8A8) also quantizes, at run time, the other operand of every
`dot_general` / `einsum` to int8: symmetric absmax with one scale per token (per row of every
non-contracted axis, qwix's dynamic range), including the two attention products (q.k and p.v,
both operands activations). XLA:CPU then runs real s8 x s8 -> s32 dots and rescales the int32
result in float. It needs the weights to reach qwix as its `WithAux` (a bare `QArray` would be
taken for an activation and re-quantized, which fails), which is why mmfm's layers cast a kernel
only when its dtype differs (`mmfm.models.layers.cast`): the compute dtype must be float32.

On disk (an export directory, `mmfm.zoo.export` layout) each quantized parameter keeps its name and
shape with int8 values, and `<name>.scale` holds its scales (broadcastable to the weight);
config.json's "quantization" entry records the method, library, channel axes and layer list.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import qwix

from mmfm.models.config import ModelConfig
from mmfm.models.multimodal import TwoTower, init_params
from mmfm.zoo.convert import common
from mmfm.zoo.pretrained import SCALE_SUFFIX

EMBEDDING = "txt/embedding/embedding"
METHODS = ("__call__", "encode_image", "encode_text", "classify")
ACTIVATIONS = ("float", "int8")
ACTIVATION_METHOD = ("dynamic symmetric absmax, one scale per token, computed at run time; every "
                     "dot_general / einsum (attention q.k and p.v too) runs int8 x int8 -> int32")


class Int8Provider(qwix.PtqProvider):
    """qwix's PTQ provider, extended for two things mmfm's modules do that it does not cover.

    1. mmfm's layers cast their kernels to the compute dtype before the einsum; qwix's `WithAux`
       wrapper cannot be cast in qwix 0.1.8, its `QArray` can: for weight-only models
       (`bare_weights`) params come back as the bare `QArray` (qwix's einsum / dot_general take
       those directly). int8 activations need the `WithAux` (see the module docstring).
    2. Token embeddings are a gather, not a matmul, so qwix leaves them alone: an int8 `QArray`
       table is gathered row by row (`jnp.take`) and dequantised with each row's scale.
    """

    def __init__(self, rules, *, bare_weights: bool = True):
        super().__init__(rules)
        self.bare_weights = bare_weights

    def nn_param(self, module: nn.Module, name: str, *args, **kwargs):
        existing = module.get_variable("params", name)
        if isinstance(existing, qwix.QArray):
            return existing
        value = super().nn_param(module, name, *args, **kwargs)
        if not self.bare_weights:
            return value
        array = getattr(value, "array", None)  # a qwix WithAux holding the quantized weight
        return array if isinstance(array, qwix.QArray) else value

    def take(self, a, indices, axis=None, **kwargs):
        if hasattr(a, "how"):  # a `WithAux`: the table is also a matmul weight (MLM head)
            a = a.array
        if not isinstance(a, qwix.QArray):
            return jnp.take(a, indices, axis=axis, **kwargs)
        if axis != 0:
            raise ValueError(f"an int8 embedding table is gathered along axis 0, got axis={axis}")
        rows = jnp.take(a.qvalue, indices, axis=0, **kwargs).astype(a.scale.dtype)
        return rows * jnp.take(a.scale, indices, axis=0, **kwargs)

    def get_intercept_map(self):
        return super().get_intercept_map() | {"jax.numpy.take": self.take}


def inference_config(cfg: ModelConfig) -> ModelConfig:
    """Loop layers (params `block_{i}`, the export layout) and no remat: an inference model."""
    def plain(c):
        return dataclasses.replace(c, scan=False, remat="none")
    return dataclasses.replace(cfg, image=plain(cfg.image), text=plain(cfg.text),
                               mae_decoder=None if cfg.mae_decoder is None else plain(cfg.mae_decoder))


def quantize_model(model: TwoTower, activations: str = "float") -> TwoTower:
    """`model` with its methods running int8 weights (and int8 activations if asked)."""
    if activations not in ACTIVATIONS:
        raise ValueError(f"activations={activations!r} is not supported (one of {ACTIVATIONS}); "
                         f"see mmfm.zoo.quantize")
    cfg = model.cfg
    dtypes = {t.dtype for t in (cfg.image, cfg.text, cfg.mae_decoder) if t is not None}
    if activations == "int8" and dtypes != {"float32"}:
        raise ValueError(f"int8 activations need float32 compute (qwix 0.1.8 cannot cast a "
                         f"quantized kernel), the model computes in {sorted(dtypes)}")
    act = jnp.int8 if activations == "int8" else None
    rule = qwix.QuantizationRule(module_path=".*", op_names=("dot_general", "einsum"),
                                 weight_qtype=jnp.int8, act_qtype=act)
    # op_names: qwix's conv path needs int8 activations; the (small) patch conv stays float.
    return qwix.quantize_model(model, Int8Provider([rule], bare_weights=act is None),
                               methods=METHODS)


def _abstract_quantized(qmodel: TwoTower):
    """The quantized param tree's structure (qwix `WithAux` leaves know their channel axes)."""
    return jax.eval_shape(lambda r: nn.meta.unbox(init_params(qmodel, r)), jax.random.PRNGKey(0))


def _is_leaf(x) -> bool:
    return isinstance(x, qwix.QArray) or hasattr(x, "how")


def _flatten(tree, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in tree.items():
        path = f"{prefix}{k}"
        if isinstance(v, dict) and not _is_leaf(v):
            out.update(_flatten(v, path + "/"))
        else:
            out[path] = v
    return out


def _channel_axes(scale_shape, weight_shape) -> list[int]:
    return [i for i, (s, w) in enumerate(zip(scale_shape, weight_shape)) if s == w and w > 1]


def quantize_params(model: TwoTower, params: dict, activations: str = "float"
                    ) -> tuple[TwoTower, dict, dict]:
    """(quantized model, quantized params, {param name: per-channel axes}) from float params.

    params: the model-layout tree of `model` (loop layers, see `inference_config`).
    """
    qmodel = quantize_model(model, activations)
    abstract = _abstract_quantized(qmodel)
    params = jax.tree.map(jnp.asarray, params)
    qparams = qwix.quantize_params(params, abstract)
    flat = _flatten(qparams)
    if EMBEDDING in flat:  # one scale per token row (qwix quantizes matmuls only)
        flat[EMBEDDING] = qwix.quantize(params["txt"]["embedding"]["embedding"], jnp.int8,
                                        channelwise_axes=[0])
    layers = {}
    for name, leaf in flat.items():
        q = getattr(leaf, "array", leaf)
        if isinstance(q, qwix.QArray):
            layers[name] = _channel_axes(q.scale.shape, q.qvalue.shape)
    return qmodel, common.unflatten(flat), layers


def to_safetensors(qparams: dict) -> dict[str, np.ndarray]:
    """Quantized tree -> flat numpy arrays: int8 values under the param's name, `<name>.scale`."""
    out = {}
    for name, leaf in _flatten(qparams).items():
        q = getattr(leaf, "array", leaf)
        if isinstance(q, qwix.QArray):
            if q.zero_point is not None:
                raise ValueError(f"{name}: asymmetric quantization is not stored by mmfm exports")
            out[name] = np.asarray(q.qvalue)
            out[name + SCALE_SUFFIX] = np.asarray(q.scale, np.float32)
        else:
            out[name] = np.asarray(leaf)
    return out


def split_scales(flat: dict) -> tuple[dict, dict]:
    """(values under the model's param names, {name: scale}) of a quantized export's tensors."""
    values = {k: v for k, v in flat.items() if not k.endswith(SCALE_SUFFIX)}
    scales = {k[: -len(SCALE_SUFFIX)]: v for k, v in flat.items() if k.endswith(SCALE_SUFFIX)}
    return values, scales


def load_quantized(model: TwoTower, flat: dict, meta: dict) -> tuple[TwoTower, dict]:
    """(quantized model, device params) from an export's tensors and its "quantization" entry."""
    check_meta(meta)
    qmodel = quantize_model(model, meta.get("activations", "float"))
    values, scales = split_scales(flat)
    missing = sorted(set(meta["layers"]) - set(scales))
    if missing:
        raise ValueError(f"quantized export: {missing[0]} has no {SCALE_SUFFIX} tensor")
    out = {}
    for name, leaf in _flatten(_abstract_quantized(qmodel)).items():
        if name not in values:
            raise ValueError(f"quantized export: parameter {name} is missing")
        v = jnp.asarray(values[name])
        if name in scales:
            q = qwix.QArray(qvalue=v, scale=jnp.asarray(scales[name]), zero_point=None,
                            qtype=jnp.int8)
            out[name] = leaf.replace(array=q) if hasattr(leaf, "how") else q
        else:
            out[name] = v.astype(leaf.dtype)
    return qmodel, common.unflatten(out)


def check_meta(meta: dict) -> None:
    if meta.get("library") != "qwix" or meta.get("weight_dtype") != "int8":
        raise ValueError(f"unsupported quantization {meta}: mmfm reads qwix int8 exports")


def describe(layers: dict, activations: str) -> dict:
    """The config.json "quantization" entry."""
    return {"method": "post-training symmetric absmax, per output channel (token embedding: "
                      "per row)",
            "library": "qwix", "library_version": qwix.__version__, "weight_dtype": "int8",
            "scale_dtype": "float32", "activations": activations,
            **({"activation_method": ACTIVATION_METHOD} if activations == "int8" else {}),
            "float_params": "LayerNorm scales/biases, biases, position tables, temperature, "
                            "convolutional patch embedding",
            "layers": layers}


def quantize_flat(cfg: ModelConfig, flat: dict, activations: str = "float"
                  ) -> tuple[ModelConfig, dict[str, np.ndarray], dict]:
    """Canonical float flat params -> (inference config, export tensors, "quantization" entry)."""
    cfg = inference_config(cfg)
    tree = common.unflatten({k: np.asarray(v, np.float32) for k, v in flat.items()})
    _, qparams, layers = quantize_params(TwoTower(cfg), tree, activations)
    return cfg, to_safetensors(qparams), describe(layers, activations)


def file_bytes(path: str) -> int:
    """Bytes of a directory's files (the export's size on disk)."""
    import os
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def dequantize(values: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """int8 values and their broadcastable scales -> float32 weights."""
    return values.astype(np.float32) * np.asarray(scale, np.float32)


def quantization_of(path: str) -> Optional[dict]:
    """The "quantization" entry of an export directory's config.json (None: a float export)."""
    from mmfm.zoo.pretrained import read_export_config
    return read_export_config(path).get("quantization")
