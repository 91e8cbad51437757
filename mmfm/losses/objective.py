"""The shared objective: config-weighted contrastive + MAE + MLM + classification + distillation.

CLIP, SigLIP, FLIP, MAE-only, M3AE-like, the combined mmfm objective and supervised fine-tuning
(a classification head, `classify_weight`) and distillation from a frozen teacher
(`distill_weight`: similarities; `distill_feature_weight`: embeddings through a projection) are
this one function with different weights; a weight of 0 skips that branch of the forward pass
entirely. Every term is a metric.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp

from mmfm.losses.contrastive import contrastive_loss
from mmfm.losses.distill import distill_clip_loss, distill_feature_loss
from mmfm.losses.masked import mae_loss, mlm_accuracy, mlm_loss

Array = jax.Array

CONTRASTIVE_KINDS = ("clip", "siglip")


@dataclasses.dataclass(frozen=True)
class ObjectiveConfig:
    """Static description of the objective (hashable: part of the jitted step's closure)."""
    contrastive: str = "clip"  # clip | siglip
    contrastive_weight: float = 1.0
    mae_weight: float = 0.0
    mlm_weight: float = 0.0
    patch_drop: float = 0.0  # contrastive view: FLIP drop ratio (0, 0.5, 0.75)
    mae_ratio: float = 0.75  # reconstruction view
    mlm_ratio: float = 0.15
    norm_pix: bool = True
    chunked: bool = False  # ring-chunked contrastive loss over the mesh's batch axes
    # Share of each batch (its first rows; batches are shuffled) that the MAE and MLM views see.
    # Below 1 the masked terms cost proportionally less while the contrastive term keeps the
    # whole batch; the shared image view needs 1 (both views must cover the same images).
    masked_batch_frac: float = 1.0
    # Softmax cross-entropy of the classification head (`model.num_classes`) on the batch's
    # `label`s; label_smoothing spreads that much target mass uniformly over the classes.
    classify_weight: float = 0.0
    label_smoothing: float = 0.0
    # Soft in-batch similarity matching against a frozen teacher (`config.distill`): open_clip's
    # DistillClipLoss. The student's contrastive term stays at contrastive_weight next to it.
    distill_weight: float = 0.0
    # Feature distillation: 1 - cosine between the student's embeddings through a learned linear
    # projection (`model.distill_dim`, set to the teacher's embed_dim) and the teacher's, both
    # towers (CLIP-KD's feature distillation). Needs a teacher too; may go with or without the
    # similarity term above.
    distill_feature_weight: float = 0.0

    def validate(self, prefix: str = "loss") -> "ObjectiveConfig":
        if self.contrastive not in CONTRASTIVE_KINDS:
            raise ValueError(f"{prefix}.contrastive: unknown kind {self.contrastive!r}; "
                             f"valid: {', '.join(CONTRASTIVE_KINDS)}")
        weights = ("contrastive_weight", "mae_weight", "mlm_weight", "classify_weight",
                   "distill_weight", "distill_feature_weight")
        for name in weights:
            if getattr(self, name) < 0:
                raise ValueError(f"{prefix}.{name}: must be >= 0, got {getattr(self, name)}")
        if not any(getattr(self, name) for name in weights):
            raise ValueError(f"{prefix}: every loss weight is 0; nothing to train")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"{prefix}.label_smoothing: must be in [0, 1), got {self.label_smoothing}")
        for name in ("patch_drop", "mae_ratio"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{prefix}.{name}: must be in [0, 1), got {getattr(self, name)}")
        if not 0.0 < self.masked_batch_frac <= 1.0:
            raise ValueError(f"{prefix}.masked_batch_frac: must be in (0, 1], "
                             f"got {self.masked_batch_frac}")
        if self.mlm_weight and not 0.0 < self.mlm_ratio < 1.0:
            raise ValueError(f"{prefix}.mlm_ratio: must be in (0, 1), got {self.mlm_ratio}")
        return self

    @property
    def use_contrastive(self) -> bool:
        return self.contrastive_weight > 0

    @property
    def use_mae(self) -> bool:
        return self.mae_weight > 0

    @property
    def use_mlm(self) -> bool:
        return self.mlm_weight > 0

    @property
    def use_classify(self) -> bool:
        return self.classify_weight > 0

    @property
    def use_distill(self) -> bool:
        return self.distill_weight > 0

    @property
    def use_distill_feature(self) -> bool:
        return self.distill_feature_weight > 0

    @property
    def needs_teacher(self) -> bool:
        """Whether a frozen teacher runs in the step (either distillation term)."""
        return self.use_distill or self.use_distill_feature

    @property
    def use_embeddings(self) -> bool:
        """Whether the step needs the contrastive pass (embeddings + scale): contrastive or distill."""
        return self.use_contrastive or self.needs_teacher

    @property
    def shared_image_view(self) -> bool:
        """Equal ratios: one image-encoder pass serves both the contrastive and MAE losses."""
        return (self.use_contrastive and self.use_mae and self.patch_drop == self.mae_ratio
                and self.masked_batch_frac == 1.0)

    def masked_rows(self, batch: int) -> int:
        """How many rows of a `batch` the MAE / MLM views use (at least 1)."""
        return max(1, round(batch * self.masked_batch_frac))


def classification_loss(logits: Array, labels: Array, smoothing: float = 0.0) -> Array:
    """Mean softmax cross-entropy of `logits` [batch, classes] against int `labels` [batch]."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    target = jax.nn.one_hot(labels, logits.shape[-1], dtype=jnp.float32)
    if smoothing:
        target = target * (1.0 - smoothing) + smoothing / logits.shape[-1]
    return -jnp.mean(jnp.sum(target * logp, axis=-1))


def objective(out: dict, *, images: Array, tokens: Array, mae_mask: Optional[Array],
              mlm_mask: Optional[Array], patch_size: int, cfg: ObjectiveConfig,
              mesh=None, labels: Optional[Array] = None,
              teacher: Optional[dict] = None) -> tuple[Array, dict]:
    """Weighted total loss and metrics from the model's output dict.

    images: [rows, H, W, C] normalised floats (the MAE targets); tokens: [rows, seq] original
    tokens (the MLM targets); mae_mask / mlm_mask: 1 where removed / masked. `rows` is
    `cfg.masked_rows(batch)`: the rows the masked views were computed on. labels: int [batch],
    the classification targets (with `classify_weight`). teacher: the frozen teacher's
    {`img/emb` [batch, d_t], `txt/emb` [batch, d_t], `scale`} on the same batch (with
    `distill_weight` / `distill_feature_weight`).
    """
    total = jnp.zeros((), jnp.float32)
    metrics = {}
    if cfg.use_contrastive:
        con = contrastive_loss(cfg.contrastive, out["img/emb"], out["txt/emb"], out["scale"],
                               out.get("bias"), mesh=mesh, chunked=cfg.chunked)
        total += cfg.contrastive_weight * con
        metrics[f"loss/{cfg.contrastive}"] = con
        metrics["scale"] = out["scale"]
        if "bias" in out:
            metrics["bias"] = out["bias"]
    if cfg.use_mae:
        mae = mae_loss(out["mae/pred"], images, mae_mask, patch_size, norm_pix=cfg.norm_pix)
        total += cfg.mae_weight * mae
        metrics["loss/mae"] = mae
    if cfg.use_mlm:
        mlm = mlm_loss(out["mlm/logits"], tokens, mlm_mask)
        total += cfg.mlm_weight * mlm
        metrics["loss/mlm"] = mlm
        metrics["mlm/accuracy"] = mlm_accuracy(out["mlm/logits"], tokens, mlm_mask)
    if cfg.use_classify:
        if labels is None:
            raise ValueError("loss.classify_weight > 0 needs labels in the batch (config.data.label)")
        logits = out["cls/logits"]
        cls = classification_loss(logits, labels, cfg.label_smoothing)
        total += cfg.classify_weight * cls
        metrics["loss/classify"] = cls
        metrics["classify/accuracy"] = jnp.mean(jnp.argmax(logits, -1) == labels)
    if cfg.use_distill:
        if teacher is None:
            raise ValueError("loss.distill_weight > 0 needs the teacher's outputs (config.distill)")
        dist = distill_clip_loss(out["img/emb"], out["txt/emb"], out["scale"],
                                 teacher["img/emb"], teacher["txt/emb"], teacher["scale"])
        total += cfg.distill_weight * dist
        metrics["loss/distill"] = dist
        metrics.setdefault("scale", out["scale"])
        metrics["teacher/scale"] = teacher["scale"]
    if cfg.use_distill_feature:
        if teacher is None:
            raise ValueError("loss.distill_feature_weight > 0 needs the teacher's outputs "
                             "(config.distill)")
        if "img/distill" not in out:
            raise ValueError("loss.distill_feature_weight > 0 needs the model's projection "
                             "(model.distill_dim = the teacher's embed_dim)")
        feat = distill_feature_loss(out["img/distill"], out["txt/distill"], teacher["img/emb"],
                                    teacher["txt/emb"])
        total += cfg.distill_feature_weight * feat
        metrics["loss/distill_feature"] = feat
    metrics["loss"] = total
    return total, metrics


def check_model_fits(cfg: ObjectiveConfig, model_cfg) -> None:
    """Fail before training when a loss weight needs a model part the config leaves out."""
    if cfg.use_contrastive and cfg.contrastive == "siglip" and model_cfg.init_bias is None:
        raise ValueError("loss.contrastive='siglip' needs model.init_bias (SigLIP uses -10.0)")
    if cfg.use_mae and model_cfg.mae_decoder is None:
        raise ValueError("loss.mae_weight > 0 needs model.mae_decoder (e.g. dict(width=64, depth=1))")
    if cfg.use_mlm and not model_cfg.text.mlm_head:
        raise ValueError("loss.mlm_weight > 0 needs model.text.mlm_head=True")
    if cfg.use_classify and not model_cfg.num_classes:
        raise ValueError("loss.classify_weight > 0 needs model.num_classes (the classifier's "
                         "number of classes)")
