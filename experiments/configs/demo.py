"""Demo: the combined mmfm objective (CLIP + MAE + MLM) on built-in captioned shapes, on CPU.

Run:
  python -m mmfm.train --config experiments/configs/demo.py --workdir runs/demo
  python -m mmfm.train --config experiments/configs/demo.py:tiny --workdir /tmp/demo_tiny

A ~1.5M-parameter two-tower model on 64 px images (patch 16) learns colour, shape and retrieval in
about ten minutes on 2 CPU cores. Training captions randomly omit attributes (caption_drop): with
every attribute named, colour/size/position already identify a caption and shape is never learned.
The image tower uses the hierarchical-MLP patch stem (model.image.stem="hmlp"): with the plain
linear patch embedding, shape stayed near chance at this budget (a 16 px patch holds a whole small
object at any offset, and one matrix must recognise it everywhere).
"""
from experiments.configs import common


def get_config(arg: str | None = None):
    config = common.base_config()
    config.data.image_size = 64
    config.data.num_train = 20_000
    config.data.num_test = 1_000
    config.data.context_length = 28  # the longest 3-object caption is 28 tokens
    config.data.caption_drop = dict(color=0.75, size=0.5, position=0.6, shape=0.1)

    config.model.image = dict(width=128, depth=4, mlp_dim=512, heads=4, patch_size=16, pool="cls",
                              stem="hmlp")
    # The text tower runs twice a step (contrastive view, MLM view): two layers keep it cheap.
    config.model.text = dict(width=128, depth=2, mlp_dim=512, heads=4, causal=False, pool="eot",
                             mlm_head=True)
    config.model.embed_dim = 128
    config.model.mae_decoder = dict(width=64, depth=1, mlp_dim=256, heads=2)

    config.loss.contrastive = "clip"
    config.loss.contrastive_weight = 1.0
    config.loss.mae_weight = 1.0
    config.loss.mae_ratio = 0.75
    config.loss.mlm_weight = 0.5
    config.loss.mlm_ratio = 0.3

    # Many small steps beat few large ones for a small model on a time budget.
    config.batch_size = 128
    config.total_steps = 1000
    config.optim.lr = 2e-3
    config.optim.warmup_steps = 80
    config.optim.weight_decay = 0.05
    config.log_every = 25
    config.eval_every = 0  # only at the end: an eval costs ~20 steps of training time
    config.checkpoint_every = 500
    return common.finalize(config, arg)
