"""Numerical equivalence of a train-step change: the losses of 20 steps, saved before and compared after.

    python benchmarks/step_losses.py --save /tmp/before.json [--model demo|openclip] [--steps 20]
    python benchmarks/step_losses.py --compare /tmp/before.json

Runs --steps train steps of the model (`demo` is experiments/configs/demo.py with its CLIP + MAE +
MLM objective; `openclip` is benchmarks/vs_openclip.py's model) on a fixed sequence of random batches
(uint8 images, token ids with SOT/EOT and padding; a new batch every step) from the same initial
state, and records every loss the step reports. --compare prints, per step, the largest absolute
difference over the logged losses and exits 1 when any exceeds --atol (default 1e-5).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "benchmarks")]

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from train_step import build_step  # noqa: E402


def random_batch(rng: np.random.Generator, batch: int, size: int, context: int, vocab: int) -> dict:
    tokens = np.zeros((batch, context), np.int32)
    lengths = rng.integers(3, context + 1, batch)
    for i, n in enumerate(lengths):
        tokens[i, 0], tokens[i, n - 1] = 2, 3  # SOT, EOT (the demo tokenizer's ids)
        tokens[i, 1:n - 1] = rng.integers(5, vocab, n - 2)
    images = rng.integers(0, 256, (batch, size, size, 3), np.uint8)
    return {"image": jnp.asarray(images), "tokens": jnp.asarray(tokens)}


def run_losses(model: str, steps: int) -> list[dict]:
    if model == "demo":
        from experiments.configs import demo
        config = demo.get_config()
    else:
        from vs_openclip import mmfm_config
        config = mmfm_config(0.0, "float32")
    cfg, _, step, state, _ = build_step(config)
    rng = np.random.default_rng(0)
    vocab = min(cfg.text.vocab_size, 1000)
    out = []
    for _ in range(steps):
        batch = random_batch(rng, config.batch_size, cfg.image.image_size, cfg.text.context_length, vocab)
        state, metrics = step(state, batch)
        out.append({k: float(v) for k, v in jax.device_get(metrics).items() if k.startswith("loss")})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = ap.add_mutually_exclusive_group(required=True)
    group.add_argument("--save", help="write the losses to this JSON file")
    group.add_argument("--compare", help="compare with the losses in this JSON file")
    ap.add_argument("--model", choices=("demo", "openclip"), default="demo")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--atol", type=float, default=1e-5)
    args = ap.parse_args()
    if args.save:
        losses = run_losses(args.model, args.steps)
        with open(args.save, "w") as f:
            json.dump(dict(model=args.model, losses=losses), f)
        print(f"{len(losses)} steps of {args.model}: final {losses[-1]} -> {args.save}")
        return
    if not os.path.isfile(args.compare):
        ap.error(f"--compare {args.compare}: no such file (write it first with --save)")
    with open(args.compare) as f:
        ref = json.load(f)
    losses = run_losses(ref["model"], len(ref["losses"]))
    worst = 0.0
    print(f"{'step':>4}  {'loss (saved)':>14}  {'loss (now)':>14}  max |diff| over {sorted(losses[0])}")
    for i, (a, b) in enumerate(zip(ref["losses"], losses)):
        if set(a) != set(b):
            sys.exit(f"step {i}: logged losses differ: saved {sorted(a)}, now {sorted(b)}")
        diff = max(abs(a[k] - b[k]) for k in a)
        worst = max(worst, diff)
        print(f"{i:>4}  {a['loss']:>14.7f}  {b['loss']:>14.7f}  {diff:.2e}")
    print(f"largest difference {worst:.2e} (atol {args.atol:g})")
    sys.exit(0 if worst <= args.atol else 1)


if __name__ == "__main__":
    main()
