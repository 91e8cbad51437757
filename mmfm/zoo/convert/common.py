"""Shared pieces of the converters: flat '/'-joined parameter dicts, torch->flax layout helpers,
and the check of converted params against an architecture (the error names the first bad path).

Converted params use mmfm's canonical on-disk layout: one `encoder/block_{i}` per layer (no scan
stacking); `to_model_layout` stacks them when the target config scans.
"""
from __future__ import annotations

import re
from typing import Mapping

import numpy as np

from mmfm.models.config import ModelConfig

Flat = dict[str, np.ndarray]


class SourceError(ValueError):
    """Weights that do not fit the converter or the architecture (the message names the tensor)."""


def flatten(tree: Mapping, prefix: str = "") -> Flat:
    """Nested dict -> {'img/encoder/block_0/ln1/scale': array}."""
    out: Flat = {}
    for key, value in tree.items():
        path = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            out.update(flatten(value, path))
        else:
            out[path] = value
    return out


def unflatten(flat: Mapping[str, np.ndarray]) -> dict:
    tree: dict = {}
    for path, value in flat.items():
        node = tree
        *parents, leaf = path.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return tree


# torch layout -> flax layout. A torch Linear weight is [out, in]; flax Dense kernel is [in, out].
def linear(w: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(w).T)


