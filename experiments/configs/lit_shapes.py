"""LiT on captioned shapes: lock the demo's image tower, tune the text tower contrastively.

Run (after the demo):
  python -m mmfm.train --config experiments/configs/lit_shapes.py --workdir runs/lit \
      --config.resume_from=runs/demo --config.data.dir=data
  python -m mmfm.train --config experiments/configs/lit_shapes.py:tiny --workdir /tmp/lit_tiny \
      --config.resume_from=/tmp/demo_tiny --config.data.dir=/tmp/data

The normal trainer with two changes: every parameter under `img/` gets a zero update
(`optim.freeze`, see mmfm/train/optim.py), and the run starts from the demo's parameters only
(`resume_mode="params"`: fresh optimizer, step 0). The model is the demo's (so the checkpoint
restores); only the contrastive loss is on, so the MAE decoder is unused. Zhai et al. 2022 found a
locked pretrained image tower with a tuned text tower the better way to add zero-shot ability.
"""
from mmfm.recipes import demo


def get_config(arg: str | None = None):
    config = demo.get_config(arg)  # locked: only existing keys change, typos fail
    config.optim.freeze = ("^img/",)
    config.resume_mode = "params"
    config.loss.contrastive = "clip"
    config.loss.mae_weight = 0.0
    config.loss.mlm_weight = 0.0
    config.loss.patch_drop = 0.0
    if "tiny" not in (arg or ""):
        config.total_steps = 300
        config.optim.warmup_steps = 30
        config.eval_every = 150
        config.checkpoint_every = 150
    return config
