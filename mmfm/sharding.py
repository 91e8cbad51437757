"""Logical axis names, mesh construction, logical->mesh rules and sharding helpers.

Every weight and activation is annotated with the logical names below; the mapping to mesh axes
lives in config (`config.mesh.rules`), so the same model runs data-parallel, FSDP or tensor-parallel:

  config.mesh.shape  (data, fsdp, tensor), one entry may be -1 (filled with the remaining devices)
  config.mesh.rules  ((logical name, mesh axis or tuple of axes or None), ...)

With the default rules the mesh shape alone picks the strategy: (-1,1,1) is pure data parallel,
(1,-1,1) is FSDP (weights and optimizer state split over 'fsdp' along their `embed` dimension,
ZeRO-3 style: XLA all-gathers a layer's weights where it is used), and (1,-1,T) adds tensor
parallelism (`mlp`, `heads`, `vocab` split over 'tensor'). The batch is always split over
('data', 'fsdp') jointly; 'tensor' holds replicas of the batch.
"""
from __future__ import annotations

import contextlib
import logging
import math
from typing import Any, Mapping, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from mmfm.compile_cache import guard_multi_device_cpu_cache

log = logging.getLogger("mmfm")

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
LOGICAL_NAMES = (BATCH, SEQ, EMBED, MLP, HEADS, KV, VOCAB, PATCH, LAYERS)

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")  # the global batch is split over these jointly, major to minor

# Rule presets. Each is a complete rule set; a logical name without a rule is replicated.
RULES_DP: tuple[tuple[str, Any], ...] = ((BATCH, BATCH_AXES),)
RULES_FSDP = RULES_DP + ((EMBED, "fsdp"),)
RULES_FSDP_TENSOR = RULES_FSDP + ((MLP, "tensor"), (HEADS, "tensor"), (VOCAB, "tensor"))
# Defaults: the full set, so the mesh shape alone chooses DP / FSDP / FSDP+tensor.
DEFAULT_RULES = RULES_FSDP_TENSOR
RULE_PRESETS = {"dp": RULES_DP, "fsdp": RULES_FSDP, "fsdp_tensor": RULES_FSDP_TENSOR}
# Mesh shape presets to pair with them (tensor=2 is a starting point; set it to the model's heads).
MESH_PRESETS = {"dp": (-1, 1, 1), "fsdp": (1, -1, 1), "fsdp_tensor": (1, -1, 2)}


def make_mesh(shape: Sequence[int] = (-1, 1, 1), devices=None) -> Mesh:
    """Mesh over ('data', 'fsdp', 'tensor'); one -1 entry is filled with the remaining devices.

    Axis types are Auto (classic in/out-shardings code; see JAX_NOTES.md). `devices` defaults to
    every device of every process.
    """
    devices = list(jax.devices() if devices is None else devices)
    shape = list(shape)
    if len(shape) != len(MESH_AXES):
        raise ValueError(f"mesh.shape must have {len(MESH_AXES)} entries {MESH_AXES}, got {shape}")
    if shape.count(-1) > 1:
        raise ValueError(f"mesh.shape may contain at most one -1, got {shape}")
    if any(s == 0 or s < -1 for s in shape):
        raise ValueError(f"mesh.shape entries must be positive or -1, got {shape}")
    known = int(np.prod([s for s in shape if s != -1]))
    if -1 in shape:
        if len(devices) % known:
            raise ValueError(f"mesh.shape {shape}: {len(devices)} devices not divisible by {known}")
        shape[shape.index(-1)] = len(devices) // known
    if int(np.prod(shape)) != len(devices):
        raise ValueError(f"mesh.shape {shape} needs {int(np.prod(shape))} devices, have {len(devices)}")
    guard_multi_device_cpu_cache(devices)  # before anything is compiled for this mesh
    return jax.make_mesh(
        tuple(shape), MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES),
        devices=devices)