def qkv_kernel(w: np.ndarray, heads: int) -> np.ndarray:
    """torch q/k/v projection [width_out, width_in] -> mmfm [width_in, heads, head_dim]."""
    w = np.asarray(w)
    return np.ascontiguousarray(w.T.reshape(w.shape[1], heads, w.shape[0] // heads))


def qkv_bias(b: np.ndarray, heads: int) -> np.ndarray:
    return np.asarray(b).reshape(heads, -1)


def out_kernel(w: np.ndarray, heads: int) -> np.ndarray:
    """torch out projection [width_out, width_in] -> mmfm [heads, head_dim, width_out]."""
    w = np.asarray(w)
    return np.ascontiguousarray(w.T.reshape(heads, w.shape[1] // heads, w.shape[0]))


def conv_kernel(w: np.ndarray) -> np.ndarray:
    """torch Conv2d [out, in, kh, kw] -> flax Conv HWIO [kh, kw, in, out]."""
    return np.ascontiguousarray(np.asarray(w).transpose(2, 3, 1, 0))


def torch_attention(out: Flat, dst: str, heads: int, *, q, k, v, o, bq, bk, bv, bo) -> None:
    """Writes mmfm attention params under `dst` from separate torch q/k/v/out weights."""
    for name, w, b in (("query", q, bq), ("key", k, bk), ("value", v, bv)):
        out[f"{dst}/{name}_kernel"] = qkv_kernel(w, heads)
        out[f"{dst}/{name}_bias"] = qkv_bias(b, heads)
    out[f"{dst}/out_kernel"] = out_kernel(o, heads)
    out[f"{dst}/out_bias"] = np.asarray(bo)


def split_in_proj(w: np.ndarray, b: np.ndarray):
    """nn.MultiheadAttention's packed in_proj [3*width, width] -> (q, k, v) weights and biases."""
    wq, wk, wv = np.split(np.asarray(w), 3, axis=0)
    bq, bk, bv = np.split(np.asarray(b), 3, axis=0)
    return dict(q=wq, k=wk, v=wv, bq=bq, bk=bk, bv=bv)


def count_layers(keys, pattern: str) -> int:
    """Number of distinct layer indices matching `pattern` (a regex with one (\\d+) group)."""
    rx = re.compile(pattern)
    idx = {int(m.group(1)) for k in keys for m in [rx.search(k)] if m}
    return max(idx) + 1 if idx else 0


class Source:
    """Read-once view of a source state dict that reports missing and unused keys clearly."""

    def __init__(self, tensors: Mapping[str, np.ndarray], what: str):
        self.tensors, self.what, self.used = dict(tensors), what, set()

    def __contains__(self, key: str) -> bool:
        return key in self.tensors

    def __getitem__(self, key: str) -> np.ndarray:
        if key not in self.tensors:
            near = sorted(k for k in self.tensors if k.split(".")[0] == key.split(".")[0])[:8]
            raise SourceError(f"{self.what}: missing tensor {key!r} (keys nearby: {near})")
        self.used.add(key)
        return np.asarray(self.tensors[key])

    def check_all_used(self, ignore: tuple[str, ...] = ()) -> None:
        left = sorted(k for k in self.tensors if k not in self.used and not k.startswith(ignore))
        if left:
            raise SourceError(f"{self.what}: {len(left)} tensor(s) not understood by the converter, "
                             f"e.g. {left[:5]}; is this the right converter/architecture?")


def check_source_shapes(tensors: Mapping[str, np.ndarray], expected: Mapping[str, tuple[int, ...]],
                        arch: str, what: str, ignore: tuple[str, ...] = ()) -> None:
    """Before any reshape: every tensor the architecture needs is present with its shape, and
    nothing else is there. Raises naming the first differing tensor and both shapes."""
    for key, want in expected.items():
        if key not in tensors:
            raise SourceError(f"architecture mismatch ({arch}): {what} lacks tensor {key} {want}")
        got = tuple(np.shape(tensors[key]))
        if got != tuple(want):
            raise SourceError(f"architecture mismatch ({arch}): tensor {key} has shape {got} in the "
                              f"{what} but {tuple(want)} in the architecture")
    extra = sorted(k for k in tensors if k not in expected and not k.startswith(ignore))
    if extra:
        raise SourceError(f"architecture mismatch ({arch}): the {what} has {len(extra)} tensor(s) "
                          f"the architecture lacks, first {extra[0]} {tuple(np.shape(tensors[extra[0]]))}")


def abstract_flat(cfg: ModelConfig) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Canonical (unstacked) parameter shapes of `cfg` from jax.eval_shape (nothing allocated)."""
    import dataclasses

    import flax.linen as nn
    import jax

    from mmfm.models.multimodal import TwoTower, init_params

    flat_cfg = dataclasses.replace(cfg, image=dataclasses.replace(cfg.image, scan=False),
                                   text=dataclasses.replace(cfg.text, scan=False))
    model = TwoTower(flat_cfg)
    shapes = jax.eval_shape(lambda r: nn.meta.unbox(init_params(model, r)), jax.random.PRNGKey(0))
    return {k: (tuple(v.shape), v.dtype) for k, v in flatten(shapes).items()}


def check_params(flat: Mapping[str, np.ndarray], cfg: ModelConfig, arch: str = "model") -> None:
    """Raises naming the first parameter path whose presence or shape differs from `cfg`."""
    want = abstract_flat(cfg)
    for path in sorted(want):
        if path not in flat:
            raise SourceError(f"architecture mismatch ({arch}): parameter {path} {want[path][0]} is "
                             f"missing from the weights")
        got = tuple(np.shape(flat[path]))
        if got != want[path][0]:
            raise SourceError(f"architecture mismatch ({arch}): parameter {path} has shape {got} in "
                             f"the weights but {want[path][0]} in the model")
    extra = sorted(set(flat) - set(want))
    if extra:
        raise SourceError(f"architecture mismatch ({arch}): the weights have parameters the model "
                         f"lacks, first {extra[0]} {tuple(np.shape(flat[extra[0]]))}")


_BLOCK = re.compile(r"^(.*/encoder)/block_(\d+)/(.*)$")
_STACK = re.compile(r"^(.*/encoder)/blocks/(.*)$")


def to_model_layout(flat: Mapping[str, np.ndarray], cfg: ModelConfig) -> Flat:
    """Canonical block_{i} params -> the layout `cfg` builds (stacked `blocks` where scan=True)."""
    scan = {"img": cfg.image.scan, "txt": cfg.text.scan,
            "mae_decoder": bool(cfg.mae_decoder and cfg.mae_decoder.scan)}
    out: Flat = {}
    groups: dict[tuple[str, str], dict[int, np.ndarray]] = {}
    for path, value in flat.items():
        m = _BLOCK.match(path)
        if m and scan.get(path.split("/")[0], False):
            groups.setdefault((m.group(1), m.group(3)), {})[int(m.group(2))] = value
        else:
            out[path] = value
    for (enc, rest), layers in groups.items():
        out[f"{enc}/blocks/{rest}"] = np.stack([layers[i] for i in range(len(layers))])
    return out


def to_canonical(flat: Mapping[str, np.ndarray]) -> Flat:
    """Inverse of to_model_layout: stacked `encoder/blocks/...` -> `encoder/block_{i}/...`."""
    out: Flat = {}
    for path, value in flat.items():
        m = _STACK.match(path)
        if m:
            for i, v in enumerate(np.asarray(value)):
                out[f"{m.group(1)}/block_{i}/{m.group(2)}"] = v
        else:
            out[path] = value
    return out
