"""How long a checkpoint save blocks the training loop, vs. the step time; and restore time.

  python benchmarks/checkpoint.py --data_dir /tmp/bench_data [--sizes demo,B16] [--reps 5]

For each state size it builds the real Trainer (demo config, or a CLIP ViT-B/16-sized model at
224 px), measures the median train-step time, then saves the state `reps` times through
`mmfm.checkpoint.Checkpointer` (async orbax) and reports medians of: the time `save()` blocks the
caller (device->host copy, then the write continues in a background thread), the time until the
write is complete, the step time while a write is in flight, and `restore_latest` onto the mesh.
All numbers come from one run on this machine; the data set is small (step time does not depend
on its size). B/16 runs at a small batch (--b16_batch) so a CPU step takes seconds, not minutes.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402


def size_config(name: str, data_dir: str, b16_batch: int):
    from experiments.configs import demo

    c = demo.get_config()
    with c.unlocked():
        c.data.dir, c.data.num_train, c.data.num_test = data_dir, 1024, 64
        c.checkpoint_every, c.keep_checkpoints = 0, 2
        if name == "B16":  # CLIP ViT-B/16 towers (text vocabulary: the shapes tokenizer's)
            c.data.image_size, c.data.context_length, c.data.num_train = 224, 77, 256
            c.model.image = dict(variant="B", patch_size=16, pool="cls")
            c.model.text = dict(width=512, depth=12, mlp_dim=2048, heads=8, causal=True,
                                pool="eot", mlm_head=False)
            c.model.embed_dim, c.model.mae_decoder = 512, None
            c.loss.mae_weight, c.loss.mlm_weight = 0.0, 0.0
            c.batch_size = b16_batch
    return c


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def bench(name: str, data_dir: str, reps: int, steps: int, b16_batch: int) -> dict:
    from mmfm import checkpoint
    from mmfm.train.loop import Trainer

    work = tempfile.mkdtemp(prefix=f"mmfm_ckpt_bench_{name}_")
    try:
        cfg = size_config(name, data_dir, b16_batch)
        tr = Trainer(cfg, work)
        state, it = tr.init_state(), iter(tr.train_loader)

        def step(s):
            s, m = tr.step(s, next(it))
            jax.block_until_ready(m)
            return s

        state = step(state)  # compile
        step_times = []
        for _ in range(steps):
            state, dt = timed(lambda: step(state))
            step_times.append(dt)
        ck = checkpoint.Checkpointer(work, cfg, tr)
        block, total, step_during = [], [], []
        for r in range(reps):
            t0 = time.perf_counter()
            ck.save(1000 + r, state, it)
            block.append(time.perf_counter() - t0)
            state, dt = timed(lambda: step(state))  # a step while the write is in flight
            step_during.append(dt)
            ck.wait()
            total.append(time.perf_counter() - t0)
        ck.close(state, it)
        restore = []
        for _ in range(max(2, reps // 2)):
            ck2 = checkpoint.Checkpointer(work, cfg, tr)
            (restored, _), dt = timed(lambda: ck2.restore_latest(tr.abstract_state()))
            jax.block_until_ready(restored)
            ck2.release()
            restore.append(dt)
        nbytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state))
        nparams = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))
        med = statistics.median
        return dict(size=name, batch=cfg.batch_size, params=nparams, state_mb=nbytes / 2**20,
                    step=med(step_times), block=med(block), step_during=med(step_during),
                    save_total=med(total), restore=med(restore))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data_dir", required=True, help="where captioned_shapes is built/read")
    ap.add_argument("--sizes", default="demo,B16")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--b16_batch", type=int, default=8)
    args = ap.parse_args()
    rows = [bench(s, args.data_dir, args.reps, args.steps, args.b16_batch)
            for s in args.sizes.split(",")]
    print(f"\n{jax.device_count()} x {jax.devices()[0].device_kind}; medians of {args.reps} saves "
          f"/ {args.steps} steps\n")
    head = (f"{'size':<5} {'batch':>5} {'params':>11} {'state MB':>9} {'step s':>8} "
            f"{'save blocks s':>13} {'block/step':>10} {'step+write s':>12} {'write done s':>12} "
            f"{'restore s':>9}")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['size']:<5} {r['batch']:>5} {r['params']:>11,} {r['state_mb']:>9.1f} "
              f"{r['step']:>8.3f} {r['block']:>13.4f} {r['block'] / r['step']:>10.1%} "
              f"{r['step_during']:>12.3f} {r['save_total']:>12.3f} {r['restore']:>9.3f}")


if __name__ == "__main__":
    main()
