"""Mesh and rule helpers: presets, validation errors, indivisible dimensions, batch checks."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from mmfm import sharding as sh


def test_make_mesh_autofills_and_uses_auto_axes():
    mesh = sh.make_mesh((2, -1, 2))
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)
    one = sh.make_mesh((1, 1, 1), devices=jax.devices()[:1])
    assert one.devices.size == 1


@pytest.mark.parametrize("shape,msg", [((2, 2), "3 entries"), ((-1, -1, 1), "at most one -1"),
                                       ((3, -1, 1), "not divisible"), ((2, 2, 1), "needs 4 devices"),
                                       ((0, 8, 1), "positive")])
def test_make_mesh_errors(shape, msg):
    with pytest.raises(ValueError, match=msg):
        sh.make_mesh(shape)


def test_presets_and_rule_validation():
    assert sh.normalize_rules("fsdp") == sh.RULES_FSDP
    assert sh.normalize_rules([["batch", ["data", "fsdp"]], ["embed", "fsdp"]]) == (
        ("batch", ("data", "fsdp")), ("embed", "fsdp"))
    with pytest.raises(ValueError, match="unknown preset 'zero3'"):
        sh.normalize_rules("zero3")
    with pytest.raises(ValueError, match=r"mesh.rules\[0\]: unknown logical name 'embd'"):
        sh.normalize_rules([("embd", "fsdp")])
    with pytest.raises(ValueError, match=r"unknown mesh axis \['model'\]"):
        sh.normalize_rules([("mlp", "model")])
    with pytest.raises(ValueError, match="more than one rule"):
        sh.normalize_rules([("mlp", "tensor"), ("mlp", None)])
    mesh, rules = sh.mesh_from_config({"shape": (1, -1, 1), "rules": "fsdp_tensor"})
    assert dict(mesh.shape)["fsdp"] == 8 and rules == sh.RULES_FSDP_TENSOR


def test_logical_to_shardings_maps_rules_and_replicates_indivisible_dims(caplog):
    mesh = sh.make_mesh((1, 4, 2))
    specs = {"kernel": P(sh.EMBED, sh.MLP), "vocab": P(sh.VOCAB, sh.EMBED), "scale": P()}
    shapes = {"kernel": jax.ShapeDtypeStruct((32, 64), jnp.float32),
              "vocab": jax.ShapeDtypeStruct((101, 32), jnp.float32),  # odd vocabulary
              "scale": jax.ShapeDtypeStruct((), jnp.float32)}
    with caplog.at_level("WARNING", logger="mmfm"):
        out = sh.logical_to_shardings(specs, shapes, mesh, sh.DEFAULT_RULES)
    assert out["kernel"].spec == P("fsdp", "tensor")
    assert out["vocab"].spec == P(None, "fsdp")  # 101 % 2 != 0 -> replicated, embed still split
    assert out["scale"].spec == P()
    assert "vocab[101, 32] dim 0 over tensor" in caplog.text
    assert sh.per_device_bytes(shapes, out) == 4 * (32 * 64 // 8 + 101 * 32 // 4 + 1)
    assert sh.total_bytes(shapes) == 4 * (32 * 64 + 101 * 32 + 1)
    rows = sh.describe_shardings(shapes, out)
    assert ("kernel", (32, 64), str(P("fsdp", "tensor"))) in rows


def test_check_batch_axes_errors():
    mesh = sh.make_mesh((2, 2, 2))
    sh.check_batch_axes(mesh, 8, num_processes=2)
    with pytest.raises(ValueError, match="batch_size 6 is not divisible by the 4 devices"):
        sh.check_batch_axes(mesh, 6, num_processes=1)
    with pytest.raises(ValueError, match="must be a multiple of the 8 processes"):
        sh.check_batch_axes(mesh, 64, num_processes=8)
    with pytest.raises(ValueError, match="not divisible by the 3 processes"):
        sh.check_batch_axes(sh.make_mesh((-1, 1, 1)), 8, num_processes=3)


def test_batch_sharding_splits_rows_over_data_and_fsdp():
    mesh = sh.make_mesh((2, 2, 2))
    x = jax.device_put(np.arange(8 * 3).reshape(8, 3), sh.batch_sharding(mesh))
    assert {s.data.shape for s in x.addressable_shards} == {(2, 3)}
    # tensor holds replicas: each 2-row block sits on exactly 2 devices
    rows = sorted(int(s.data[0, 0]) for s in x.addressable_shards)
    assert rows == sorted([0, 6, 12, 18] * 2)
