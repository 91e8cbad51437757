"""The combined mmfm objective at ViT-B/16: SigLIP + MAE + MLM with one shared masked image view.

patch_drop == mae_ratio == 0.5, so one image-encoder pass on the kept half serves both the
contrastive and the reconstruction loss (FLIP-style speed), and the MAE decoder reconstructs the rest.
Run (TPU v4-64):
  python -m mmfm.train --config experiments/configs/mmfm_b16.py --workdir /mnt/gcs/runs/mmfm_b16 \
      --config.data.name=wds --config.data.dir=/mnt/gcs/tfds
Smoke test on CPU:
  python -m mmfm.train --config experiments/configs/mmfm_b16.py:tiny --workdir /tmp/mmfm_tiny
"""
from mmfm.recipes import common


def get_config(arg: str | None = None):
    c = common.base_config()
    c.data.image_size = 224
    c.data.context_length = 64
    c.model.image = dict(variant="B/16", pool="map", posemb="sincos2d")
    c.model.text = dict(variant="B", causal=False, pool="mean", mlm_head=True)
    c.model.embed_dim = 768
    c.model.init_temperature = 0.1
    c.model.init_bias = -10.0
    c.model.mae_decoder = dict(width=512, depth=4, mlp_dim=2048, heads=16)
    c.model.dtype = "bfloat16"
    c.model.scan = True
    c.model.remat = "dots"
    c.loss.contrastive = "siglip"
    c.loss.chunked = True
    c.loss.patch_drop = 0.5
    c.loss.mae_weight = 1.0
    c.loss.mae_ratio = 0.5
    c.loss.mlm_weight = 0.5
    c.loss.mlm_ratio = 0.3
    c.batch_size = 16_384
    c.total_steps = 300_000
    c.optim.lr = 1e-3
    c.optim.b2 = 0.95
    c.optim.weight_decay = 1e-4
    c.optim.warmup_steps = 5_000
    c.log_every = 100
    c.eval_every = 5_000
    c.checkpoint_every = 2_000
    return common.finalize(c, arg)
