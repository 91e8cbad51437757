"""Image-text retrieval recall@K on precomputed embeddings.

Pure functions of embeddings: the caller runs the encoders (and normalises, if cosine similarity is
wanted); nothing here knows about the model. Similarity is the plain dot product `<query, item>`.

**Positives.** Captions map to images through `text_to_image[t] = i` (COCO style: several captions
per image). A text query has one positive, its image. An image query's positives are all of its
captions, and it is correct at K if ANY of them is within the top K texts.

**Rank and ties (pessimistic).** The rank of a query is the number of NON-positive gallery items
whose score is >= the query's best positive score (counted as `not (s < best)`). So a tie with a
negative counts against the query, the query is correct at K iff `rank < K`, and other positives
never push the best one down. This is the worst-case tie order, chosen so that a collapsed model
(all embeddings equal) scores R@K ~= 0 rather than 1, and NaN scores count as misses.

**Memory.** Queries are processed in blocks of `block_size`; one step materialises a
`[block_size, n_gallery]` similarity matrix and a mask of the same shape, never all of it. With a
`mesh`, query blocks are split over all of the mesh's devices (`jax.shard_map`, gallery replicated);
the ranks are exact integers, so results are identical for any block size and device count as long
as XLA computes each dot product the same way (exactly so for integer-valued embeddings).

Single-process only: inputs are host or single-process jax arrays.
"""
from __future__ import annotations

import functools
import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec as P

__all__ = ["retrieval_metrics", "retrieval_ranks"]


def _block_ranks(q_bd: jax.Array, gallery_gd: jax.Array, qid_b: jax.Array,
                 gid_g: jax.Array) -> jax.Array:
  """Pessimistic ranks for one block of queries. Returns int32 `[block]`."""
  # HIGHEST: on TPU/GPU the default f32 matmul is bf16-like, which creates spurious ties.
  s_bg = jnp.einsum("bd,gd->bg", q_bd, gallery_gd, precision=jax.lax.Precision.HIGHEST,
                    preferred_element_type=jnp.float32)
  pos_bg = qid_b[:, None] == gid_g[None, :]
  # A query without positives gets best = -inf, hence rank = number of gallery items.
  best_b = jnp.max(jnp.where(pos_bg, s_bg, -jnp.inf), axis=1)
  # `not (s < best)` rather than `s >= best`: a NaN score counts against the query.
  beaten_bg = jnp.logical_not(s_bg < best_b[:, None]) & jnp.logical_not(pos_bg)
  return jnp.sum(beaten_bg, axis=1, dtype=jnp.int32)


def _map_blocks(q_nbd: jax.Array, gallery_gd: jax.Array, qid_nb: jax.Array,
                gid_g: jax.Array) -> jax.Array:
  """Sequential loop over `n` query blocks (so only one block's scores live at once)."""
  return jax.lax.map(lambda args: _block_ranks(args[0], gallery_gd, args[1], gid_g),
                     (q_nbd, qid_nb))


@functools.partial(jax.jit, static_argnames=("block_size", "num_blocks", "mesh"))
def _ranks_padded(q_qd, gallery_gd, qid_q, gid_g, *, block_size, num_blocks, mesh):
  """Ranks for `[num_shards * num_blocks * block_size]` padded queries."""
  d = q_qd.shape[-1]
  if mesh is None:
    out = _map_blocks(q_qd.reshape(num_blocks, block_size, d), gallery_gd,
                      qid_q.reshape(num_blocks, block_size), gid_g)
    return out.reshape(-1)

  axes = tuple(mesh.axis_names)

  def per_device(q_local, qid_local, gallery, gid):
    out = _map_blocks(q_local.reshape(num_blocks, block_size, d), gallery,
                      qid_local.reshape(num_blocks, block_size), gid)
    return out.reshape(-1)

  # Leading (query) axis split over every mesh axis; the gallery is replicated on each device.
  return jax.shard_map(per_device, mesh=mesh, in_specs=(P(axes), P(axes), P(), P()),
                       out_specs=P(axes))(q_qd, qid_q, gallery_gd, gid_g)


