"""SigLIP ViT-B/16 (Zhai et al. 2023): sigmoid loss with learned bias, MAP pooling, ring-chunked.

Run (TPU v4-32, global batch 32k as in the paper):
  python -m mmfm.train --config experiments/configs/siglip_b16.py --workdir /mnt/gcs/runs/siglip_b16 \
      --config.data.name=wds --config.data.dir=/mnt/gcs/tfds
Smoke test on CPU:
  python -m mmfm.train --config experiments/configs/siglip_b16.py:tiny --workdir /tmp/siglip_tiny
"""
from mmfm.recipes import common


def get_config(arg: str | None = None):
    c = common.base_config()
    c.data.image_size = 224
    c.data.context_length = 64
    c.model.image = dict(variant="B/16", pool="map", posemb="learn", head=False)
    c.model.text = dict(variant="B", causal=False, mask_pad=False, pool="last", head_bias=True)
    c.model.embed_dim = 768
    c.model.init_temperature = 0.1  # logit scale 10, bias -10 (paper section 3.2)
    c.model.init_bias = -10.0
    c.model.dtype = "bfloat16"
    c.model.scan = True
    c.model.remat = "dots"
    c.loss.contrastive = "siglip"
    c.loss.chunked = True
    c.batch_size = 32_768
    c.total_steps = 275_000
    c.optim.lr = 1e-3
    c.optim.warmup_steps = 5_000
    c.optim.weight_decay = 1e-4
    c.optim.b2 = 0.95
    c.log_every = 100
    c.eval_every = 5_000
    c.checkpoint_every = 2_000
    return common.finalize(c, arg)
