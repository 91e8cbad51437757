"""Demo: the combined mmfm objective (CLIP + MAE + MLM) on built-in captioned shapes, on CPU.

Run:
  python -m mmfm.train --config experiments/configs/demo.py --workdir runs/demo
  python -m mmfm.train --config experiments/configs/demo.py:tiny --workdir /tmp/demo_tiny

A ~1.2M-parameter two-tower model on 64 px images (patch 16) learns colour, shape and retrieval in
about ten minutes on 2 CPU cores. Training captions mix whole captions with heavily
attribute-dropped ones (caption_drop, caption_whole): with every attribute named, colour/size/
position already identify a caption and shape is never learned; with every caption dropped, shape
is learned but retrieval of whole test captions is not. The image tower uses the
hierarchical-MLP patch stem (model.image.stem="hmlp"): with the plain linear patch embedding,
shape stayed near chance at this budget (a 16 px patch holds a whole small object at any offset,
and one matrix must recognise it everywhere).
"""
from mmfm.recipes import common


def get_config(arg: str | None = None):
    config = common.base_config()
    config.data.image_size = 64
    config.data.num_train = 20_000
    config.data.num_test = 1_000
    config.data.context_length = 28  # the longest 3-object caption is 28 tokens
    # A third of the captions whole (retrieval); the rest name the shapes and little else, so the
    # contrastive loss must tell shapes apart (close to a shape label for single objects).
    config.data.caption_drop = dict(color=0.95, size=0.9, position=0.95, shape=0.0)
    config.data.caption_whole = 0.35
    config.data.in_memory = True  # a TFDS read costs more CPU than the rest of the preprocessing

    config.model.image = dict(width=128, depth=4, mlp_dim=512, heads=4, patch_size=16, pool="cls",
                              stem="hmlp")
    # The text tower runs twice a step (contrastive view, MLM view). One layer learned as much per
    # step as two at this budget and is cheaper, which pays for more steps.
    config.model.text = dict(width=128, depth=1, mlp_dim=512, heads=4, causal=False, pool="eot",
                             mlm_head=True)
    config.model.embed_dim = 128
    config.model.mae_decoder = dict(width=64, depth=1, mlp_dim=256, heads=2)

    config.loss.contrastive = "clip"
    config.loss.contrastive_weight = 1.0
    config.loss.mae_weight = 1.0
    config.loss.mae_ratio = 0.75
    config.loss.mlm_weight = 0.5
    config.loss.mlm_ratio = 0.3
    # MAE and MLM on a quarter of each batch: they cost 40% of the step on the whole batch, and
    # the steps this buys are what shape needs (1300 steps: shape 0.73; 1800: 0.81).
    config.loss.masked_batch_frac = 0.25

    # Many small steps beat few large ones for a small model on a time budget.
    config.batch_size = 128
    config.total_steps = 1800
    config.optim.lr = 2e-3
    config.optim.warmup_steps = 80
    config.optim.weight_decay = 0.05
    config.log_every = 25
    config.eval_every = 0  # only at the end: an eval costs ~20 steps of training time
    config.checkpoint_every = 500
    return common.finalize(config, arg)
