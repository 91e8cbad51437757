"""The pure train step: (state, batch) -> (state, metrics). Jitted once by the loop."""
from __future__ import annotations

import dataclasses
from typing import Any, Optional

import jax
import jax.numpy as jnp
import optax

from mmfm import masking
from mmfm.losses.objective import ObjectiveConfig, objective
from mmfm.models.multimodal import TwoTower
from mmfm.train.state import TrainState
from mmfm.train.teacher import TeacherSpec


@dataclasses.dataclass(frozen=True)
class StepConfig:
    """Everything static the step needs besides state and batch."""
    model: TwoTower
    tx: Any  # optax.GradientTransformation
    lr_fn: Any
    objective: ObjectiveConfig
    mean: tuple[float, ...]
    std: tuple[float, ...]
    mask_id: int = 3
    special_ids: tuple[int, ...] = (0, 1, 2, 3)
    mesh: Any = None  # for the chunked contrastive loss
    teacher: Optional[TeacherSpec] = None  # distillation (a `loss.distill_*weight` > 0)


def normalize_images(images_u8: jax.Array, mean, std) -> jax.Array:
    """uint8 [batch, H, W, C] -> float32 normalised with the model's mean/std (0-1 scale)."""
    x = images_u8.astype(jnp.float32) / 255.0
    return (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


def make_views(rng, batch: int, masked_tokens, sc: StepConfig):
    """Contrastive / reconstruction masks of one step (pure functions of the step's rng).

    `masked_tokens` are the rows the MAE / MLM views cover (`objective.masked_rows(batch)`).
    """
    obj, cfg = sc.objective, sc.model.cfg
    r_con, r_mae, r_mlm = jax.random.split(rng, 3)
    rows, n = masked_tokens.shape[0], cfg.image.num_patches
    views: dict[str, Optional[jax.Array]] = dict(con_keep=None, mae_keep=None, mae_mask=None,
                                                 mlm_tokens=None, mlm_mask=None)
    if obj.use_embeddings and obj.patch_drop > 0:
        views["con_keep"], con_mask = masking.patch_mask(r_con, batch, n, obj.patch_drop)
    if obj.use_mae:
        if obj.shared_image_view:
            views["mae_keep"], views["mae_mask"] = views["con_keep"], con_mask
        else:
            views["mae_keep"], views["mae_mask"] = masking.patch_mask(r_mae, rows, n, obj.mae_ratio)
    if obj.use_mlm:
        views["mlm_tokens"], views["mlm_mask"] = masking.token_mask(
            r_mlm, masked_tokens, obj.mlm_ratio, mask_id=sc.mask_id, special_ids=sc.special_ids,
            vocab_size=cfg.text.vocab_size)
    return views


def masked_subbatch(x: jax.Array, rows: int) -> jax.Array:
    """Every `B // rows`-th row of `x` `[B, ...]`: the rows the MAE / MLM views see.

    A strided pick rather than the first rows: the batch is split over the mesh's batch axes in
    contiguous blocks, so every device keeps its own share of the sub-batch (no resharding), and
    the rows chosen do not depend on the mesh.
    """
    b = x.shape[0]
    if rows == b:
        return x
    return x.reshape(rows, b // rows, *x.shape[1:])[:, 0]


def teacher_outputs(teacher_params, images_u8: jax.Array, tokens: jax.Array,
                    spec: TeacherSpec) -> dict:
    """The frozen teacher's {img/emb, txt/emb, scale} of the batch, in inference mode.

    The teacher sees the whole images (no patch drop), resized to its own size when it differs
    from the data's and normalised with its own mean/std. stop_gradient: never a gradient into it.
    """
    x = images_u8.astype(jnp.float32) / 255.0
    size = spec.image_size
    if x.shape[1:3] != (size, size):
        x = jax.image.resize(x, (x.shape[0], size, size, x.shape[3]), "bilinear")
    x = (x - jnp.asarray(spec.mean, jnp.float32)) / jnp.asarray(spec.std, jnp.float32)
    out = spec.model.apply({"params": jax.lax.stop_gradient(teacher_params)}, x, tokens,
                           contrastive=True, train=False)
    return jax.lax.stop_gradient({k: out[k] for k in ("img/emb", "txt/emb", "scale")})


def loss_and_metrics(params, batch, rng, sc: StepConfig, teacher_params=None):
    r_views, r_drop = jax.random.split(rng)
    images = normalize_images(batch["image"], sc.mean, sc.std)
    tokens = batch["tokens"]
    b = images.shape[0]
    rows = sc.objective.masked_rows(b)  # static: the masked views may see a sub-batch
    m_images, m_tokens = masked_subbatch(images, rows), masked_subbatch(tokens, rows)
    v = make_views(r_views, b, m_tokens, sc)
    out = sc.model.apply(
        {"params": params}, images, tokens, con_keep=v["con_keep"], mae_keep=v["mae_keep"],
        mlm_tokens=v["mlm_tokens"], mae_images=m_images if rows < b else None,
        contrastive=sc.objective.use_embeddings, mae_shares_view=sc.objective.shared_image_view,
        classify=sc.objective.use_classify, train=True, rngs={"dropout": r_drop})
    teacher = None
    if sc.objective.needs_teacher:
        teacher = teacher_outputs(teacher_params, batch["image"], tokens, sc.teacher)
    return objective(out, images=m_images, tokens=m_tokens, mae_mask=v["mae_mask"],
                     mlm_mask=v["mlm_mask"], patch_size=sc.model.cfg.image.patch_size,
                     cfg=sc.objective, mesh=sc.mesh, labels=batch.get("label"), teacher=teacher)


def train_step(state: TrainState, batch: dict, teacher_params=None, *,
               sc: StepConfig) -> tuple[TrainState, dict]:
    """One optimizer step. batch: {image uint8 [B,H,W,3], tokens int32 [B,L], label int32 [B]
    (with a classification term)} (global arrays). teacher_params: the frozen distillation
    teacher's params (with `loss.distill_weight` / `distill_feature_weight`); read only, never
    differentiated."""
    rng = jax.random.fold_in(state.rng, state.step)
    grad_fn = jax.value_and_grad(loss_and_metrics, has_aux=True)
    (_, metrics), grads = grad_fn(state.params, batch, rng, sc, teacher_params)
    updates, opt_state = sc.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = dict(metrics, lr=sc.lr_fn(state.step), grad_norm=optax.global_norm(grads),
                   param_norm=optax.global_norm(params), update_norm=optax.global_norm(updates))
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics
