"""Compile-time per-device memory of sharded training (no execution needed).

Two tables, both from `jax.jit(...).lower(...).compile().memory_analysis()` on 8 devices (virtual
CPU devices here; the numbers are the partitioned program's buffers, so they carry over):

1. A ViT-B/16 CLIP two-tower train step (AdamW) under data-parallel (8,1,1), FSDP (1,8,1) and
   FSDP+tensor (1,4,2) meshes: per-device parameter + optimizer bytes (from the state's shard
   shapes), and the compiled program's argument / output / temporary bytes.
2. Dense vs chunked (ring + tiled) SigLIP and CLIP loss, forward + backward, at global batch 1k,
   4k, 16k, 64k: per-device temporary bytes. Dense grows quadratically, chunked linearly.

Run:  python benchmarks/sharding_memory.py [--batch 64] [--skip_model] [--skip_loss]
"""
from __future__ import annotations

import argparse
import functools
import time

import jax

jax.config.update("jax_num_cpu_devices", 8)  # before any JAX op; a no-op on real accelerators

import flax.linen as nn  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402

from mmfm import sharding as sh  # noqa: E402
from mmfm.losses.contrastive import (chunked_clip_loss, chunked_siglip_loss, clip_loss,  # noqa: E402
                                     siglip_loss)
from mmfm.losses.objective import ObjectiveConfig  # noqa: E402
from mmfm.models.config import ModelConfig, text_config, vit_config  # noqa: E402
from mmfm.models.multimodal import TwoTower  # noqa: E402
from mmfm.train import optim  # noqa: E402
from mmfm.train.state import create_state, state_shardings  # noqa: E402
from mmfm.train.step import StepConfig, train_step  # noqa: E402

MiB = 2 ** 20
MESHES = {"data parallel": (8, 1, 1), "FSDP": (1, 8, 1), "FSDP+tensor": (1, 4, 2)}


def vit_b16_clip(scan: bool = True) -> ModelConfig:
    """open_clip ViT-B-16 shapes: B/16 image tower, 12x512 text tower (8 heads), embed 512."""
    common = dict(scan=scan, ln_eps=1e-5)
    return ModelConfig(
        image=vit_config("B/16", image_size=224, pool="cls", **common),
        text=text_config("M", heads=8, vocab_size=49408, context_length=77, causal=True,
                         pool="eot", **common),
        embed_dim=512, init_temperature=0.07).validate()


def optimizer(total_steps: int = 1000):
    cfg = ml_collections.ConfigDict(dict(name="adamw", lr=1e-3, warmup_steps=10, end_lr_frac=0.0,
                                         b1=0.9, b2=0.98, eps=1e-6, weight_decay=0.1,
                                         grad_clip=1.0, freeze=()))
    return optim.make_optimizer(cfg, total_steps)


def train_setup(shape, cfg: ModelConfig, batch: int) -> dict:
    """A CLIP train step (AdamW) on `shape`, not compiled: mesh, rules, model, state shardings,
    abstract state and batch (ShapeDtypeStructs with shardings) and the jitted step."""
    mesh, rules = sh.make_mesh(shape), sh.DEFAULT_RULES
    model = TwoTower(cfg)
    tx, lr_fn = optimizer()
    shardings = state_shardings(model, tx, mesh, rules)
    shapes = jax.eval_shape(functools.partial(create_state, model=model, tx=tx), jax.random.PRNGKey(0))
    abstract = jax.tree.map(lambda s, d: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=d),
                            shapes, shardings)
    bsh = sh.batch_sharding(mesh)
    size, ctx = cfg.image.image_size, cfg.text.context_length
    batch_abs = {"image": jax.ShapeDtypeStruct((batch, size, size, 3), jnp.uint8, sharding=bsh),
                 "tokens": jax.ShapeDtypeStruct((batch, ctx), jnp.int32, sharding=bsh)}
    sc = StepConfig(model=model, tx=tx, lr_fn=lr_fn, objective=ObjectiveConfig(contrastive="clip"),
                    mean=(0.5,) * 3, std=(0.5,) * 3, mesh=mesh)
    step = jax.jit(functools.partial(train_step, sc=sc), in_shardings=(shardings, bsh),
                   out_shardings=(shardings, None), donate_argnums=(0,))
    return dict(mesh=mesh, rules=rules, model=model, shardings=shardings, shapes=shapes,
                abstract=abstract, batch=batch_abs, step=step)


