"""Fine-tune the demo's image tower with a classification head on a captioned-shapes attribute.

Run (after the demo):
  mmfm train --config experiments/configs/finetune_shapes.py --workdir runs/ft_shape \
      --config.resume_from=runs/demo --config.data.dir=data
  mmfm train --config experiments/configs/finetune_shapes.py:tiny --workdir /tmp/ft_tiny \
      --config.resume_from=/tmp/demo_tiny --config.data.dir=/tmp/data

The normal trainer (resume, sharding, metrics, preemption) with a classification term: the model is
the demo's plus a zero-initialised linear head on the image embedding (`model.num_classes`), and
the loss is only the head's cross-entropy (`loss.classify_weight`). Every parameter but the head
starts from the demo run (`resume_mode="params"`, `resume_dont_load`); the text tower, the
temperature and the MAE decoder are frozen, so the run stays a usable two-tower model.

The labelled set is the single-object images among the first `data.max_train_examples` training
images (their shape names the only object). Before the first step the `linear_probe` evaluator fits a
linear probe on the pretrained, frozen features of the same images (`at_start`); the `head`
evaluator reports the fine-tuned head's test accuracy, so eval_results.json compares both protocols of
the MAE paper on the same labels. `--config.optim.freeze='("^(img|txt|mae_decoder)/", "^t$")'`
trains the head only; `--config.data.label=color` fine-tunes on colour.
"""
from mmfm.recipes import demo

FROZEN = ("^txt/", "^t$", "^mae_decoder/")  # unused by the classification term


def get_config(arg: str | None = None):
    tiny = "tiny" in (arg or "")
    config = demo.get_config(arg)  # locked: only existing keys change, typos fail
    config.model.num_classes = 6  # synthetic.SHAPES (and COLORS) both have 6 classes
    config.loss.contrastive_weight = 0.0
    config.loss.mae_weight = 0.0
    config.loss.mlm_weight = 0.0
    config.loss.masked_batch_frac = 1.0
    config.loss.classify_weight = 1.0
    config.resume_mode = "params"
    config.resume_dont_load = ("^classifier/",)

    config.data.label = "shape"
    label = config.data.get_ref("label")  # the evaluators follow --config.data.label
    config.data.max_train_examples = 4_000  # ~2k single-object images
    config.data.flip = True  # a mirrored shape is the same shape (use False for position labels)
    config.data.caption_drop = {}
    config.data.caption_whole = 0.0

    # 1500 steps (~48 epochs of ~2k labels), AdamW with optax's default moments: at 600 steps /
    # lr 1e-3 the fine-tune underfit and stayed below the probe.
    config.batch_size = 64
    config.total_steps = 1_500
    config.optim.lr = 2e-3
    config.optim.warmup_steps = 50
    config.optim.weight_decay = 0.05
    config.optim.b2 = 0.999
    config.optim.eps = 1e-8
    config.optim.freeze = FROZEN
    config.log_every = 50
    config.eval_every = 500
    config.checkpoint_every = 500
    if tiny:
        config.data.max_train_examples = 128
        config.batch_size = 16
        config.total_steps = 6
        config.optim.warmup_steps = 1
        config.log_every = 2
        config.eval_every = 0
        config.checkpoint_every = 2
    config.evals.evaluators = dict(
        head=dict(type="classify", dataset="captioned_shapes", label_key=label,
                  every=config.get_ref("eval_every")),
        linear_probe=dict(type="linear_probe", dataset="captioned_shapes", label_key=label,
                   max_train_examples=config.data.get_ref("max_train_examples"), at_start=True))
    return config
