"""Full fine-tuning of the image tower with a classification head, next to its linear probe.

    mmfm finetune --config experiments/configs/finetune_shapes.py \
        --workdir runs/ft_shape --config.init_from=runs/demo --config.data.dir=data

`ImageClassifier` = the pretrained image tower (`img/...`, same parameter paths as `TwoTower`)
+ a zero-initialised linear head on the tower's embedding (the features the probes use). Before
training, the same labelled examples fit a linear probe on the frozen, L2-normalised embedding
(`mmfm.evals.linear_probe`, L2 chosen on a validation split), so one run reports both numbers.
`optim.freeze` patterns (e.g. `("^img/",)`) turn it into a head-only fit. Single device: the
adaptation sets here are small.
"""
from __future__ import annotations

import functools
import json
import logging
import os
import re
import time
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from mmfm.models.config import ModelConfig
from mmfm.models.multimodal import l2_normalize
from mmfm.models.vit import VisionTransformer
from mmfm.train.optim import path_str, schedule

log = logging.getLogger("mmfm")
__all__ = ["ImageClassifier", "finetune", "load_pretrained_image_tower"]


class ImageClassifier(nn.Module):
    """images [batch, H, W, 3] (normalised) -> logits [batch, num_classes]."""
    cfg: ModelConfig
    num_classes: int

    def setup(self):
        self.img = VisionTransformer(self.cfg.image, self.cfg.embed_dim)
        self.head = nn.Dense(self.num_classes, kernel_init=nn.initializers.zeros)

    def features(self, images, *, train: bool = False):
        """The L2-normalised embedding, exactly `TwoTower.encode_image`'s first output."""
        return l2_normalize(self.img(images, train=train)[0])

    def __call__(self, images, *, train: bool = False):
        emb, _ = self.img(images, train=train)
        return self.head(emb.astype(jnp.float32))


def load_pretrained_image_tower(path: str) -> tuple[ModelConfig, dict, Any]:
    """(model config, `img` params, the run's config) from a training run (`checkpoint.load_run`)."""
    import ml_collections

    from mmfm import checkpoint
    from mmfm.models.config import model_config_from_dict

    run = checkpoint.load_run(path)
    return (model_config_from_dict(run.model_config), run.params["img"],
            ml_collections.ConfigDict(run.config))


def _labels(params, freeze):
    pats = [re.compile(p) for p in freeze]

    def label(path, _):
        s = path_str(path)
        if any(p.search(s) for p in pats):
            return "frozen"
        return "head" if s.startswith("head/") else "backbone"

    return jax.tree_util.tree_map_with_path(label, params)


def make_tx(optim_cfg, total_steps: int, params):
    """AdamW (head at lr, tower at lr * backbone_lr_mult), warmup + cosine, clipping, freezing."""
    lr = schedule(lr=optim_cfg.lr, total_steps=total_steps, warmup_steps=optim_cfg.warmup_steps)
    mult = float(optim_cfg.backbone_lr_mult)

    def adamw(fn):
        return optax.adamw(fn, weight_decay=optim_cfg.weight_decay,
                           mask=lambda p: jax.tree.map(lambda x: x.ndim >= 2, p))

    tx = optax.multi_transform({"head": adamw(lr), "backbone": adamw(lambda s: lr(s) * mult),
                                "frozen": optax.set_to_zero()},
                               _labels(flax.core.unfreeze(params), tuple(optim_cfg.freeze)))
    return optax.chain(optax.clip_by_global_norm(optim_cfg.grad_clip), tx)


def _accuracy(model, params, images_u8, labels, norm, batch: int) -> float:
    correct = 0
    for i in range(0, len(images_u8), batch):
        logits = _logits(model, params, jnp.asarray(images_u8[i:i + batch]), norm)
        correct += int(np.sum(np.asarray(jnp.argmax(logits, -1)) == labels[i:i + batch]))
    return correct / max(len(labels), 1)


@functools.partial(jax.jit, static_argnums=(0, 3))
def _logits(model, params, images_u8, norm):
    return model.apply({"params": params}, _normalize(images_u8, norm))


@functools.partial(jax.jit, static_argnums=(0, 3))
def _features(model, params, images_u8, norm):
    return model.apply({"params": params}, _normalize(images_u8, norm), method=model.features)


def _normalize(images_u8, norm):
    mean, std = norm
    return (images_u8.astype(jnp.float32) / 255.0 - jnp.asarray(mean)) / jnp.asarray(std)