def normalize_rules(rules, where: str = "mesh.rules") -> tuple[tuple[str, Any], ...]:
    """Validated rules as a hashable tuple; `rules` may also be a preset name ('dp', 'fsdp', ...).

    Lists (from JSON / ConfigDict) become tuples. Unknown logical names or mesh axes raise,
    naming `where`.
    """
    if isinstance(rules, str):
        if rules not in RULE_PRESETS:
            raise ValueError(f"{where}: unknown preset {rules!r}; valid: {sorted(RULE_PRESETS)}")
        return RULE_PRESETS[rules]
    out = []
    for i, rule in enumerate(rules):
        if not isinstance(rule, (list, tuple)) or len(rule) != 2:
            raise ValueError(f"{where}[{i}]: expected a (logical name, mesh axes) pair, got {rule!r}")
        name, axes = rule
        if name not in LOGICAL_NAMES:
            raise ValueError(f"{where}[{i}]: unknown logical name {name!r}; valid: {LOGICAL_NAMES}")
        if isinstance(axes, (list, tuple)):
            axes = tuple(axes)
            names = axes
        else:
            names = () if axes is None else (axes,)
        bad = [a for a in names if a not in MESH_AXES]
        if bad:
            raise ValueError(f"{where}[{i}] ({name!r}): unknown mesh axis {bad}; valid: {MESH_AXES}")
        out.append((name, axes))
    seen = [n for n, _ in out]
    dup = sorted({n for n in seen if seen.count(n) > 1})
    if dup:
        raise ValueError(f"{where}: logical name(s) {dup} have more than one rule")
    return tuple(out)


def mesh_from_config(mesh_cfg, devices=None) -> tuple[Mesh, tuple[tuple[str, Any], ...]]:
    """(Mesh, rules) from `config.mesh` ({'shape': ..., 'rules': ...})."""
    get = mesh_cfg.get if hasattr(mesh_cfg, "get") else lambda k, d=None: getattr(mesh_cfg, k, d)
    rules = normalize_rules(get("rules", DEFAULT_RULES))
    return make_mesh(tuple(get("shape", (-1, 1, 1))), devices), rules


@contextlib.contextmanager
def mesh_context(mesh: Mesh, rules):
    """`jax.set_mesh` + flax logical axis rules, so logical constraints resolve to `mesh`."""
    import flax.linen as nn  # flax loads only where models run

    with jax.set_mesh(mesh), nn.logical_axis_rules(tuple(rules)):
        yield


def local_mesh() -> Mesh:
    """A one-axis ('data') mesh over this process's devices: host-local work such as metrics."""
    devices = jax.local_devices()
    guard_multi_device_cpu_cache(devices)
    return Mesh(np.asarray(devices), ("data",))


