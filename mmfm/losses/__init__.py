"""Losses: pure functions from model outputs and batch arrays to float32 scalars."""
from mmfm.losses.contrastive import (
    chunked_clip_loss,
    chunked_siglip_loss,
    clip_loss,
    contrastive_loss,
    siglip_loss,
)
from mmfm.losses.masked import mae_loss, mlm_accuracy, mlm_loss, patchify, unpatchify

__all__ = [
    "clip_loss",
    "siglip_loss",
    "chunked_clip_loss",
    "chunked_siglip_loss",
    "contrastive_loss",
    "mae_loss",
    "mlm_loss",
    "mlm_accuracy",
    "patchify",
    "unpatchify",
]
