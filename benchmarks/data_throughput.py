"""Input-pipeline throughput next to the training step's consumption rate, in one run.

    python benchmarks/data_throughput.py [--images 512] [--batches 12] [--workers 0,1,2]

Prepares (once, cached under --workdir) a jsonl corpus of JPEGs slightly larger than 64 px and
224 px, then times the real training loader (`build_data`, name=jsonl): TFDS ArrayRecord read +
JPEG decode + random resized crop + flip + SentencePiece tokenisation + batching, with 0, 1 and 2
grain worker processes. Rates are medians over --repeats timed windows of --batches batches after
a warm-up batch. The same run measures the train step (benchmarks/train_step.py) for the demo config
(64 px, batch 256) and ViT-S/16 (224 px, batch 16) and prints data rate / train rate: the pipeline
keeps up when that ratio is >= 1 (the acceptance target is >= 2x for the demo).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np
from PIL import Image

sys.path.insert(0, ".")  # experiments/ configs when run from the repo root
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def write_corpus(root: str, side: int, count: int) -> str:
    """`count` JPEGs of about side*1.15 px (smooth colour fields + noise: realistic file sizes)."""
    src = os.path.join(root, f"corpus{side}", "pairs.jsonl")
    if os.path.exists(src):
        return src
    os.makedirs(os.path.join(root, f"corpus{side}", "img"), exist_ok=True)
    big = int(side * 1.15)
    yy, xx = np.mgrid[0:big, 0:big] / big
    lines = []
    for i in range(count):
        rng = np.random.default_rng(i)
        base = np.stack([np.sin(6 * xx * rng.uniform(0.5, 2) + c) for c in rng.uniform(0, 6, 3)],
                        -1)
        img = (127 + 100 * base + rng.normal(0, 12, base.shape)).clip(0, 255).astype(np.uint8)
        Image.fromarray(img).save(os.path.join(root, f"corpus{side}", "img", f"{i}.jpg"),
                                  quality=90)
        lines.append(json.dumps({"image": f"img/{i}.jpg",
                                 "caption": f"a photo of pattern {i} with {i % 7} stripes"}))
    with open(src, "w") as f:
        f.write("\n".join(lines))
    return src


def data_rate(data_dir: str, side: int, workers: int, batch: int, batches: int,
              repeats: int) -> float:
    from mmfm.data.build import build_data
    cfg = dict(name="jsonl", dataset=f"bench{side}", dir=data_dir, image_size=side,
               context_length=32, crop_scale=(0.35, 1.0), flip=True, worker_count=workers)
    loader = build_data(cfg, batch_size=batch, seed=0)[0]
    rates = []
    with iter(loader) as it:
        next(it)  # warm-up: worker start, file opens
        for _ in range(repeats):
            t = time.perf_counter()
            for _ in range(batches):
                next(it)
            rates.append(batch * batches / (time.perf_counter() - t))
    return statistics.median(rates)


def train_rates(steps: int) -> dict[str, float]:
    import train_step as ts  # benchmarks/train_step.py
    return {name: ts.bench_config(name, ts.CONFIGS[name](), steps, peak=float("nan"))["samples_s"]
            for name in ("demo", "vit_s16")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", default="/tmp/mmfm_data_throughput")
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--batches", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workers", default="0,1,2")
    ap.add_argument("--train-steps", type=int, default=3)
    args = ap.parse_args()
    from mmfm.data.builders.corpus import prepare
    data_dir = os.path.join(args.workdir, "tfds")
    for side in (64, 224):
        prepare("jsonl", src=write_corpus(args.workdir, side, args.images), name=f"bench{side}",
                data_dir=data_dir, test_fraction=0.0, vocab_size=256)
    print(f"{os.cpu_count()} CPU cores; batch {args.batch}; medians of {args.repeats} windows "
          f"of {args.batches} batches")
    rows = []
    for side in (64, 224):
        for workers in (int(w) for w in args.workers.split(",")):
            rate = data_rate(data_dir, side, workers, args.batch, args.batches, args.repeats)
            rows.append((side, workers, rate))
    train = train_rates(args.train_steps)
    consumer = {64: ("demo", train["demo"]), 224: ("vit_s16", train["vit_s16"])}
    print("\n# data pipeline (read + JPEG decode + random resized crop + flip + tokenise)")
    print(f"{'px':>4} {'workers':>7} {'images/s':>9}   {'train config':>12} {'train img/s':>11} "
          f"{'data/train':>10}")
    for side, workers, rate in rows:
        name, t = consumer[side]
        print(f"{side:>4} {workers:>7} {rate:>9.0f}   {name:>12} {t:>11.1f} {rate / t:>10.2f}")


if __name__ == "__main__":  # grain worker processes re-import this module
    main()
