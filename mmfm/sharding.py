"""Logical axis names, mesh construction and logical->mesh rules.

Every weight and activation is annotated with the logical names below; the mapping to mesh axes
lives in config (`config.mesh.rules`), so the same model runs data-parallel, FSDP or tensor-parallel.
"""
from __future__ import annotations

from typing import Sequence

import jax
import numpy as np

# One vocabulary of logical axis names (maxtext's habit). Models import these, never strings.
BATCH = "batch"
SEQ = "seq"
EMBED = "embed"
MLP = "mlp"
HEADS = "heads"
KV = "kv"
VOCAB = "vocab"
PATCH = "patch"  # flattened patch pixels (input of the patch embedding)
LAYERS = "layers"  # the stacked-layer axis of nn.scan; never sharded

MESH_AXES = ("data", "fsdp", "tensor")

# Defaults: pure data parallel over ('data', 'fsdp'); weights sharded over 'fsdp' (size 1 by
# default, so replicated) and 'tensor'.
DEFAULT_RULES: tuple[tuple[str, object], ...] = (
    (BATCH, ("data", "fsdp")),
    (EMBED, "fsdp"),
    (MLP, "tensor"),
    (HEADS, "tensor"),
    (VOCAB, "tensor"),
)


def make_mesh(shape: Sequence[int] = (-1, 1, 1), devices=None) -> jax.sharding.Mesh:
    """Mesh over ('data', 'fsdp', 'tensor'); one -1 entry is filled with the remaining devices."""
    devices = list(jax.devices() if devices is None else devices)
    shape = list(shape)
    if len(shape) != len(MESH_AXES):
        raise ValueError(f"mesh.shape must have {len(MESH_AXES)} entries {MESH_AXES}, got {shape}")
    if shape.count(-1) > 1:
        raise ValueError(f"mesh.shape may contain at most one -1, got {shape}")
    known = int(np.prod([s for s in shape if s != -1]))
    if -1 in shape:
        if len(devices) % known:
            raise ValueError(f"mesh.shape {shape}: {len(devices)} devices not divisible by {known}")
        shape[shape.index(-1)] = len(devices) // known
    if int(np.prod(shape)) != len(devices):
        raise ValueError(f"mesh.shape {shape} needs {int(np.prod(shape))} devices, have {len(devices)}")
    return jax.make_mesh(
        tuple(shape), MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES),
        devices=devices)


def batch_spec() -> jax.sharding.PartitionSpec:
    return jax.sharding.PartitionSpec(("data", "fsdp"))
