"""M3AE-like ViT-B/16 (Geng et al. 2022): masked prediction in both modalities, no contrastive term.

MAE on 75% masked patches + MLM on 50% masked tokens (bidirectional text tower with a tied head).
Run (TPU v4-32):
  python -m mmfm.train --config experiments/configs/m3ae_b16.py --workdir /mnt/gcs/runs/m3ae_b16 \
      --config.data.name=wds --config.data.dir=/mnt/gcs/tfds
Smoke test on CPU:
  python -m mmfm.train --config experiments/configs/m3ae_b16.py:tiny --workdir /tmp/m3ae_tiny
"""
from mmfm.recipes import common


def get_config(arg: str | None = None):
    c = common.base_config()
    c.data.image_size = 224
    c.data.context_length = 64
    c.model.image = dict(variant="B/16", pool="cls", posemb="sincos2d")
    c.model.text = dict(variant="B", causal=False, pool="mean", mlm_head=True)
    c.model.embed_dim = 768
    c.model.mae_decoder = dict(width=512, depth=8, mlp_dim=2048, heads=16)
    c.model.dtype = "bfloat16"
    c.model.scan = True
    c.loss.contrastive_weight = 0.0
    c.loss.mae_weight = 1.0
    c.loss.mae_ratio = 0.75
    c.loss.mlm_weight = 0.1  # M3AE weights text loss 0.1 relative to image
    c.loss.mlm_ratio = 0.5
    c.batch_size = 4_096
    c.total_steps = 200_000
    c.optim.lr = 1.5e-4 * 4_096 / 256
    c.optim.b2 = 0.95
    c.optim.weight_decay = 0.05
    c.optim.warmup_steps = 10_000
    c.log_every = 100
    c.eval_every = 10_000
    c.checkpoint_every = 2_000
    return common.finalize(c, arg)