def batch_spec() -> P:
    return P(BATCH_AXES)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dimension split over ('data', 'fsdp'); the rest replicated."""
    return NamedSharding(mesh, batch_spec())


def num_batch_shards(mesh: Mesh) -> int:
    return math.prod(mesh.shape[a] for a in BATCH_AXES)


def check_batch_axes(mesh: Mesh, batch_size: int, num_processes: int | None = None) -> None:
    """Clear errors when the global batch cannot be split as the mesh and processes need."""
    n_proc = jax.process_count() if num_processes is None else num_processes
    shards = num_batch_shards(mesh)
    if batch_size % shards:
        raise ValueError(f"batch_size {batch_size} is not divisible by the {shards} devices of the "
                         f"mesh's batch axes (data x fsdp = {dict(mesh.shape)})")
    if batch_size % n_proc:
        raise ValueError(f"batch_size {batch_size} is not divisible by the {n_proc} processes")
    if shards % n_proc:
        # Each process feeds a distinct slice, so the batch axes must span the processes.
        raise ValueError(f"mesh.shape {dict(mesh.shape)}: data x fsdp = {shards} must be a multiple "
                         f"of the {n_proc} processes (each process reads its own slice of the batch)")


def _path_str(path) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


def logical_to_shardings(logical_specs, shapes, mesh: Mesh, rules) -> Any:
    """NamedShardings from logical PartitionSpecs; a dimension the mesh cannot split evenly is
    replicated instead (JAX needs even shards), with one log line listing the parameters.

    Args:
      logical_specs: tree of logical `PartitionSpec`s (e.g. `nn.get_partition_spec(boxed)`).
      shapes: tree of the same structure with `.shape` leaves (e.g. `jax.eval_shape` output).
    """
    import flax.linen as nn  # flax only where logical names are resolved

    rules = normalize_rules(rules)
    fallbacks = []

    def one(path, spec, shape):
        mesh_spec = nn.logical_to_mesh_axes(tuple(spec), rules) if spec is not None else P()
        dims = list(mesh_spec) + [None] * (len(shape.shape) - len(mesh_spec))
        for d, axes in enumerate(dims):
            names = axes if isinstance(axes, tuple) else (() if axes is None else (axes,))
            if shape.shape[d] % math.prod(mesh.shape[a] for a in names):
                fallbacks.append(f"{_path_str(path)}{list(shape.shape)} dim {d} over {axes}")
                dims[d] = None
        return NamedSharding(mesh, P(*dims))

    is_spec = lambda x: isinstance(x, P) or x is None
    out = jax.tree_util.tree_map_with_path(one, logical_specs, shapes, is_leaf=is_spec)
    if fallbacks:
        log.warning("sharding: %d dimension(s) not divisible by their mesh axes, replicated: %s",
                    len(fallbacks), "; ".join(fallbacks[:8]) + (" ..." if len(fallbacks) > 8 else ""))
    return out


def boxed_shardings(boxed_abstract, mesh: Mesh, rules) -> Any:
    """NamedShardings of the unboxed tree of a boxed (nn.Partitioned) abstract tree."""
    import flax.linen as nn

    return logical_to_shardings(nn.get_partition_spec(boxed_abstract),
                                nn.meta.unbox(boxed_abstract), mesh, rules)


def per_device_bytes(abstract_tree, shardings=None) -> int:
    """Bytes one device holds of `abstract_tree` (ShapeDtypeStructs or arrays).

    Shardings come from `shardings` (same structure) or from each leaf's `.sharding`; with even
    shards every device holds the same amount, so device 0's shard shape is representative.
    """
    leaves = jax.tree.leaves(abstract_tree)
    shs = jax.tree.leaves(shardings, is_leaf=lambda x: isinstance(x, jax.sharding.Sharding)) \
        if shardings is not None else [getattr(x, "sharding", None) for x in leaves]
    if len(shs) != len(leaves):
        raise ValueError(f"per_device_bytes: {len(leaves)} leaves but {len(shs)} shardings")
    total = 0
    for x, s in zip(leaves, shs):
        shape = tuple(x.shape) if s is None else s.shard_shape(tuple(x.shape))
        total += math.prod(shape) * np.dtype(x.dtype).itemsize
    return total


def total_bytes(abstract_tree) -> int:
    return sum(math.prod(x.shape) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(abstract_tree))


def describe_shardings(tree, shardings=None) -> list[tuple[str, tuple, str]]:
    """(path, global shape, PartitionSpec) per leaf: to print or inspect a state's layout."""
    items = jax.tree_util.tree_leaves_with_path(tree)
    shs = jax.tree.leaves(shardings, is_leaf=lambda x: isinstance(x, jax.sharding.Sharding)) \
        if shardings is not None else [getattr(x, "sharding", None) for _, x in items]
    return [(_path_str(p), tuple(x.shape), str(getattr(s, "spec", s)))
            for (p, x), s in zip(items, shs)]


def format_shardings(rows: Sequence[tuple[str, tuple, str]]) -> str:
    width = max((len(r[0]) for r in rows), default=4)
    return "\n".join(f"{p:<{width}}  {str(list(s)):<18} {spec}" for p, s, spec in rows)


def rules_table(rules: Mapping | Sequence) -> str:
    """'batch -> (data, fsdp)' lines, for logs and docs."""
    pairs = rules.items() if isinstance(rules, Mapping) else rules
    return "\n".join(f"{n:>6} -> {a}" for n, a in pairs)
