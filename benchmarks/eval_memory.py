"""Per-device memory of evaluation on the training mesh vs the training step (compile-time).

A ViT-B/16-sized CLIP two-tower (open_clip ViT-B-16 shapes) with AdamW on 8 devices: the train
step and the run's eval encoders (`mmfm.evals.encoders.MeshEncoder`, the functions the loop's
evaluations call) compiled for the same state shardings. Peak per device = arguments + outputs +
temporaries - donated aliases, from `memory_analysis()` of the partitioned programs (virtual CPU
devices here; the buffers are the same on accelerators). The eval takes the params as they are
sharded, so under FSDP it holds 1/8 of them plus one gathered layer at a time, never all of them.

Run:  python benchmarks/eval_memory.py [--batch 64] [--eval_batch 256] [--meshes 1,8,1]
"""
from __future__ import annotations

import argparse

import jax

jax.config.update("jax_num_cpu_devices", 8)  # before any JAX op; a no-op on real accelerators

import jax.numpy as jnp  # noqa: E402

from mmfm import sharding as sh  # noqa: E402
from mmfm.evals.encoders import MeshEncoder  # noqa: E402
from sharding_memory import train_setup, vit_b16_clip  # noqa: E402

MiB = 2 ** 20


def _peak(compiled) -> int:
    m = compiled.memory_analysis()
    return (m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
            - m.alias_size_in_bytes)


def measure(shape, batch: int, eval_batch: int) -> dict:
    cfg = vit_b16_clip()
    t = train_setup(shape, cfg, batch)
    mesh, rules, abstract = t["mesh"], t["rules"], t["abstract"]
    enc = MeshEncoder(t["model"], mesh=mesh, rules=rules, param_sharding=t["shardings"].params,
                      batch_size=eval_batch)
    eb, bsh = enc.batch_size, enc.data_sharding
    size, ctx = cfg.image.image_size, cfg.text.context_length
    with sh.mesh_context(mesh, rules):
        train = _peak(t["step"].lower(abstract, t["batch"]).compile())
        img = _peak(enc.image_fn.lower(abstract.params, jax.ShapeDtypeStruct(
            (eb, size, size, 3), jnp.float32, sharding=bsh)).compile())
        txt = _peak(enc.text_fn.lower(abstract.params, jax.ShapeDtypeStruct(
            (eb, ctx), jnp.int32, sharding=bsh)).compile())
    return dict(shape=shape, train=train, img=img, txt=txt,
                params=sh.total_bytes(t["shapes"].params))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=64, help="global training batch")
    ap.add_argument("--eval_batch", type=int, default=256, help="eval batch (config.evals.batch_size)")
    ap.add_argument("--meshes", default="1,8,1;8,1,1", help="';'-separated (data,fsdp,tensor)")
    a = ap.parse_args()
    rows = [measure(tuple(int(x) for x in m.split(",")), a.batch, a.eval_batch)
            for m in a.meshes.split(";")]
    print(f"\nViT-B/16 CLIP two-tower, f32, 8 devices; train batch {a.batch}, eval batch "
          f"{a.eval_batch}; all params {rows[0]['params'] / MiB:.1f} MiB")
    head = (f"{'mesh':<11}{'train step peak MiB/dev':>24}{'eval image MiB/dev':>20}"
            f"{'eval text MiB/dev':>19}{'eval / train':>14}")
    print(head + "\n" + "-" * len(head))
    for r in rows:
        worst = max(r["img"], r["txt"])
        print(f"{str(r['shape']):<11}{r['train'] / MiB:>24.1f}{r['img'] / MiB:>20.1f}"
              f"{r['txt'] / MiB:>19.1f}{worst / r['train']:>14.3f}")


if __name__ == "__main__":
    main()
