"""Shared defaults for every experiment config; each config overrides a few fields.

`finalize(config, arg)` applies the `tiny` override (a CPU job of one to two minutes with the same
code paths) and locks the config, so a typo in `--config.x=y` fails listing the valid keys.
"""
import ml_collections


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.data = dict(name="captioned_shapes", dir="data", image_size=64, num_train=20_000,
                  num_test=1_000, seed=0, context_length=32, caption_drop={}, caption_whole=0.0,
                  worker_count=0, in_memory=False,  # in_memory: keep train records once read
                  # Other datasets (mmfm/data/datasets.py): prepared corpus name for wds/jsonl,
                  # tokenizer file ("" = the dataset's own), train augmentation, a
                  # "module:function" transform factory, components of name="mixture".
                  dataset="", tokenizer="", lowercase=False, crop_scale=(1.0, 1.0), flip=False,
                  transform="", mixture=(),
                  # Fine-tuning: the integer field the classification term trains on
                  # (captioned_shapes: "shape"/"color", single-object images only; catalogs:
                  # "label"), and the first N train records (0 = all).
                  label="", max_train_examples=0)
    # Image normalisation, travels with the model (exports, zoo tags). CLIP's defaults.
    c.preprocess = dict(mean=(0.48145466, 0.4578275, 0.40821073),
                        std=(0.26862954, 0.26130258, 0.27577711))
    c.model = dict(image=dict(variant="mu", patch_size=16, pool="cls"),
                   text=dict(variant="mu", causal=True, pool="eot", mlm_head=False),
                   embed_dim=128, init_temperature=0.07, init_bias=None, mae_decoder=None,
                   num_classes=0,  # > 0: a classification head on the image embedding
                   dtype="float32", param_dtype="float32", scan=False, remat="none")
    c.loss = dict(contrastive="clip", contrastive_weight=1.0, mae_weight=0.0, mlm_weight=0.0,
                  patch_drop=0.0, mae_ratio=0.75, mlm_ratio=0.15, norm_pix=True, chunked=False,
                  masked_batch_frac=1.0, classify_weight=0.0, label_smoothing=0.0,
                  distill_weight=0.0,
                  # > 0: feature distillation, 1 - cos(student embedding through a learned
                  # projection to the teacher's width, teacher embedding), both towers.
                  distill_feature_weight=0.0)
    # The frozen teacher of `loss.distill_*weight` (mmfm/train/teacher.py): a training run, an
    # export dir, or a zoo architecture with its `pretrained` tag; "init": a random
    # `init_model` (a config.model-like dict; empty: the student's own), for smoke tests.
    c.distill = dict(teacher="", pretrained="", init_model={})
    c.optim = dict(name="adamw", lr=1e-3, warmup_steps=100, end_lr_frac=0.0, b1=0.9, b2=0.98,
                   eps=1e-6, weight_decay=0.1, grad_clip=1.0, freeze=())
    c.mesh = dict(shape=(-1, 1, 1),
                  rules=(("batch", ("data", "fsdp")), ("embed", "fsdp"), ("mlp", "tensor"),
                         ("heads", "tensor"), ("vocab", "tensor")))
    c.batch_size = 256
    c.total_steps = 1_000
    c.log_every = 50
    c.eval_every = 0  # 0: only at the end
    c.checkpoint_every = 500
    c.keep_checkpoints = 3
    # Start from another run's checkpoint when this workdir has none (a workdir, its checkpoints/
    # dir or one step dir); "full": params, optimizer, step, rng, data position; "params": params.
    # With "params": regexes of parameter paths that keep their fresh init (a new head).
    c.resume_from = ""
    c.resume_mode = "full"
    c.resume_dont_load = ()
    # The built-in eval of the training data (retrieval, zero-shot, probes; few_shot=() skips the
    # few-shot probes) and named evaluators (mmfm/evals/evaluators.py).
    c.evals = dict(probe_train_examples=4_000, batch_size=256, few_shot=(1, 5, 10),
                   few_shot_seeds=(0, 1, 2), evaluators={})
    return c


def mesh_preset(name: str, tensor: int = 2) -> dict:
    """`config.mesh` for 'dp' (-1,1,1), 'fsdp' (1,-1,1) or 'fsdp_tensor' (1,-1,tensor).

    The rules are the defaults of mmfm/sharding.py in every case: the shape picks the strategy.
    """
    from mmfm import sharding

    if name not in sharding.MESH_PRESETS:
        raise ValueError(f"unknown mesh preset {name!r}; valid: {sorted(sharding.MESH_PRESETS)}")
    shape = (1, -1, tensor) if name == "fsdp_tensor" else sharding.MESH_PRESETS[name]
    return dict(shape=shape, rules=sharding.DEFAULT_RULES)


def apply_tiny(c: ml_collections.ConfigDict) -> None:
    """One to two minutes on CPU: the mu model, tiny data, 4 steps; same code paths as the full run."""
    c.data.image_size = 32
    c.data.num_train = 256
    c.data.num_test = 64
    c.data.context_length = 32
    c.model.image = dict(c.model.image.to_dict(), width=32, depth=1, mlp_dim=64, heads=2,
                         patch_size=8)
    c.model.text = dict(c.model.text.to_dict(), width=32, depth=1, mlp_dim=64, heads=2)
    c.model.embed_dim = 32
    c.model.dtype = "float32"
    if c.model.mae_decoder:
        c.model.mae_decoder = dict(width=32, depth=1, mlp_dim=64, heads=2)
    c.batch_size = 16
    c.loss.masked_batch_frac = 1.0  # a sub-batch of 16 would not split over 8 test devices
    c.total_steps = 4
    c.optim.warmup_steps = 1
    c.log_every = 2
    c.eval_every = 0
    c.checkpoint_every = 2
    c.evals.probe_train_examples = 64
    c.evals.batch_size = 32


def finalize(c: ml_collections.ConfigDict, arg: str | None) -> ml_collections.ConfigDict:
    args = [a for a in (arg or "").split(",") if a]
    unknown = [a for a in args if a not in ("tiny",)]
    if unknown:
        raise ValueError(f"unknown config argument(s) {unknown}; valid: tiny")
    if "tiny" in args:
        apply_tiny(c)
    c.lock()
    return c