def retrieval_ranks(query_emb, gallery_emb, query_ids, gallery_ids, *,
                    block_size: int | None = None, mesh: Mesh | None = None) -> jax.Array:
  """Pessimistic rank of each query's best positive among the gallery.

  Query q and gallery item g are positives iff `query_ids[q] == gallery_ids[g]`.

  Args:
    query_emb: `[Q, D]` query embeddings.
    gallery_emb: `[G, D]` gallery embeddings.
    query_ids: `[Q]` int ids; use a negative id for a query that must have no positive.
    gallery_ids: `[G]` int ids.
    block_size: queries per step (per device with a mesh); None = all queries (of a device) at once.
    mesh: optional mesh; query blocks are sharded over all its devices.

  Returns:
    int32 `[Q]`: number of non-positives scoring >= the best positive (G if no positive).
    Query q is correct at K iff `rank[q] < K`.
  """
  query_emb = jnp.asarray(query_emb, jnp.float32)
  gallery_emb = jnp.asarray(gallery_emb, jnp.float32)
  query_ids = jnp.asarray(query_ids, jnp.int32)
  gallery_ids = jnp.asarray(gallery_ids, jnp.int32)
  (nq, d), (ng, dg) = query_emb.shape, gallery_emb.shape
  if d != dg or query_ids.shape != (nq,) or gallery_ids.shape != (ng,):
    raise ValueError(f"shape mismatch: queries {query_emb.shape}, gallery {gallery_emb.shape}, "
                     f"query_ids {query_ids.shape}, gallery_ids {gallery_ids.shape}")
  if block_size is not None and block_size < 1:
    raise ValueError(f"block_size must be >= 1, got {block_size}")
  shards = 1 if mesh is None else mesh.size
  per_shard = max(1, math.ceil(nq / shards))
  block = per_shard if block_size is None else min(block_size, per_shard)
  num_blocks = math.ceil(per_shard / block)
  pad = shards * num_blocks * block - nq
  # Padded queries get id -1 (no positive); they are sliced off below.
  q = jnp.pad(query_emb, ((0, pad), (0, 0)))
  qid = jnp.pad(query_ids, (0, pad), constant_values=-1)
  ranks = _ranks_padded(q, gallery_emb, qid, gallery_ids, block_size=block,
                        num_blocks=num_blocks, mesh=mesh)
  return ranks[:nq]


def retrieval_metrics(image_emb, text_emb, text_to_image, ks: Sequence[int] = (1, 5, 10), *,
                      block_size: int | None = None, mesh: Mesh | None = None) -> dict[str, float]:
  """Recall@K in both directions for captioned images.

  Args:
    image_emb: `[Ni, D]` image embeddings (L2-normalised for cosine similarity).
    text_emb: `[Nt, D]` caption embeddings.
    text_to_image: `[Nt]` int, index in `[0, Ni)` of each caption's image. Every image needs at
      least one caption (raises ValueError otherwise: that is almost always a mapping bug).
    ks: the K values of R@K; K larger than the gallery simply gives 1.0.
    block_size: queries per step; peak memory is about `block_size * max(Ni, Nt)` floats per device.
    mesh: optional mesh; query blocks are sharded over all its devices.

  Returns:
    `{"i2t/R@K": float, "t2i/R@K": float}` for each K: fraction of queries in [0, 1] whose best
    positive has pessimistic rank < K (see module docstring for the tie convention).
  """
  if any(k < 1 for k in ks):
    raise ValueError(f"ks must be >= 1, got {tuple(ks)}")
  t2i_np = np.asarray(text_to_image)
  ni, nt = np.shape(image_emb)[0], np.shape(text_emb)[0]
  if t2i_np.shape != (nt,) or not np.issubdtype(t2i_np.dtype, np.integer):
    raise ValueError(f"text_to_image must be int [{nt}], got {t2i_np.dtype} {t2i_np.shape}")
  if nt and (t2i_np.min() < 0 or t2i_np.max() >= ni):
    raise ValueError(f"text_to_image values must be in [0, {ni}), got "
                     f"[{t2i_np.min()}, {t2i_np.max()}]")
  no_caption = np.flatnonzero(np.bincount(t2i_np, minlength=ni) == 0)
  if no_caption.size:
    raise ValueError(f"{no_caption.size} images have no caption, e.g. {no_caption[:5].tolist()}")

  image_ids = np.arange(ni, dtype=np.int32)
  # Image queries: positives are the captions whose text_to_image is that image.
  i2t = retrieval_ranks(image_emb, text_emb, image_ids, t2i_np, block_size=block_size, mesh=mesh)
  # Text queries: the one positive is its image.
  t2i = retrieval_ranks(text_emb, image_emb, t2i_np, image_ids, block_size=block_size, mesh=mesh)
  i2t, t2i = np.asarray(i2t), np.asarray(t2i)
  out = {}
  for name, ranks in (("i2t", i2t), ("t2i", t2i)):
    for k in ks:
      out[f"{name}/R@{k}"] = float(np.mean(ranks < k))
  return out
