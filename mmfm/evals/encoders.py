"""Image/text encoders on a mesh: jitted once, fed sharded eval batches, returning host embeddings.

    enc = MeshEncoder(model, mesh=mesh, rules=rules, param_sharding=state_sharding.params)
    img = enc.images(state.params, images_f32)   # numpy [n, D], L2-normalised
    txt = enc.tokens(state.params, tokens_i32)   # numpy [n, D]

Parameters are used where they live (the training state's shardings, FSDP included): nothing is
copied to one host. Each eval batch is split over the mesh's batch axes (every process passes the
same host array and contributes its own devices' slices), and only the `[batch, D]` outputs come
back, replicated, so every process reads them from its own devices. Batches are padded to one
shape, so a run compiles each encoder once (`traces` counts the traces, for tests).
"""
from __future__ import annotations

import collections
from typing import Any, Callable, Optional

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from mmfm import sharding as sh

__all__ = ["MeshEncoder"]


class MeshEncoder:
    """Batched, jitted encoders of one model on one mesh (see the module docstring).

    Args:
      model: a `TwoTower` (or anything with `encode_image` / `encode_text` methods).
      mesh, rules: the mesh and logical axis rules (default: every local device, data parallel).
      param_sharding: the params' shardings (default: replicated on `mesh`).
      batch_size: examples per call, rounded up to a multiple of the mesh's batch shards.
    """

    def __init__(self, model, *, mesh=None, rules=None, param_sharding=None, batch_size: int = 256):
        self.model = model
        self.mesh = mesh if mesh is not None else sh.make_mesh((-1, 1, 1), jax.local_devices())
        self.rules = tuple(rules if rules is not None else sh.DEFAULT_RULES)
        shards = sh.num_batch_shards(self.mesh)
        self.batch_size = -(-max(1, int(batch_size)) // shards) * shards
        self.replicated = NamedSharding(self.mesh, P())
        self.param_sharding = param_sharding if param_sharding is not None else self.replicated
        self.data_sharding = sh.batch_sharding(self.mesh)
        self.traces: collections.Counter = collections.Counter()
        self._fns: dict[str, Callable] = {}

    # ------------------------------------------------------------------ params
    def place(self, params) -> Any:
        """Host (numpy) params -> device arrays with `param_sharding` (once, not per call)."""
        with sh.mesh_context(self.mesh, self.rules):
            return jax.device_put(params, self.param_sharding)

    # ------------------------------------------------------------------ jitted functions
    def _jitted(self, name: str, fn: Callable, num_batch_args: int) -> Callable:
        """`fn(params, *batch_args)` jitted with the param / batch shardings, built once per name."""
        if name not in self._fns:
            def traced(params, *args):
                self.traces[name] += 1  # runs at trace time only
                return fn(params, *args)
            self._fns[name] = jax.jit(
                traced, in_shardings=(self.param_sharding,) + (self.data_sharding,) * num_batch_args,
                out_shardings=self.replicated)
        return self._fns[name]

    def _global(self, x: np.ndarray) -> jax.Array:
        """The same host array on every process -> a global array split over the batch axes."""
        return jax.make_array_from_callback(x.shape, self.data_sharding, lambda idx: x[idx])

    def map_batches(self, name: str, fn: Callable, params, *arrays: np.ndarray,
                    out_dim: Optional[int] = None) -> np.ndarray:
        """Applies jitted `fn(params, *batch)` over `arrays` in padded batches; numpy outputs.

        All arrays share their leading dimension; the last batch is padded by repeating its last
        row, so every call has one shape (one compile per `name`).
        """
        jitted = self._jitted(name, fn, len(arrays))
        n, bs, out = len(arrays[0]), self.batch_size, []
        with sh.mesh_context(self.mesh, self.rules):
            for i in range(0, n, bs):
                chunks = [np.asarray(a[i:i + bs]) for a in arrays]
                pad = bs - len(chunks[0])
                if pad:
                    chunks = [np.concatenate([c, np.repeat(c[-1:], pad, axis=0)]) for c in chunks]
                y = jitted(params, *(self._global(c) for c in chunks))
                # Replicated output: this process's first shard is the whole batch.
                out.append(np.asarray(y.addressable_data(0))[:bs - pad])
        if out:
            return np.concatenate(out)
        return np.zeros((0, out_dim or self.model.cfg.embed_dim), np.float32)

    # ------------------------------------------------------------------ encoders
    def _encode_image(self, params, x):
        return self.model.apply({"params": params}, x, method=self.model.encode_image)[0]

    def _encode_text(self, params, tokens):
        return self.model.apply({"params": params}, tokens, method=self.model.encode_text)[0]

    @property
    def image_fn(self) -> Callable:
        """The jitted `(params, images [batch_size, H, W, 3]) -> [batch_size, D]`."""
        return self._jitted("image", self._encode_image, 1)

    @property
    def text_fn(self) -> Callable:
        """The jitted `(params, tokens [batch_size, L]) -> [batch_size, D]`."""
        return self._jitted("text", self._encode_text, 1)

    def _classify(self, params, x):
        return self.model.apply({"params": params}, x, method=self.model.classify)

    def class_logits(self, params, images: np.ndarray) -> np.ndarray:
        """float32 `[n, H, W, 3]` normalised images -> classifier logits `[n, num_classes]`."""
        return self.map_batches("classify", self._classify, params, np.asarray(images, np.float32),
                                out_dim=self.model.cfg.num_classes)

    def images(self, params, images: np.ndarray) -> np.ndarray:
        """float32 `[n, H, W, 3]` normalised images -> L2-normalised `[n, D]`."""
        return self.map_batches("image", self._encode_image, params, np.asarray(images, np.float32))

    def _patch_tokens(self, params, x):
        return self.model.apply({"params": params}, x, method=self.model.encode_image)[1]["tokens"]

    def patch_tokens(self, params, images: np.ndarray) -> np.ndarray:
        """float32 `[n, H, W, 3]` normalised images -> the image tower's patch tokens `[n, N, W]`
        (after its last LayerNorm, before pooling): the features a dense probe reads."""
        return self.map_batches("patch_tokens", self._patch_tokens, params,
                                np.asarray(images, np.float32))

    def tokens(self, params, tokens: np.ndarray) -> np.ndarray:
        """int32 `[n, L]` token rows -> L2-normalised `[n, D]`."""
        return self.map_batches("text", self._encode_text, params, np.asarray(tokens, np.int32))
