"""ViT-B/16 CLIP train step on one GPU or TPU chip: samples/s and MFU against the published bf16 peak.

    python benchmarks/gpu.py [--batch 256] [--steps 10] [--attn auto|cudnn|xla|none]
    python benchmarks/gpu.py --dry-run   # any machine: trace the step abstractly (no allocation)

The model is experiments/configs/clip_b16.py as it trains (bf16 compute, f32 params, scan, remat
"dots", 224 px, text context 77) at --batch on the first device, through benchmarks/train_step.py's
build_step; the contrastive loss is the dense one (one device, no ring). MFU = model FLOPs
(mmfm.train.flops, matmuls only, no remat recompute) / step time / the device's published dense
bf16 peak; for a device not in PEAKS it prints the achieved TFLOP/s only. Attention: on GPU
jax.nn.dot_product_attention(implementation="cudnn") (cuDNN flash attention, model.attn_impl),
elsewhere the default (None: XLA's). On a machine without an accelerator it prints one line and
exits 0.
"""
from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "benchmarks")]

import jax  # noqa: E402

from experiments.configs import clip_b16  # noqa: E402

# Published dense bf16 peaks per chip, TFLOP/s; the first pattern found in device_kind wins.
PEAKS = (("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H200 NVL", 835.0), ("H100", 989.0),
         ("H200", 989.0), ("A100", 312.0), ("TPU v4", 275.0), ("TPU v5 lite", 197.0),
         ("TPU v5e", 197.0), ("TPU v5p", 459.0), ("TPU v5", 459.0), ("TPU v6 lite", 918.0),
         ("TPU v6e", 918.0))
WARMUP = 3


def published_peak(device_kind: str) -> float | None:
    """Dense bf16 TFLOP/s of one chip of this kind, or None when unknown."""
    kind = device_kind.lower()
    return next((p for pattern, p in PEAKS if pattern.lower() in kind), None)


def attn_impl_for(platform: str, choice: str = "auto") -> str | None:
    if choice == "auto":
        return "cudnn" if platform == "gpu" else None
    return None if choice == "none" else choice


def vit_b16_config(batch: int, attn_impl: str | None):
    c = clip_b16.get_config()
    with c.unlocked():
        c.batch_size = batch
        c.loss.chunked = False
        c.model.attn_impl = attn_impl
    return c


def model_flops(config) -> float:
    from mmfm.config_utils import model_config, objective_config
    from mmfm.train import flops as flops_lib

    cfg = model_config(config)
    b = config.batch_size
    return (flops_lib.train_flops_per_example(cfg, objective_config(config)) * b
            + flops_lib.contrastive_flops(b, cfg.embed_dim))


def dry_run(config) -> str:
    """Traces init and the train step with abstract values (jax.eval_shape): no memory is used."""
    import jax.numpy as jnp

    from mmfm.config_utils import model_config, objective_config
    from mmfm.models.multimodal import TwoTower
    from mmfm.train import optim
    from mmfm.train.state import create_state
    from mmfm.train.step import StepConfig, train_step

    cfg = model_config(config)
    model = TwoTower(cfg)
    tx, lr_fn = optim.make_optimizer(config.optim, config.total_steps)
    sc = StepConfig(model=model, tx=tx, lr_fn=lr_fn, objective=objective_config(config),
                    mean=tuple(config.preprocess.mean), std=tuple(config.preprocess.std))
    state = jax.eval_shape(functools.partial(create_state, model=model, tx=tx), jax.random.PRNGKey(0))
    b, s = config.batch_size, cfg.image.image_size
    batch = {"image": jax.ShapeDtypeStruct((b, s, s, 3), jnp.uint8),
             "tokens": jax.ShapeDtypeStruct((b, cfg.text.context_length), jnp.int32)}
    _, metrics = jax.eval_shape(functools.partial(train_step, sc=sc), state, batch)
    n = sum(x.size for x in jax.tree.leaves(state.params))
    return (f"ViT-B/16 CLIP traced: {n / 1e6:.1f}M parameters, batch {b}, {cfg.image.dtype} compute, "
            f"attn_impl={cfg.image.attn_impl}, {model_flops(config) / 1e12:.2f} TFLOP/step, "
            f"loss {metrics['loss'].dtype}{list(metrics['loss'].shape)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--attn", default="auto", choices=("auto", "cudnn", "xla", "none"),
                    help="attention implementation (auto: cudnn on GPU, the default elsewhere)")
    ap.add_argument("--dry-run", action="store_true", help="trace the step abstractly and exit")
    args = ap.parse_args()
    dev = jax.devices()[0]
    if args.dry_run:
        impl = attn_impl_for(dev.platform, args.attn)
        if impl == "cudnn" and dev.platform != "gpu":
            ap.error("--attn cudnn traces only on a GPU (jax looks for cuDNN while tracing)")
        print(dry_run(vit_b16_config(args.batch, impl)))
        return
    if dev.platform == "cpu":
        print("gpu.py: no accelerator present (jax sees only CPU devices); nothing measured")
        return

    from train_step import build_step, median_time, print_table

    config = vit_b16_config(args.batch, attn_impl_for(dev.platform, args.attn))

    t0 = time.perf_counter()
    _, _, step, state, batch = build_step(config)
    holder = [state]

    def run():
        holder[0], m = step(holder[0], batch)
        return m["loss"]

    jax.block_until_ready(run())
    compile_s = time.perf_counter() - t0
    t = median_time(run, args.steps, warmup=WARMUP)
    flops = model_flops(config)
    peak = published_peak(dev.device_kind)
    achieved = flops / t / 1e12
    print(f"jax {jax.__version__}; {jax.device_count()} {dev.platform} device(s), measuring one: "
          f"{dev.device_kind}; first step (compile) {compile_s:.0f} s")
    if peak is None:
        print(f"{dev.device_kind!r} has no published bf16 peak in gpu.py's PEAKS: achieved TFLOP/s only")
    row = dict(device=dev.device_kind, attn_impl=str(config.model.attn_impl), batch=args.batch,
               step_ms=1e3 * t, samples_s=args.batch / t, tflop_step=flops / 1e12, tflops=achieved,
               peak_tflops="-" if peak is None else peak, mfu="-" if peak is None else f"{achieved / peak:.3f}")
    print(f"\n# ViT-B/16 CLIP train step (bf16 compute), median of {args.steps} steps after {WARMUP} warm-up")
    print_table([row], list(row))


if __name__ == "__main__":
    main()
