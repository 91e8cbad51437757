"""Train state and its creation directly onto a mesh (never materialised on one device first)."""
from __future__ import annotations

from typing import Any

import flax
import flax.linen as nn
import jax
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from mmfm import sharding as sh
from mmfm.models.multimodal import TwoTower, init_params


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array


def create_state(rng: jax.Array, *, model: TwoTower, tx: optax.GradientTransformation) -> TrainState:
    r_init, r_train = jax.random.split(rng)
    params = nn.meta.unbox(init_params(model, r_init))
    return TrainState(step=jax.numpy.zeros((), jax.numpy.int32), params=params,
                      opt_state=tx.init(params), rng=r_train)


def param_shardings(model: TwoTower, mesh, rules):
    """NamedShardings of the (unboxed) params, from logical names on an abstract init."""
    boxed = jax.eval_shape(lambda r: init_params(model, r), jax.random.PRNGKey(0))
    # Dimensions the mesh cannot split evenly (e.g. an odd vocabulary over 'tensor') replicate.
    return sh.boxed_shardings(boxed, mesh, rules)


def state_shardings(model: TwoTower, tx, mesh, rules) -> TrainState:
    """Shardings of every TrainState leaf; optimizer state follows its parameter."""
    p_sh = param_shardings(model, mesh, rules)
    abstract_params = jax.eval_shape(lambda r: nn.meta.unbox(init_params(model, r)), jax.random.PRNGKey(0))
    replicated = NamedSharding(mesh, P())
    # Frozen parameters (optim.freeze -> optax.multi_transform) hold MaskedNode placeholders in the
    # state of the other transforms; they stay placeholders here.
    masked = lambda x: isinstance(x, optax.MaskedNode)
    opt_sh = optax.tree_utils.tree_map_params(
        tx, lambda v, s: v if masked(v) else s, jax.eval_shape(tx.init, abstract_params), p_sh,
        transform_non_params=lambda _: replicated,
        is_leaf=lambda x: isinstance(x, NamedSharding) or masked(x))
    return TrainState(step=replicated, params=p_sh, opt_state=opt_sh, rng=replicated)
