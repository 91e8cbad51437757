"""MAE ViT-B/16 (He et al. 2022): pixel reconstruction of 75% masked patches; image tower only.

The contrastive and MLM weights are 0, so the text tower is never run (it still exists in the
parameter tree: the same trainer, one objective). 8-block 512-wide decoder as in the paper.
Run (TPU v4-32; batch 4096 as in the paper):
  python -m mmfm.train --config experiments/configs/mae_b16.py --workdir /mnt/gcs/runs/mae_b16 \
      --config.data.name=imagenet2012 --config.data.dir=/mnt/gcs/tfds
Smoke test on CPU:
  python -m mmfm.train --config experiments/configs/mae_b16.py:tiny --workdir /tmp/mae_tiny
"""
from mmfm.recipes import common


def get_config(arg: str | None = None):
    c = common.base_config()
    c.data.image_size = 224
    c.model.image = dict(variant="B/16", pool="cls", posemb="sincos2d")
    c.model.text = dict(variant="mu")
    c.model.embed_dim = 768
    c.model.mae_decoder = dict(width=512, depth=8, mlp_dim=2048, heads=16)
    c.model.dtype = "bfloat16"
    c.model.scan = True
    c.loss.contrastive_weight = 0.0
    c.loss.mae_weight = 1.0
    c.loss.mae_ratio = 0.75
    c.batch_size = 4_096
    c.total_steps = 250_000  # 800 epochs of ImageNet-1k
    c.optim.lr = 1.5e-4 * 4_096 / 256
    c.optim.b2 = 0.95
    c.optim.weight_decay = 0.05
    c.optim.warmup_steps = 12_500
    c.log_every = 100
    c.eval_every = 10_000
    c.checkpoint_every = 2_000
    return common.finalize(c, arg)
