"""CLIP ViT-B/16 (Radford et al. 2021): softmax InfoNCE, class-token pooling, causal text tower.

Run (TPU v4-64 / 8x H100; global batch 32k as in the paper, 16k fits a v4-32):
  python -m mmfm.train --config experiments/configs/clip_b16.py --workdir /mnt/gcs/runs/clip_b16 \
      --config.data.name=wds --config.data.dir=/mnt/gcs/tfds
Smoke test on CPU:
  python -m mmfm.train --config experiments/configs/clip_b16.py:tiny --workdir /tmp/clip_tiny
"""
from mmfm.recipes import common


def get_config(arg: str | None = None):
    c = common.base_config()
    c.data.image_size = 224
    c.data.context_length = 77
    c.model.image = dict(variant="B/16", pool="cls", ln_pre=True, patch_bias=False, cls_posemb=True,
                         head_bias=False)
    c.model.text = dict(variant="M", heads=8, causal=True, pool="eot", head_bias=False)
    c.model.embed_dim = 512
    c.model.dtype = "bfloat16"
    c.model.scan = True
    c.model.remat = "dots"
    c.loss.contrastive = "clip"
    c.loss.chunked = True
    c.batch_size = 32_768
    c.total_steps = 390_000  # ~12.8B samples seen, as in the paper's 32 epochs of 400M
    c.optim.lr = 5e-4
    c.optim.warmup_steps = 2_000
    c.optim.weight_decay = 0.2
    c.log_every = 100
    c.eval_every = 5_000
    c.checkpoint_every = 2_000
    return common.finalize(c, arg)
