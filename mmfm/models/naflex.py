"""NaFlex (SigLIP 2): images of any aspect ratio as a padded sequence of patches.

A batch is `patches` [batch, max_patches, P*P*C] (each image's patches row-major over its own
grid, then padding), `spatial_shapes` int [batch, 2] (each image's patch grid, rows x cols) and
`patch_valid` bool [batch, max_patches]. The tower's learned G x G position grid is resized to
each image's grid with antialiased bilinear interpolation (half-pixel centres, as
`F.interpolate(mode="bilinear", align_corners=False, antialias=True)`, which SigLIP 2 uses), and
padding is masked out of attention and pooling.

The resize is written as a weight matrix per image: separable triangle-filter weights over the
source rows and columns (stretched by the scale factor when shrinking, so every source row
contributes), so sizes can be traced values and one compiled function serves every shape.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def _axis_weights(out_index: Array, out_size: Array, grid: int) -> Array:
    """Interpolation weights [..., grid] of output positions `out_index` on an axis resized from
    `grid` source positions to `out_size` (both [...], floats)."""
    scale = grid / out_size
    support = jnp.maximum(scale, 1.0)  # antialiasing widens the filter when downsampling
    centre = (out_index + 0.5) * scale - 0.5
    source = jnp.arange(grid, dtype=jnp.float32)
    w = jnp.maximum(0.0, 1.0 - jnp.abs(source - centre[..., None]) / support[..., None])
    return w / jnp.sum(w, axis=-1, keepdims=True)


def resize_weights(spatial_shapes: Array, length: int, grid: int) -> Array:
    """[batch, length, grid*grid]: row p of image b mixes the G x G grid into the position
    embedding of patch p of an image whose patch grid is spatial_shapes[b] (rows, cols).
    Padding positions (p >= rows*cols) get the weights of patch 0; they are masked anyway."""
    sizes = spatial_shapes.astype(jnp.float32)  # [batch, 2]
    rows_n, cols_n = sizes[:, 0:1], sizes[:, 1:2]  # [batch, 1]
    pos = jnp.arange(length, dtype=jnp.float32)[None, :]
    real = pos < rows_n * cols_n
    row = jnp.where(real, jnp.floor(pos / cols_n), 0.0)
    col = jnp.where(real, pos - row * cols_n, 0.0)
    wr = _axis_weights(row, jnp.broadcast_to(rows_n, row.shape), grid)  # [batch, length, grid]
    wc = _axis_weights(col, jnp.broadcast_to(cols_n, col.shape), grid)
    return (wr[..., :, None] * wc[..., None, :]).reshape(*row.shape, grid * grid)


def resize_position_grid(table: Array, spatial_shapes: Array, length: int) -> Array:
    """A learned [G*G, width] position grid -> [batch, length, width] for each image's grid."""
    grid = int(round(table.shape[0] ** 0.5))
    if grid * grid != table.shape[0]:
        raise ValueError(f"NaFlex needs a square position grid, got {table.shape[0]} positions")
    w = resize_weights(spatial_shapes, length, grid)
    return jnp.einsum("blg,gd->bld", w, table.astype(jnp.float32))
