"""Distillation from a frozen teacher: match its in-batch image-text similarity distributions.

`distill_clip_loss` is open_clip's `DistillClipLoss.dist_loss` (TinyCLIP's affinity mimicking):
for each model, logits = scale * img @ txt.T over the batch; the student's row-wise softmax is
trained towards the teacher's, image->text (rows) and text->image (columns) averaged:

    CE(P, Q) = -mean_i sum_j P_ij log Q_ij,   P = softmax(teacher logits), Q = softmax(student)
    loss = (CE(P_i2t, Q_i2t) + CE(P_t2i, Q_t2i)) / 2

It is the cross-entropy, not the KL divergence: the two differ by the teacher's entropy, a
constant for the student (same gradients), which open_clip leaves in the logged value. Each
model uses its own learned scale. The teacher side is wrapped in `stop_gradient` here too, so the
loss can never send a gradient into the teacher whatever the caller does.

`distill_feature_loss` is feature mimicking (CLIP-KD's feature distillation, here with cosine
distance): the student's embedding, mapped into the teacher's space by a learned linear
projection (`model.distill_dim`, the model's `distill_proj`), is pulled towards the teacher's
embedding of the same example, for both towers:

    loss = (mean_i (1 - cos(P s_img_i, t_img_i)) + mean_i (1 - cos(P s_txt_i, t_txt_i))) / 2

Cosine rather than MSE: the teacher's embeddings are unit vectors whose direction is all that
its similarities use, and 1 - cos (in [0, 2]) needs no rescaling (MSE between unit vectors is
2 (1 - cos) once the projection is normalised; unnormalised, it also fits the norm).

All functions are pure, take `[batch, dim]` embeddings and return a float32 scalar.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["distill_clip_loss", "distill_feature_loss"]


def _logits(img_bd, txt_bd, scale) -> jax.Array:
    """`scale * img @ txt.T` in float32: `[batch, dim] x [batch, dim] -> [batch, batch]`."""
    img, txt = jnp.asarray(img_bd, jnp.float32), jnp.asarray(txt_bd, jnp.float32)
    return jnp.asarray(scale, jnp.float32) * jnp.einsum("id,jd->ij", img, txt)


def _soft_ce(teacher_logits, student_logits) -> jax.Array:
    """Row-wise cross-entropy of the student's softmax under the teacher's, mean over rows."""
    p = jax.nn.softmax(teacher_logits, axis=1)
    return -jnp.mean(jnp.sum(p * jax.nn.log_softmax(student_logits, axis=1), axis=1))


def distill_clip_loss(student_img, student_txt, student_scale, teacher_img, teacher_txt,
                      teacher_scale) -> jax.Array:
    """Soft in-batch cross-entropy of the student's similarities under the teacher's.

    Args:
      student_img, student_txt: `[batch, d_s]` L2-normalised student embeddings (row i: pair i).
      student_scale: the student's logit scale (scalar).
      teacher_img, teacher_txt: `[batch, d_t]` L2-normalised teacher embeddings (d_t may differ).
      teacher_scale: the teacher's own logit scale (scalar).
    Returns: float32 scalar, the mean of the image->text and text->image terms.
    """
    t_img, t_txt, t_scale = jax.lax.stop_gradient((teacher_img, teacher_txt, teacher_scale))
    s = _logits(student_img, student_txt, student_scale)
    t = _logits(t_img, t_txt, t_scale)
    return 0.5 * (_soft_ce(t, s) + _soft_ce(t.T, s.T))



def _cosine_distance(student_bd, teacher_bd, eps: float = 1e-8) -> jax.Array:
    """mean_i (1 - cos(student_i, teacher_i)) in float32; rows shorter than eps count as eps."""
    s, t = jnp.asarray(student_bd, jnp.float32), jnp.asarray(teacher_bd, jnp.float32)
    norm = lambda x: jnp.maximum(jnp.linalg.norm(x, axis=-1), eps)
    cos = jnp.sum(s * t, axis=-1) / (norm(s) * norm(t))
    return jnp.mean(1.0 - cos)


def distill_feature_loss(student_img, student_txt, teacher_img, teacher_txt) -> jax.Array:
    """Cosine distance of the projected student embeddings to the teacher's, both towers averaged.

    Args:
      student_img, student_txt: `[batch, d_t]` the student's embeddings through its projection
        (any norm; the model's `img/distill`, `txt/distill`).
      teacher_img, teacher_txt: `[batch, d_t]` the teacher's embeddings (under stop_gradient).
    Returns: float32 scalar in [0, 2].
    """
    t_img, t_txt = jax.lax.stop_gradient((teacher_img, teacher_txt))
    return 0.5 * (_cosine_distance(student_img, t_img) + _cosine_distance(student_txt, t_txt))
