"""Int8 (qwix, `mmfm quantize`) vs float32 exports: size on disk, CPU encode latency, accuracy.

    python benchmarks/quantize.py [--run runs/demo] [--reps 5] [--skip_b16] [--out DIR]

Models: the demo model (`experiments/configs/demo.py`; the trained run's latest checkpoint with
--run, else its random init) and ViT-B-16 with random init (seed 0). For each: the float32
export, its int8 weight-only export ("int8") and its int8 weights + int8 activations export
("w8a8", `activations="int8"`), their sizes on disk (params file and whole directory), and the
median latency of `mmfm.encode_image` / `mmfm.encode_text` at batch 1 and 32 (after one warm-up
call, which compiles), the three interleaved in one process.

With --run, the three exports of the demo also run the run's own end-of-training eval (what
`mmfm eval --checkpoint RUN` runs: zero-shot shape/colour/size, retrieval R@1 both ways, probes)
on its built-in shapes test split, and the script prints each and its difference to f32.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import jax
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # experiments/ configs, from any working directory


def random_export(cfg, out: str) -> str:
    """A float32 export of `cfg`'s random init (seed 0)."""
    import flax.linen as nn

    from mmfm.models.multimodal import TwoTower, init_params
    from mmfm.zoo.convert import common
    from mmfm.zoo.export import default_tokenizer, save_export
    from mmfm.zoo.registry import TokenizerSpec
    from mmfm.zoo.sources import default_preprocess

    model = TwoTower(cfg)
    params = jax.jit(lambda r: nn.meta.unbox(init_params(model, r)))(jax.random.PRNGKey(0))
    tok = default_tokenizer(cfg)
    if tok.files():  # a vocabulary with no shipped tokenizer: the ids are all the benchmark needs
        tok = TokenizerSpec("clip_bpe", None, cfg.text.context_length, True)
    return save_export(out, common.flatten(jax.tree.map(np.asarray, params)), cfg,
                       preprocess=default_preprocess(cfg), tokenizer=tok)


def sizes(path: str) -> tuple[int, int]:
    from mmfm.zoo.quantize import file_bytes
    return os.path.getsize(os.path.join(path, "params.safetensors")), file_bytes(path)


def latency(dirs: dict, reps: int) -> list[dict]:
    """Median seconds of encode_image / encode_text at batch 1 and 32, kinds interleaved."""
    import mmfm

    loaded = {k: mmfm.create_model_and_transforms(d)[:2] for k, d in dirs.items()}
    cfg = next(iter(loaded.values()))[0].cfg
    rng = np.random.default_rng(0)
    rows = []
    for what in ("image", "text"):
        for batch in (1, 32):
            if what == "image":
                s = cfg.image.image_size
                x = rng.normal(size=(batch, s, s, 3)).astype(np.float32)
                fns = {k: (lambda m=m, p=p: mmfm.encode_image(m, p, x)) for k, (m, p) in loaded.items()}
            else:
                x = rng.integers(1, cfg.text.vocab_size, (batch, cfg.text.context_length)).astype(np.int32)
                fns = {k: (lambda m=m, p=p: mmfm.encode_text(m, p, x)) for k, (m, p) in loaded.items()}
            times = {k: [] for k in fns}
            for f in fns.values():
                jax.block_until_ready(f())  # compile
            for _ in range(reps):
                for k, f in fns.items():
                    t0 = time.perf_counter()
                    jax.block_until_ready(f())
                    times[k].append(time.perf_counter() - t0)
            med = {k: statistics.median(v) for k, v in times.items()}
            rows.append({"encode": what, "batch": batch, **med})
            cols = "  ".join(f"{k} {v * 1e3:8.1f} ms" for k, v in med.items())
            ratios = "  ".join(f"{k}/f32 {v / med['f32']:.2f}" for k, v in med.items() if k != "f32")
            print(f"  {what:5s} batch {batch:2d}: {cols}  {ratios}", flush=True)
    return rows


