"""FSDP memory of ViT-B/16: per-device parameter + optimizer bytes under (1,8,1) are at most
1/8 of the unsharded total plus 5%. Computed from the state's shard shapes on an abstract
(`jax.eval_shape`) state: nothing is allocated. The compiled program's numbers are printed by
benchmarks/sharding_memory.py.
"""
import functools

import jax
import ml_collections

from mmfm import sharding as sh
from mmfm.models.config import ModelConfig, text_config, vit_config
from mmfm.models.multimodal import TwoTower
from mmfm.train import optim
from mmfm.train.state import create_state, state_shardings
import pytest

# Minutes of CPU: run by `make test-slow` (and CI), not by `make test`.
pytestmark = pytest.mark.slow


def _vit_b16_clip() -> ModelConfig:
    return ModelConfig(image=vit_config("B/16", image_size=224, pool="cls", scan=True),
                       text=text_config("M", heads=8, vocab_size=49408, context_length=77,
                                        pool="eot", scan=True),
                       embed_dim=512).validate()


def _state_bytes(mesh_shape):
    model = TwoTower(_vit_b16_clip())
    tx, _ = optim.make_optimizer(ml_collections.ConfigDict(dict(
        name="adamw", lr=1e-3, warmup_steps=1, end_lr_frac=0.0, b1=0.9, b2=0.98, eps=1e-6,
        weight_decay=0.1, grad_clip=1.0, freeze=())), 10)
    mesh = sh.make_mesh(mesh_shape)
    shardings = state_shardings(model, tx, mesh, sh.DEFAULT_RULES)
    shapes = jax.eval_shape(functools.partial(create_state, model=model, tx=tx), jax.random.PRNGKey(0))
    tree = (shapes.params, shapes.opt_state)
    n_params = sum(x.size for x in jax.tree.leaves(shapes.params))
    return (sh.per_device_bytes(tree, (shardings.params, shardings.opt_state)),
            sh.total_bytes(tree), n_params)


def test_fsdp_state_is_one_eighth_per_device():
    per_dev, total, n_params = _state_bytes((1, 8, 1))
    assert 140e6 < n_params < 160e6  # a ViT-B/16 CLIP (~150M parameters)
    # params + Adam mu + nu, f32 (plus a few scalars): about 12 bytes per parameter
    assert abs(total - 12 * n_params) < 1e3
    print(f"ViT-B/16 (1,8,1): {per_dev / 2**20:.1f} of {total / 2**20:.1f} MiB per device "
          f"= {per_dev / total:.4f}")
    assert per_dev <= total / 8 * 1.05


def test_data_parallel_replicates_and_tensor_adds_no_memory_over_fsdp():
    dp, total, _ = _state_bytes((8, 1, 1))
    assert dp == total
    ft, _, _ = _state_bytes((1, 4, 2))  # 4-way FSDP x 2-way tensor: still ~1/8
    assert ft <= total / 8 * 1.05
