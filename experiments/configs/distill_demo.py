"""Distil the demo model into a student with over 4x fewer FLOPs (TinyCLIP / open_clip Distill).

Run (after the demo, `make demo`, which writes runs/demo):
  python -m mmfm.train --config experiments/configs/distill_demo.py --workdir runs/distill \
      --config.data.dir=data
  python -m mmfm.train --config experiments/configs/distill_demo.py:tiny --workdir /tmp/distill_tiny \
      --config.data.dir=/tmp/data
The same student from scratch (the baseline of the table in experiments/README.md):
  python -m mmfm.train --config experiments/configs/distill_demo.py --workdir runs/student_scratch \
      --config.data.dir=data --config.loss.distill_weight=0

The student is the demo's architecture at half the width and image depth (64 wide, 2 image layers,
1 text layer; tests/train/test_distill_trainer.py checks the FLOP ratio with mmfm/train/flops.py).
It trains on the demo's data with its own contrastive loss plus `loss.distill_weight` times the soft
cross-entropy between its in-batch image<->text similarity distributions and those of the frozen
teacher (`distill.teacher`, here the demo run; each model with its own temperature). The teacher
is read once, placed on the mesh, and never updated or checkpointed. MAE and MLM are off: they
shaped the teacher's features, and the student learns them from its similarities.

Feature distillation (off here): `--config.loss.distill_feature_weight=1` adds 1 - cosine between
the student's embeddings, mapped to the teacher's width by a learned linear projection (one for
both towers; a student parameter `distill_proj`, left out of exports), and the teacher's, logged
as `loss/distill_feature`; it may also replace the similarity term (`loss.distill_weight=0`).

`:tiny` is self-contained: its teacher is a randomly initialised tiny demo model
(`distill.teacher="init"`), so every code path runs without a trained run; pass
`--config.distill.teacher=/tmp/demo_tiny` to distil the tiny demo run instead.
"""
from mmfm.recipes import demo


def get_config(arg: str | None = None):
    config = demo.get_config(arg)  # locked: only existing keys change, typos fail
    tiny = "tiny" in (arg or "")
    teacher_model = config.model.to_dict()
    if tiny:
        config.model.embed_dim = 16  # unlike the teacher's 32: embeddings of different widths
    else:
        config.model.image = dict(width=64, depth=2, mlp_dim=256, heads=2, patch_size=16,
                                  pool="cls", stem="hmlp")
        config.model.text = dict(width=64, depth=1, mlp_dim=256, heads=2, causal=False, pool="eot",
                                 mlm_head=False)
        config.model.embed_dim = 64
    config.model.mae_decoder = None
    config.model.text.mlm_head = False
    config.loss.mae_weight = 0.0
    config.loss.mlm_weight = 0.0
    config.loss.masked_batch_frac = 1.0
    config.loss.contrastive = "clip"
    config.loss.contrastive_weight = 1.0
    config.loss.distill_weight = 1.0
    if tiny:
        config.distill.teacher = "init"
        config.distill.init_model = teacher_model
    else:
        config.distill.teacher = "runs/demo"
        config.total_steps = 1000
        config.optim.warmup_steps = 50
    return config