def report_model(name: str, dirs: dict, reps: int) -> None:
    """dirs: {"f32": float export, "int8": weight-only, "w8a8": int8 weights and activations}."""
    (p32, d32), (p8, d8) = sizes(dirs["f32"]), sizes(dirs["int8"])
    print(f"\n{name}: params file f32 {p32 / 1e6:.2f} MB, int8 {p8 / 1e6:.2f} MB "
          f"(ratio {p8 / p32:.3f}); whole export f32 {d32 / 1e6:.2f} MB, int8 {d8 / 1e6:.2f} MB "
          f"(ratio {d8 / d32:.3f}); w8a8 stores the same int8 weights", flush=True)
    latency(dirs, reps)


def accuracy(run: str, dirs: dict, out: str) -> None:
    """The run's own eval on each export of `dirs`; zero-shot and retrieval R@1 side by side."""
    import ml_collections

    from mmfm import checkpoint
    from mmfm.api import load_eval_model
    from mmfm.evals.standalone import evaluate_training_data

    info = checkpoint.load_run(run, params=False)
    run_cfg = ml_collections.ConfigDict(info.config)
    res = {}
    for kind, d in dirs.items():
        t0 = time.perf_counter()
        res[kind] = evaluate_training_data(run_cfg, load_eval_model(d), step=info.step,
                                           out_dir=os.path.join(out, f"eval_{kind}"))
        print(f"  {kind} eval: {time.perf_counter() - t0:.0f} s", flush=True)
    keys = [k for k in sorted(res["f32"]) if ("zeroshot" in k or "r@1" in k.lower() or "r1" in k)
            and isinstance(res["f32"][k], (int, float))]
    print(f"\ndemo accuracy, step {info.step} of {run} (built-in shapes test split):")
    others = [k for k in dirs if k != "f32"]
    print(f"  {'metric':40s} {'f32':>8s}" + "".join(f" {k:>8s} {'diff':>8s}" for k in others))
    for k in keys:
        a = float(res["f32"][k])
        row = "".join(f" {b:8.4f} {b - a:+8.4f}"
                      for b in (float(res[o].get(k, float("nan"))) for o in others))
        print(f"  {k:40s} {a:8.4f}{row}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", default=None, help="trained demo workdir: its latest checkpoint is "
                                               "measured and evaluated (default: random init)")
    p.add_argument("--reps", type=int, default=5, help="timed calls per case (median)")
    p.add_argument("--skip_b16", action="store_true", help="only the demo model")
    p.add_argument("--out", default=None, help="keep the exports and eval results here")
    a = p.parse_args()

    from experiments.configs import demo
    from mmfm.api import quantize_export
    from mmfm.config_utils import model_config
    from mmfm.zoo.export import export_from_workdir
    from mmfm.zoo.registry import get_model_config

    print(f"jax {jax.__version__} on {jax.devices()[0].platform}, {os.cpu_count()} CPUs", flush=True)
    with tempfile.TemporaryDirectory(prefix="mmfm-bench-quantize-") as tmp:
        out = a.out or tmp
        f32 = os.path.join(out, "demo_f32")
        if a.run:
            export_from_workdir(a.run, f32)
        else:
            random_export(model_config(demo.get_config()), f32)
        dirs = {"f32": f32, "int8": quantize_export(f32, os.path.join(out, "demo_int8")),
                "w8a8": quantize_export(f32, os.path.join(out, "demo_w8a8"), activations="int8")}
        report_model("demo" + (f" ({a.run})" if a.run else " (random init)"), dirs, a.reps)
        if a.run:
            accuracy(a.run, dirs, out)
        if not a.skip_b16:
            f32 = random_export(get_model_config("ViT-B-16"), os.path.join(out, "b16_f32"))
            dirs = {"f32": f32, "int8": quantize_export(f32, os.path.join(out, "b16_int8")),
                    "w8a8": quantize_export(f32, os.path.join(out, "b16_w8a8"), activations="int8")}
            report_model("ViT-B-16 (random init, seed 0)", dirs, a.reps)


if __name__ == "__main__":
    main()
