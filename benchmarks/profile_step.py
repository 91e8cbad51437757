"""Where a train step's time goes: per-op times from the JAX profiler, grouped by op kind and by part.

    python benchmarks/profile_step.py [--model openclip|demo] [--patch-drop 0] [--steps 5] [--top 12]

`openclip` is benchmarks/vs_openclip.py's model (the same config mmfm runs there), `demo` is
experiments/configs/demo.py. The script compiles the step, runs 3 warm-up steps, traces --steps
steps with jax.profiler, and reads the trace back (jax.profiler.ProfileData): every event that names
an HLO op is summed per op and divided by the step count. The compiled HLO says what each op is:

- kind: `matmul` (a dot or convolution, alone or fused), `layout` (a copy or transpose with no
  arithmetic), `reduce` (a fusion with a reduction: softmax, LayerNorm statistics, bias and norm
  gradients), `elementwise` (other fusions), `gather/scatter`;
- layer: attention, MLP, LayerNorm, embedding/stem, head/pool, or outside the towers;
- part: forward, backward (`transpose(jvp(...))` in the op's name) or update (optimizer, gradient
  norm, metrics), and the image tower, text tower or the rest (loss, optimizer).

Op times add up over XLA's worker threads, so their sum can exceed the step's wall time; the tables
give each row's share of the summed op time. The top ops are listed with their shapes.
"""
from __future__ import annotations

import argparse
import collections
import glob
import os
import re
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "benchmarks")]

import jax  # noqa: E402

from train_step import build_step, print_table  # noqa: E402

INSTR = re.compile(r"^\s*(?:ROOT )?%(\S+) = (.+?) ([a-z][a-z0-9-]*)\((.*)$")
COMP = re.compile(r"^(?:ENTRY )?%(\S+) ")
MATMUL, LAYOUT_OPS = {"dot", "convolution"}, {"copy", "transpose", "bitcast", "parameter", "reshape"}


def parse_hlo(text: str) -> tuple[dict, dict]:
    """(ops, comps): entry op name -> dict(opcode, shape, op_name, calls); computation -> opcodes."""
    comps, ops, current, entry = {}, {}, None, False
    for line in text.splitlines():
        if not line.startswith(" ") and "{" in line and (m := COMP.match(line)):
            current, entry = m.group(1), line.startswith("ENTRY")
            comps[current] = set()
            continue
        m = INSTR.match(line)
        if not m or current is None:
            continue
        name, shape, opcode, rest = m.groups()
        comps[current].add(opcode)
        if entry:
            calls = re.search(r"calls=%([^\s,]+)", rest)
            op_name = re.search(r'op_name="([^"]*)"', rest)
            ops[name] = dict(opcode=opcode, shape=shape.split("{")[0],
                             calls=calls.group(1) if calls else None,
                             op_name=op_name.group(1) if op_name else "")
    return ops, comps


def op_kind(op: dict, comps: dict) -> str:
    inner = comps.get(op["calls"], set()) if op["opcode"] == "fusion" else {op["opcode"]}
    if inner & MATMUL:
        return "matmul"
    if inner & {"gather", "scatter", "dynamic-slice", "dynamic-update-slice"}:
        return "gather/scatter"
    if inner <= LAYOUT_OPS | {"broadcast", "slice", "concatenate"} and inner & {"copy", "transpose"}:
        return "layout"
    if "reduce" in inner or "reduce-window" in inner:
        return "reduce"
    return "elementwise"


def op_part(op_name: str) -> str:
    phase = ("backward" if "transpose(jvp(" in op_name else "forward" if "jvp(" in op_name
             else "update")
    tower = ("image" if "/img/" in op_name else "text" if "/txt/" in op_name else "rest")
    return f"{phase} {tower}" if phase != "update" else "update (optimizer, norms, metrics)"


def op_module(op_name: str) -> str:
    """The layer an op belongs to: attention, MLP, LayerNorm, embedding/stem, head/pool, or outside."""
    m = re.search(r"/block_\d+/([a-z_0-9]+)|/blocks/([a-z_0-9]+)", op_name)
    if m:
        sub = m.group(1) or m.group(2)
        return {"ln1": "layernorm", "ln2": "layernorm"}.get(sub, sub)
    for key, name in (("embedding", "embedding/stem"), ("/stem/", "embedding/stem"), ("/ln_", "layernorm"),
                      ("/head/", "head/pool"), ("map_head", "head/pool")):
        if key in op_name:
            return name
    return "outside the towers" if "TwoTower" not in op_name else "tower (other)"