def model_row(name: str, shape, cfg: ModelConfig, batch: int) -> dict:
    t = train_setup(shape, cfg, batch)
    shapes, abstract = t["shapes"], t["abstract"]
    state_total = sh.total_bytes((shapes.params, shapes.opt_state))
    state_dev = sh.per_device_bytes((abstract.params, abstract.opt_state))
    t0 = time.perf_counter()
    with jax.set_mesh(t["mesh"]), nn.logical_axis_rules(t["rules"]):
        mem = t["step"].lower(abstract, t["batch"]).compile().memory_analysis()
    return dict(name=name, shape=shape, total=state_total, dev=state_dev,
                arg=mem.argument_size_in_bytes, out=mem.output_size_in_bytes,
                temp=mem.temp_size_in_bytes, alias=mem.alias_size_in_bytes,
                secs=time.perf_counter() - t0)


def print_model_table(batch: int, scan: bool) -> None:
    cfg = vit_b16_clip(scan)
    rows = [model_row(n, s, cfg, batch) for n, s in MESHES.items()]
    total = rows[0]["total"]
    print(f"\nViT-B/16 CLIP two-tower + AdamW, f32, global batch {batch} (224 px, 77 tokens), "
          f"8 devices. Unsharded params+optimizer: {total / MiB:.1f} MiB")
    head = (f"{'mesh':<14}{'(d,f,t)':<11}{'state/dev MiB':>14}{'x total':>9}{'args MiB':>10}"
            f"{'out MiB':>9}{'temp MiB':>10}{'compile s':>11}")
    print(head + "\n" + "-" * len(head))
    for r in rows:
        print(f"{r['name']:<14}{str(r['shape']):<11}{r['dev'] / MiB:>14.1f}{r['dev'] / total:>9.3f}"
              f"{r['arg'] / MiB:>10.1f}{r['out'] / MiB:>9.1f}{r['temp'] / MiB:>10.1f}{r['secs']:>11.1f}")
    fsdp = next(r for r in rows if r["name"] == "FSDP")
    print(f"FSDP (1,8,1): state per device = {fsdp['dev'] / total:.4f} of the total "
          f"(limit 1/8 + 5% = {1.05 / 8:.4f})")


def loss_temp_bytes(kind: str, chunked: bool, batch: int, dim: int, mesh) -> int:
    bias = -10.0
    if kind == "siglip":
        fn = (functools.partial(chunked_siglip_loss, mesh=mesh) if chunked else siglip_loss)
        loss = lambda x, y, s: fn(x, y, s, bias)
    else:
        fn = functools.partial(chunked_clip_loss, mesh=mesh) if chunked else clip_loss
        loss = lambda x, y, s: fn(x, y, s)
    emb = jax.ShapeDtypeStruct((batch, dim), jnp.float32,
                               sharding=NamedSharding(mesh, P(sh.BATCH_AXES, None)))
    scale = jax.ShapeDtypeStruct((), jnp.float32, sharding=NamedSharding(mesh, P()))
    grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))
    return grad.lower(emb, emb, scale).compile().memory_analysis().temp_size_in_bytes


def print_loss_table(dim: int = 512, batches=(1024, 4096, 16384, 65536)) -> None:
    mesh = sh.make_mesh((8, 1, 1))
    print(f"\nContrastive loss forward+backward, embeddings [B, {dim}] f32 split over 8 devices: "
          "per-device temporary MiB (growth vs the previous column)")
    head = f"{'loss':<18}" + "".join(f"{'B=' + str(b):>18}" for b in batches)
    print(head + "\n" + "-" * len(head))
    for kind in ("siglip", "clip"):
        for chunked in (False, True):
            vals = [loss_temp_bytes(kind, chunked, b, dim, mesh) for b in batches]
            cells = "".join(f"{v / MiB:>10.2f} (x{v / p:>4.1f})" for v, p in zip(vals, vals[:1] + vals))
            print(f"{kind + (' chunked' if chunked else ' dense'):<18}{cells}")
    print("Batch x4 per column: linear growth is x4, quadratic x16. Chunked logits tiles are "
          "[B/8, min(B/8, 512)]; the rest (ring carries, gradients) is [B/8, dim].")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=64, help="global batch of the model step")
    ap.add_argument("--no_scan", action="store_true", help="unrolled layers (slower compile)")
    ap.add_argument("--skip_model", action="store_true")
    ap.add_argument("--skip_loss", action="store_true")
    args = ap.parse_args()
    print(f"devices: {jax.device_count()} x {jax.devices()[0].platform}; jax {jax.__version__}")
    if not args.skip_model:
        print_model_table(args.batch, scan=not args.no_scan)
    if not args.skip_loss:
        print_loss_table()


if __name__ == "__main__":
    main()
