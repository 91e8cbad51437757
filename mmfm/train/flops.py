"""Model FLOPs from the config alone (matmuls only; the 3x rule for forward + backward).

Used by benchmarks (achieved FLOP/s and the ratio to the machine's matmul peak) and cross-checked
there against XLA's own cost analysis of the compiled step.
"""
from __future__ import annotations

from mmfm.losses.objective import ObjectiveConfig
from mmfm.masking import num_kept
from mmfm.models.config import EncoderConfig, ModelConfig


def encoder_flops(cfg: EncoderConfig, seq: int) -> int:
    """Forward matmul FLOPs of `cfg.depth` blocks on one sequence of length `seq`."""
    d, m = cfg.width, cfg.mlp_dim
    proj = 2 * seq * d * d * 4  # q, k, v, out
    attn = 2 * seq * seq * d * 2  # scores and weighted values
    mlp = 2 * seq * d * m * 2
    return cfg.depth * (proj + attn + mlp)


def image_forward_flops(cfg: ModelConfig, kept: int | None = None) -> int:
    im = cfg.image
    n = im.num_patches if kept is None else kept
    flops = 2 * im.num_patches * im.patch_size ** 2 * im.channels * im.width  # patch embedding
    seq = n + (1 if im.pool == "cls" else 0)
    flops += encoder_flops(im, seq)
    if im.pool == "map":
        flops += 2 * 1 * im.width * im.width * 2 + 2 * 2 * n * im.width * im.width  # q/out, k/v
        flops += 2 * 1 * n * im.width * 2 + 2 * 2 * im.width * im.mlp_dim
    if im.head:
        flops += 2 * im.width * cfg.embed_dim
    return flops


def text_forward_flops(cfg: ModelConfig, mlm: bool = False) -> int:
    tx = cfg.text
    flops = encoder_flops(tx, tx.context_length) + 2 * tx.width * cfg.embed_dim
    if mlm:
        flops += 2 * tx.context_length * tx.width * (tx.width + tx.vocab_size)
    return flops


def mae_decoder_flops(cfg: ModelConfig, kept: int) -> int:
    dec, im = cfg.mae_decoder, cfg.image
    pix = im.patch_size ** 2 * im.channels
    return (2 * kept * im.width * dec.width + encoder_flops(dec, im.num_patches)
            + 2 * im.num_patches * dec.width * pix)


def distill_projection_flops(cfg: ModelConfig) -> int:
    """Feature distillation's projection (`model.distill_dim`) of both towers' embeddings; it
    runs in every contrastive pass of a model that has it. (The frozen teacher's own forward pass
    is not the student's model FLOPs and is not counted.)"""
    return 2 * 2 * cfg.embed_dim * cfg.distill_dim


def train_flops_per_example(cfg: ModelConfig, obj: ObjectiveConfig) -> int:
    """Forward + backward (3x forward) matmul FLOPs of one example under the objective's views.

    The masked views run on `masked_batch_frac` of the batch, so they count that fraction.
    """
    n = cfg.image.num_patches
    fwd = masked = 0
    if obj.use_embeddings:  # the contrastive pass (also what distillation reads)
        kept = num_kept(n, obj.patch_drop) if obj.patch_drop > 0 else n
        fwd += image_forward_flops(cfg, kept) + text_forward_flops(cfg)
        fwd += distill_projection_flops(cfg)
    if obj.use_mae:
        kept = num_kept(n, obj.mae_ratio)
        if not obj.shared_image_view:
            masked += image_forward_flops(cfg, kept)
        masked += mae_decoder_flops(cfg, kept)
    if obj.use_mlm:
        masked += text_forward_flops(cfg, mlm=True)
    return 3 * (fwd + round(masked * obj.masked_batch_frac))


def contrastive_flops(batch: int, dim: int) -> int:
    """Forward + backward of the batch x batch similarity matmul."""
    return 3 * 2 * batch * batch * dim