def _load_split(cfg, split: str, max_examples):
    from mmfm.evals import datasets as ds
    from mmfm.data.preprocess import ImageTransform, Preprocess

    d = cfg.data
    shapes = {k: d[k] for k in ("image_size", "num_train", "num_test", "seed")}
    data = ds.load_classification(d.name, split, data_dir=d.dir, max_examples=max_examples,
                                  label_key=d.label, shapes=shapes)
    resize = ImageTransform(Preprocess(image_size=int(d.image_size), interpolation="bilinear"))
    images = np.stack([resize.resize_u8(im) for im in data.images.images(range(len(data.images)))])
    return images, data.labels, len(data.classnames)


def finetune(cfg, workdir: str) -> dict:
    """Linear probe, then full fine-tuning; returns (and writes) both test accuracies."""
    from mmfm.evals.linear_probe import linear_probe
    from mmfm.train.metrics import MetricsWriter

    os.makedirs(workdir, exist_ok=True)
    train_x, train_y, num_classes = _load_split(cfg, "train", cfg.data.train_examples)
    test_x, test_y, _ = _load_split(cfg, "test", cfg.data.test_examples)
    if cfg.init_from:
        model_cfg, img_params, _ = load_pretrained_image_tower(cfg.init_from)
    else:
        from mmfm.config_utils import model_config
        model_cfg, img_params = model_config(cfg), None
    model = ImageClassifier(model_cfg, num_classes)
    dummy = jnp.zeros((1, model_cfg.image.image_size, model_cfg.image.image_size, 3), jnp.float32)
    params = nn.meta.unbox(model.init(jax.random.PRNGKey(cfg.seed), dummy)["params"])
    if img_params is not None:
        got = jax.tree.map(np.shape, img_params)
        if got != jax.tree.map(np.shape, params["img"]):
            raise ValueError(f"init_from={cfg.init_from!r}: image tower shapes differ from the config")
        params = {**params, "img": jax.tree.map(jnp.asarray, img_params)}
    norm = (tuple(cfg.preprocess.mean), tuple(cfg.preprocess.std))
    bs = int(cfg.batch_size)

    # The baseline: a linear probe on the frozen features of the same labelled examples.
    t0 = time.perf_counter()
    feats = lambda x: np.concatenate([np.asarray(_features(model, params, jnp.asarray(x[i:i + bs]), norm))
                                      for i in range(0, len(x), bs)])
    probe = linear_probe(feats(train_x), train_y, feats(test_x), test_y, num_classes=num_classes)
    results = {"probe/accuracy": probe["accuracy"], "probe/best_l2": probe["best_l2"],
               "probe/seconds": time.perf_counter() - t0}

    tx = make_tx(cfg.optim, int(cfg.total_steps), params)
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state, images_u8, labels, rng):
        x = _normalize(images_u8, norm)
        flip = jax.random.bernoulli(rng, 0.5, (x.shape[0], 1, 1, 1)) & cfg.augment_flip
        x = jnp.where(flip, x[:, :, ::-1], x)

        def loss_fn(p):
            logits = model.apply({"params": p}, x, train=True)
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    writer = MetricsWriter(workdir, enabled=jax.process_index() == 0, total_steps=int(cfg.total_steps))
    rng = np.random.default_rng(cfg.seed)
    order, pos, t0 = rng.permutation(len(train_y)), 0, time.perf_counter()
    try:
        for s in range(1, int(cfg.total_steps) + 1):
            if pos + bs > len(order):  # a fresh permutation per epoch, drop the remainder
                order, pos = rng.permutation(len(train_y)), 0
            idx = order[pos:pos + bs]
            pos += bs
            params, opt_state, loss = step(params, opt_state, jnp.asarray(train_x[idx]),
                                           jnp.asarray(train_y[idx]), jax.random.PRNGKey(s))
            if s % int(cfg.log_every) == 0 or s == int(cfg.total_steps):
                rec = {"loss": float(loss)}
                if (cfg.eval_every and s % int(cfg.eval_every) == 0) or s == int(cfg.total_steps):
                    rec["test_accuracy"] = _accuracy(model, params, test_x, test_y, norm, bs)
                writer.write(s, rec, kind="finetune")
                log.info("finetune step %d: %s", s, rec)
    finally:
        writer.close()
    results.update({"finetune/accuracy": _accuracy(model, params, test_x, test_y, norm, bs),
                    "finetune/train_accuracy": _accuracy(model, params, train_x, train_y, norm, bs),
                    "finetune/seconds": time.perf_counter() - t0,
                    "num_train": int(len(train_y)), "num_test": int(len(test_y))})
    with open(os.path.join(workdir, "finetune_results.json"), "w") as f:
        json.dump(results, f, indent=1)
    print(json.dumps(results, indent=1), flush=True)
    return results
