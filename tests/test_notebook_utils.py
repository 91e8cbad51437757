"""Helpers behind the notebooks that are not exercised elsewhere."""
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from mmfm import notebook_utils as nbu


def test_shard_layout_groups_replicas_by_block():
    mesh = Mesh(np.array(jax.devices()[:8]).reshape(2, 2, 2), ("data", "fsdp", "tensor"))
    x = jax.device_put(np.zeros((4, 8), np.float32), NamedSharding(mesh, P("fsdp", "tensor")))
    layout = nbu.shard_layout(x)
    assert [block for block, _ in layout] == [((0, 2), (0, 4)), ((0, 2), (4, 8)),
                                               ((2, 4), (0, 4)), ((2, 4), (4, 8))]
    assert all(len(devices) == 2 for _, devices in layout)  # one replica per `data` index
    assert sorted(d for _, devices in layout for d in devices) == list(range(8))


def test_image_grid_shape_and_padding():
    grid = nbu.image_grid(np.zeros((5, 4, 4, 3)), cols=3, pad=1)
    assert grid.shape == (2 * 5, 3 * 5, 3)
    assert grid[4, 0, 0] == 1.0 and grid[0, 0, 0] == 0.0
