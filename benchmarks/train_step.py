"""Train-step throughput vs. this machine's matmul peak, and the FLIP patch-dropping speedup.

    python benchmarks/train_step.py [--steps 10] [--configs demo,vit_s16]

Prints, per config: samples/s (median step time over --steps steps after warm-up), model FLOPs per
step counted from the config (mmfm.train.flops) next to XLA's cost analysis of the compiled step,
achieved GFLOP/s, the machine's dense f32 matmul peak measured in the same run, and their ratio.
Then the image-tower step (forward + backward of the ViT alone) at patch-drop ratios 0, 0.5, 0.75.
The machine is shared and noisy: compare the ratios, not the absolute numbers.
"""
from __future__ import annotations

import argparse
import functools
import statistics
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, ".")  # experiments/ configs when run from the repo root

from experiments.configs import demo  # noqa: E402
from mmfm import masking  # noqa: E402
from mmfm.models.multimodal import TwoTower, init_params  # noqa: E402
from mmfm.models.vit import VisionTransformer  # noqa: E402
from mmfm.train import flops as flops_lib  # noqa: E402
from mmfm.train import optim  # noqa: E402
from mmfm.config_utils import model_config, objective_config  # noqa: E402
from mmfm.train.state import create_state  # noqa: E402
from mmfm.train.step import StepConfig, train_step  # noqa: E402


def median_time(fn, steps: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        jax.block_until_ready(fn())
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def matmul_peak(n: int = 2048, steps: int = 10) -> float:
    """Dense f32 matmul FLOP/s through XLA (the machine's practical peak for our step)."""
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.PRNGKey(1), (n, n), jnp.float32)
    mm = jax.jit(jnp.dot)
    return 2 * n ** 3 / median_time(lambda: mm(a, b), steps)


def vit_s16_config():
    """A ViT-S/16-sized CLIP config (224 px, S text tower), the acceptance workload."""
    c = demo.get_config()
    with c.unlocked():
        c.data.image_size = 224
        c.model.image = dict(variant="S/16", pool="cls")
        c.model.text = dict(variant="S", causal=True, pool="eot")
        c.model.embed_dim = 384
        c.model.mae_decoder = None
        c.loss.mae_weight = 0.0
        c.loss.mlm_weight = 0.0
        c.batch_size = 16
    return c


CONFIGS = {"demo": demo.get_config, "vit_s16": vit_s16_config}


def build_step(config):
    cfg = model_config(config)
    model = TwoTower(cfg)
    tx, lr_fn = optim.make_optimizer(config.optim, config.total_steps)
    sc = StepConfig(model=model, tx=tx, lr_fn=lr_fn, objective=objective_config(config),
                    mean=tuple(config.preprocess.mean), std=tuple(config.preprocess.std))
    state = jax.jit(functools.partial(create_state, model=model, tx=tx))(jax.random.PRNGKey(0))
    rng = np.random.default_rng(0)
    b, s = config.batch_size, cfg.image.image_size
    batch = {"image": jnp.asarray(rng.integers(0, 256, (b, s, s, 3), np.uint8)),
             "tokens": jnp.asarray(np.concatenate([np.full((b, 1), 2), rng.integers(5, 200, (b, 10)),
                                                   np.full((b, 1), 3),
                                                   np.zeros((b, cfg.text.context_length - 12))],
                                                  1).astype(np.int32))}
    step = jax.jit(functools.partial(train_step, sc=sc), donate_argnums=(0,))
    return cfg, sc, step, state, batch


def bench_config(name: str, config, steps: int, peak: float) -> dict:
    cfg, sc, step, state, batch = build_step(config)
    xla_flops = step.lower(state, batch).compile().cost_analysis().get("flops", float("nan"))
    holder = [state]

    def run():
        holder[0], m = step(holder[0], batch)
        return m["loss"]

    t = median_time(run, steps)
    b = config.batch_size
    model_flops = flops_lib.train_flops_per_example(cfg, sc.objective) * b
    model_flops += flops_lib.contrastive_flops(b, cfg.embed_dim)
    achieved = model_flops / t
    return dict(config=name, batch=b, step_ms=1e3 * t, samples_s=b / t, gflop_step=model_flops / 1e9,
                xla_gflop_step=xla_flops / 1e9, gflops=achieved / 1e9, peak_gflops=peak / 1e9,
                frac_peak=achieved / peak)


def bench_patch_drop(config, steps: int) -> list[dict]:
    """Forward + backward of the image tower alone at FLIP drop ratios."""
    cfg = model_config(config)
    params = nn.meta.unbox(init_params(TwoTower(cfg), jax.random.PRNGKey(0)))["img"]
    vit = VisionTransformer(cfg.image, cfg.embed_dim)
    b, s = config.batch_size, cfg.image.image_size
    images = jax.random.normal(jax.random.PRNGKey(0), (b, s, s, 3))
    rows = []
    for ratio in (0.0, 0.5, 0.75):
        keep = None
        if ratio:
            keep, _ = masking.patch_mask(jax.random.PRNGKey(1), b, cfg.image.num_patches, ratio)

        @jax.jit
        def grad_step(p, x, keep=keep):
            return jax.grad(lambda p: jnp.sum(vit.apply({"params": p}, x, keep_idx=keep)[0] ** 2))(p)

        t = median_time(lambda: grad_step(params, images), steps)
        rows.append(dict(ratio=ratio, kept=cfg.image.num_patches if not ratio else keep.shape[1],
                         step_ms=1e3 * t))
    for r in rows:
        r["speedup"] = rows[0]["step_ms"] / r["step_ms"]
    return rows


def print_table(rows: list[dict], cols: list[str]) -> None:
    def fmt(v):
        return f"{v:.3g}" if isinstance(v, float) and abs(v) < 10 else (f"{v:.1f}" if isinstance(v, float) else str(v))
    widths = [max(len(c), *(len(fmt(r[c])) for r in rows)) for c in cols]
    print("  ".join(c.rjust(w) for c, w in zip(cols, widths)))
    for r in rows:
        print("  ".join(fmt(r[c]).rjust(w) for c, w in zip(cols, widths)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--configs", default="demo,vit_s16")
    args = ap.parse_args()
    names = args.configs.split(",")
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        ap.error(f"unknown config(s) {unknown}; valid: {sorted(CONFIGS)}")
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}, {jax.device_count()} device(s)")
    rows = []
    for name in names:
        # The machine is shared: measure the peak right before and right after each config and
        # compare with the larger (the conservative ratio).
        before = matmul_peak()
        row = bench_config(name, CONFIGS[name](), args.steps, before)
        peak = max(before, matmul_peak())
        row.update(peak_gflops=peak / 1e9, frac_peak=row["gflops"] * 1e9 / peak)
        rows.append(row)
    print("\n# train step (f32), median over", args.steps, "steps")
    print_table(rows, ["config", "batch", "step_ms", "samples_s", "gflop_step", "xla_gflop_step",
                       "gflops", "peak_gflops", "frac_peak"])
    for name in names:
        print(f"\n# image-tower fwd+bwd vs patch-drop ratio ({name})")
        print_table(bench_patch_drop(CONFIGS[name](), args.steps), ["ratio", "kept", "step_ms", "speedup"])


if __name__ == "__main__":
    main()
