"""Serialized encoders (`mmfm export --format stablehlo`): size on disk and cold start.

  python benchmarks/serialized.py [--workdir RUN | --model EXPORT_DIR_OR_NAME [--pretrained TAG]]
                                  [--runs 5] [--keep DIR]

Serializes the model with the `mmfm` console script (timed), then prints each file's size and the
total beside the f32 params.safetensors of the model's export directory (written from the run with
`mmfm export` when --workdir is given). Cold start: a fresh `python` process that imports
mmfm.local, loads the artifact and embeds one image (then one text); the median of --runs
processes, wall time from process start, with the time of each stage inside the process. The same
for the library path (`import mmfm`, `create_model_and_transforms(EXPORT)`, `encode_image`) when
there is an export directory. JAX_COMPILATION_CACHE_DIR is unset in those processes, so every
run compiles as a user's first run does.

Default model: a random-init `mmfm-mu-8` (32 px, width 32) with a 60-piece SentencePiece
tokenizer trained here, written as an export directory.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

LOCAL_COLD = """
import time; t0 = time.perf_counter()
import numpy as np, mmfm.local
t1 = time.perf_counter(); m = mmfm.local.load({path!r}); t2 = time.perf_counter()
m.encode_image(np.zeros((1, m.image_size, m.image_size, 3), np.uint8)); t3 = time.perf_counter()
m.encode_text(np.zeros((1, m.context_length), np.int32)); t4 = time.perf_counter()
print({{"import": t1 - t0, "load": t2 - t1, "first image": t3 - t2, "first text": t4 - t3}})
"""
LIBRARY_COLD = """
import time; t0 = time.perf_counter()
import numpy as np, mmfm
t1 = time.perf_counter(); model, params, _, pre = mmfm.create_model_and_transforms({path!r})
t2 = time.perf_counter(); S = model.cfg.image.image_size
mmfm.encode_image(model, params, pre.normalize(np.zeros((1, S, S, 3), np.uint8))).block_until_ready()
t3 = time.perf_counter()
mmfm.encode_text(model, params, np.zeros((1, model.cfg.text.context_length), np.int32)).block_until_ready()
t4 = time.perf_counter()
print({{"import": t1 - t0, "load": t2 - t1, "first image": t3 - t2, "first text": t4 - t3}})
"""


def env() -> dict:
    e = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p))
    e.pop("JAX_COMPILATION_CACHE_DIR", None)
    return e


def mmfm_cli(*args) -> float:
    exe = os.path.join(os.path.dirname(sys.executable), "mmfm")
    t = time.perf_counter()
    p = subprocess.run([exe, *args], capture_output=True, text=True, env=env())
    if p.returncode:
        sys.exit(f"mmfm {' '.join(args)} failed:\n{p.stderr[-3000:]}")
    return time.perf_counter() - t


def tiny_export(root: str) -> str:
    import mmfm
    from mmfm.data.tokenizers import train_tokenizer
    from mmfm.zoo.convert import common
    from mmfm.zoo.export import save_export
    from mmfm.zoo.registry import TokenizerSpec
    from mmfm.zoo.sources import default_preprocess

    model, params = mmfm.create_model("mmfm-mu-8")
    tok = os.path.join(root, "t.model")
    train_tokenizer([f"a {c} shape number {i}" for i in range(200) for c in ("red", "blue")], tok,
                    vocab_size=60)
    return save_export(os.path.join(root, "export"), common.flatten(params), model.cfg,
                       preprocess=default_preprocess(model.cfg),
                       tokenizer=TokenizerSpec("sentencepiece", "t.model", model.cfg.text.context_length),
                       tokenizer_files=[tok])


def cold_starts(code: str, runs: int, label: str) -> tuple[float, dict]:
    walls, stages = [], []
    for i in range(runs):
        t = time.perf_counter()
        p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env())
        walls.append(time.perf_counter() - t)
        if p.returncode:
            sys.exit(f"{label} cold start failed:\n{p.stderr[-3000:]}")
        stages.append(eval(p.stdout.strip().splitlines()[-1]))  # our own dict literal
        print(f"  {label} run {i + 1}/{runs}: {walls[-1]:.2f} s", flush=True)
    median = {k: statistics.median(s[k] for s in stages) for k in stages[0]}
    return statistics.median(walls), median


def mib(n: int) -> str:
    return f"{n / 2**20:9.3f} MiB"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group()
    src.add_argument("--workdir", help="a training run (its latest checkpoint)")
    src.add_argument("--model", help="an export directory or a zoo architecture name")
    p.add_argument("--pretrained", help="pretrained tag for --model")
    p.add_argument("--runs", type=int, default=5, help="fresh processes per cold-start median")
    p.add_argument("--keep", help="write the artifact here (default: a temporary directory)")
    a = p.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-serialized-") as tmp:
        out = a.keep or os.path.join(tmp, "local")
        export = None
        if a.workdir:
            export = os.path.join(tmp, "export")
            mmfm_cli("export", "--workdir", a.workdir, "--out", export)
            source = ["--workdir", a.workdir]
        elif a.model:
            source = ["--model", a.model] + (["--pretrained", a.pretrained] if a.pretrained else [])
            if os.path.isfile(os.path.join(a.model, "params.safetensors")):
                export = a.model
        else:
            print("building the default tiny model (mmfm-mu-8, random init) ...", flush=True)
            export = tiny_export(tmp)
            source = ["--model", export]
        print(f"serializing {' '.join(source)} ...", flush=True)
        secs = mmfm_cli("export", *source, "--out", out, "--format", "stablehlo")
        meta = json.load(open(os.path.join(out, "serialized.json")))
        print(f"\n{meta['name']}: image {meta['image_size']} px, context {meta['context_length']}, "
              f"embed {meta['embed_dim']}, platforms {','.join(meta['platforms'])}; "
              f"serialized in {secs:.1f} s (mmfm export, one process)\n")
        total = 0
        print("size on disk")
        for name in sorted(os.listdir(out)):
            size = os.path.getsize(os.path.join(out, name))
            total += size
            print(f"  {name:<36}{mib(size)}")
        print(f"  {'total':<36}{mib(total)}")
        if export is not None:
            ref = os.path.getsize(os.path.join(export, "params.safetensors"))
            print(f"  {'params.safetensors (f32)':<36}{mib(ref)}   total / params = {total / ref:.2f}")

        print(f"\ncold start to first embedding (median of {a.runs} fresh processes, wall time)",
              flush=True)
        rows = [("mmfm.local", LOCAL_COLD.format(path=out))]
        if export is not None:
            rows.append(("library (mmfm)", LIBRARY_COLD.format(path=export)))
        results = [(label, *cold_starts(code, a.runs, label)) for label, code in rows]
        print(f"\n  {'path':<16}{'wall':>8}{'import':>9}{'load':>8}{'1st image':>11}{'1st text':>10}")
        for label, wall, st in results:
            print(f"  {label:<16}{wall:8.2f}{st['import']:9.2f}{st['load']:8.2f}"
                  f"{st['first image']:11.2f}{st['first text']:10.2f}")
        print("  (seconds; wall includes interpreter start-up)")


if __name__ == "__main__":
    main()