def trace_op_times(run, steps: int) -> dict:
    """Mean per-step time (s) of each HLO op, summed over the threads that ran it."""
    with tempfile.TemporaryDirectory() as d:
        jax.profiler.start_trace(d)
        for _ in range(steps):
            run()
        jax.profiler.stop_trace()
        (path,) = glob.glob(os.path.join(d, "**", "*.xplane.pb"), recursive=True)
        data = jax.profiler.ProfileData.from_file(path)
    totals = collections.Counter()
    for plane in data.planes:
        for line in plane.lines:
            for ev in line.events:
                stats = dict(ev.stats)
                if "hlo_op" in stats:
                    totals[stats["hlo_op"]] += ev.duration_ns * 1e-9 / steps
    return totals


def grouped(times: dict, ops: dict, key) -> list[dict]:
    total = sum(times.values())
    acc, count = collections.Counter(), collections.Counter()
    for name, t in times.items():
        k = key(name)
        acc[k] += t
        count[k] += 1
    return [dict(group=k, ops=count[k], ms=1e3 * t, share=f"{t / total:.1%}")
            for k, t in acc.most_common()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=("openclip", "demo"), default="openclip")
    ap.add_argument("--patch-drop", type=float, default=0.0, help="openclip model only")
    ap.add_argument("--dtype", default="float32", help="openclip model only")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--top", type=int, default=12)
    args = ap.parse_args()
    if args.model == "demo":
        from experiments.configs import demo
        config = demo.get_config()
    else:
        from vs_openclip import make_batch, mmfm_config
        config = mmfm_config(args.patch_drop, args.dtype)
    cfg, sc, step, state, batch = build_step(config)
    if args.model == "openclip":
        import jax.numpy as jnp
        images, tokens = make_batch()
        batch = {"image": jnp.asarray(images), "tokens": jnp.asarray(tokens)}
    ops, comps = parse_hlo(step.lower(state, batch).compile().as_text())
    holder = [state]

    def run():
        holder[0], m = step(holder[0], batch)
        return jax.block_until_ready(m["loss"])

    for _ in range(3):
        run()
    walls = []
    for _ in range(args.steps):
        t = time.perf_counter()
        run()
        walls.append(time.perf_counter() - t)
    times = trace_op_times(run, args.steps)
    times = {n: t for n, t in times.items() if n in ops}  # entry ops only (fusion bodies are inlined)
    info = {n: ops[n] for n in times}
    print(f"jax {jax.__version__}, {args.model} model, patch drop {args.patch_drop}, batch "
          f"{config.batch_size}: step wall time {1e3 * statistics.median(walls):.0f} ms (median of "
          f"{args.steps}), summed op time {1e3 * sum(times.values()):.0f} ms per step over "
          f"{len(times)} ops ({len(ops)} in the entry computation)")
    print("\n# by op kind")
    print_table(grouped(times, ops, lambda n: op_kind(info[n], comps)), ["group", "ops", "ms", "share"])
    print("\n# by part of the step")
    print_table(grouped(times, ops, lambda n: op_part(info[n]["op_name"])), ["group", "ops", "ms", "share"])
    print("\n# by part and layer")
    print_table(grouped(times, ops, lambda n: f"{op_part(info[n]['op_name'])} / {op_module(info[n]['op_name'])}"),
                ["group", "ops", "ms", "share"])
    print("\n# by part and kind")
    print_table(grouped(times, ops, lambda n: f"{op_part(info[n]['op_name'])} / {op_kind(info[n], comps)}"),
                ["group", "ops", "ms", "share"])
    print(f"\n# top {args.top} ops")
    rows = []
    for name, t in sorted(times.items(), key=lambda kv: -kv[1])[:args.top]:
        op = info[name]
        where = re.sub(r"^jit\(train_step\)/", "", op["op_name"])
        rows.append(dict(op=name, kind=op_kind(op, comps), ms=1e3 * t, shape=op["shape"][:40],
                         source=where[-70:]))
    print_table(rows, ["op", "kind", "ms", "shape", "source"])


if __name__ == "__main__":
    main()
