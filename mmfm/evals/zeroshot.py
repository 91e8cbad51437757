"""Zero-shot classification from image embeddings and prompt-ensembled class embeddings.

Model-independent: the caller passes `encode_text_fn(list[str]) -> [n, D]` (tokenise, encode and
project inside it) and precomputed image embeddings.

Conventions:
  * A class embedding is the L2-normalised mean over templates of the L2-normalised text
    embeddings (CLIP prompt ensembling). Text embeddings are normalised here again, so an encoder
    that returns unnormalised vectors still gives each template equal weight.
  * Scores are dot products `image_emb @ class_emb.T`; pass L2-normalised image embeddings for
    cosine similarity (the ranking, hence accuracy, does not depend on the image norm anyway).
  * Top-k accuracy uses the pessimistic tie rule of `retrieval.py`: an image is correct at k iff
    fewer than k OTHER classes score >= its true class. `zeroshot_predict` is a plain argmax
    (lowest class index wins ties), so on exact ties the two can disagree; with real embeddings
    ties do not happen.
"""
from __future__ import annotations

from typing import Callable, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

from mmfm.evals.retrieval import retrieval_ranks

__all__ = ["class_embeddings", "zeroshot_accuracy", "zeroshot_logits", "zeroshot_predict"]

Template = Union[str, Callable[[str], str]]


def _l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


def _fill(template: Template, classname: str) -> str:
  """A template is a `str.format` pattern with one `{}` or a callable (open_clip style)."""
  return template(classname) if callable(template) else template.format(classname)


def class_embeddings(encode_text_fn: Callable[[list[str]], jax.Array], classnames: Sequence[str],
                     templates: Sequence[Template], *, batch_size: int = 256) -> jax.Array:
  """Prompt-ensembled class embeddings.

  Args:
    encode_text_fn: maps a list of n strings to an `[n, D]` array (numpy or jax).
    classnames: C class names.
    templates: T templates, e.g. `"a photo of a {}."` or `lambda c: f"a photo of a {c}."`.
    batch_size: strings per `encode_text_fn` call (the last call may be smaller).

  Returns:
    float32 `[C, D]`, row c = normalise(mean_t normalise(encode(template_t(class_c)))).
  """
  if not classnames or not templates:
    raise ValueError("need at least one class name and one template")
  texts = [_fill(t, c) for c in classnames for t in templates]  # class-major: [C * T]
  chunks = []
  for start in range(0, len(texts), batch_size):
    emb = jnp.asarray(encode_text_fn(texts[start:start + batch_size]), jnp.float32)
    if emb.ndim != 2 or emb.shape[0] != len(texts[start:start + batch_size]):
      raise ValueError(f"encode_text_fn must return [n, D]; got {emb.shape} for "
                       f"{len(texts[start:start + batch_size])} strings")
    chunks.append(emb)
  emb_ctd = _l2_normalize(jnp.concatenate(chunks)).reshape(len(classnames), len(templates), -1)
  return _l2_normalize(emb_ctd.mean(axis=1))


def zeroshot_logits(image_emb, class_emb, *, scale: float = 1.0) -> jax.Array:
  """`scale * image_emb @ class_emb.T`: `[N, D] x [C, D] -> [N, C]` float32."""
  image_emb = jnp.asarray(image_emb, jnp.float32)
  class_emb = jnp.asarray(class_emb, jnp.float32)
  return scale * jnp.einsum("nd,cd->nc", image_emb, class_emb,
                            precision=jax.lax.Precision.HIGHEST)


def zeroshot_predict(image_emb, class_emb) -> jax.Array:
  """Predicted class per image: `[N, D], [C, D] -> int32 [N]` (argmax; lowest index on ties).

  Materialises `[N, C]` scores; for very large N call it on chunks of images.
  """
  return jnp.argmax(zeroshot_logits(image_emb, class_emb), axis=-1).astype(jnp.int32)


def zeroshot_accuracy(image_emb, class_emb, labels, topk: Sequence[int] = (1, 5), *,
                      block_size: int | None = 4096) -> dict[str, float]:
  """Top-k zero-shot accuracy.

  Args:
    image_emb: `[N, D]` image embeddings.
    class_emb: `[C, D]` class embeddings (e.g. from `class_embeddings`).
    labels: `[N]` int true classes in `[0, C)`.
    topk: the k values. A k larger than C is clipped to C (so it gives 1.0) but the key keeps the
      requested k, so metric names are stable across datasets.
    block_size: images scored per step (memory ~ block_size * C floats).

  Returns:
    `{"top{k}": float}`: fraction of images whose true class is within the top k (pessimistic ties).
  """
  labels_np = np.asarray(labels)
  n, c = np.shape(image_emb)[0], np.shape(class_emb)[0]
  if any(k < 1 for k in topk):
    raise ValueError(f"topk values must be >= 1, got {tuple(topk)}")
  if labels_np.shape != (n,) or not np.issubdtype(labels_np.dtype, np.integer):
    raise ValueError(f"labels must be int [{n}], got {labels_np.dtype} {labels_np.shape}")
  if n and (labels_np.min() < 0 or labels_np.max() >= c):
    raise ValueError(f"labels must be in [0, {c}), got [{labels_np.min()}, {labels_np.max()}]")
  # Classification is text-to-image retrieval with the classes as gallery: one positive each.
  ranks = np.asarray(retrieval_ranks(image_emb, class_emb, labels_np, np.arange(c),
                                     block_size=block_size))
  return {f"top{k}": float(np.mean(ranks < min(k, c))) for k in topk}
