"""mmfm vs open_clip: the same two-tower CLIP train step on this CPU, side by side in one run.

    python benchmarks/vs_openclip.py --torch-python /tmp/zoo/torchvenv/bin/python [--rounds 2 --steps 10]

The model (image 64 px, patch 8; towers 192 wide x 6 deep, 3 heads; text context 32, vocabulary
8192; embedding 128; batch 64; AdamW with global-norm clipping; CLIP loss) is defined once as an
open_clip model config. open_clip builds it in torch; mmfm builds it from the same dict through its
own open_clip config converter (mmfm.zoo.convert.openclip_config), so activation, pre-LN, class-token
pooling, the causal text tower pooled at the argmax (EOT) token and the learned temperature are the
same by construction; the script also checks them on both sides and asserts equal parameter counts.

open_clip runs in a subprocess (torch is not an mmfm dependency, it lives in its own venv), mmfm in
this process through benchmarks/train_step.py's build_step. Rounds alternate A B A B: each round
runs every patch-drop ratio (open_clip's patch_dropout, mmfm's FLIP loss.patch_drop) for 3 warm-up
steps then --steps timed steps; the table reports the median of all timed steps of all rounds and
each round's samples/s. FLOPs are mmfm.train.flops' model count, the same number for both.
Exit status 2 (one line on stderr) when --torch-python cannot import torch and open_clip.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RATIOS = (0.0, 0.5, 0.75)
BATCH, WARMUP = 64, 3
# The benchmark model, as open_clip's model config (the JSON open_clip.add_model_config takes).
OPENCLIP_MODEL = dict(
    embed_dim=128,
    vision_cfg=dict(image_size=64, patch_size=8, width=192, layers=6, head_width=64, mlp_ratio=4.0),
    text_cfg=dict(context_length=32, vocab_size=8192, width=192, heads=3, layers=6))
# mmfm's optimizer defaults (recipes/common.py), mirrored in torch.
LR, BETAS, EPS, WD, CLIP_NORM = 1e-3, (0.9, 0.98), 1e-6, 0.1, 1.0
INSTALL_HINT = ("open_clip and torch are not project dependencies; install them in a separate venv "
                "(python3 -m venv /tmp/zoo/torchvenv && /tmp/zoo/torchvenv/bin/pip install "
                "torch==2.14.1 torchvision==0.29.1 open_clip_torch numpy, as tests/zoo/make_parity_fixtures.py documents) "
                "and pass --torch-python /tmp/zoo/torchvenv/bin/python")


def num_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def make_batch(seed: int = 0):
    """uint8 images [B, 64, 64, 3] and tokens [B, 32]: SOT, 10 random ids, EOT (the largest id), pad."""
    import numpy as np

    t, v = OPENCLIP_MODEL["text_cfg"], OPENCLIP_MODEL["vision_cfg"]
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (BATCH, v["image_size"], v["image_size"], 3), np.uint8)
    vocab, ctx = t["vocab_size"], t["context_length"]
    tokens = np.zeros((BATCH, ctx), np.int32)
    tokens[:, 0], tokens[:, 11] = vocab - 2, vocab - 1
    tokens[:, 1:11] = rng.integers(1, vocab - 2, (BATCH, 10))
    return images, tokens


# ----------------------------------------------------------------------------- open_clip (worker)

def torch_worker(spec: dict) -> dict:
    """One open_clip round: for each ratio, WARMUP steps then spec['steps'] timed steps (seconds)."""
    import numpy as np
    import open_clip
    import torch
    from open_clip.transformer import PatchDropout

    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    model = open_clip.model.CLIP(**OPENCLIP_MODEL, output_dict=True).train()
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([dict(params=decay, weight_decay=WD), dict(params=no_decay, weight_decay=0.0)],
                            lr=LR, betas=BETAS, eps=EPS)
    loss_fn = open_clip.ClipLoss()
    images_np, tokens_np = make_batch()
    images, tokens = torch.from_numpy(images_np), torch.from_numpy(tokens_np).long()
    mean = torch.tensor((0.48145466, 0.4578275, 0.40821073)).view(1, 3, 1, 1)
    std = torch.tensor((0.26862954, 0.26130258, 0.27577711)).view(1, 3, 1, 1)
    params = list(model.parameters())

    def step():
        x = (images.permute(0, 3, 1, 2).float() / 255.0 - mean) / std
        out = model(x, tokens)
        loss = loss_fn(out["image_features"], out["text_features"], out["logit_scale"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, CLIP_NORM)
        opt.step()
        return float(loss)

    times = {}
    for ratio in spec["ratios"]:
        model.visual.patch_dropout = PatchDropout(ratio) if ratio else torch.nn.Identity()
        for _ in range(WARMUP):
            step()
        ts = []
        for _ in range(spec["steps"]):
            t = time.perf_counter()
            step()
            ts.append(time.perf_counter() - t)
        times[str(ratio)] = ts
    n, a, b = 2048, torch.randn(2048, 2048), torch.randn(2048, 2048)
    mm = []
    for i in range(12):
        t = time.perf_counter()
        torch.mm(a, b)
        mm.append(time.perf_counter() - t)
    block = model.transformer.resblocks[0]
    arch = dict(act=type(block.mlp.gelu).__name__ + ":" + getattr(block.mlp.gelu, "approximate", "-"),
                ln_pre=not isinstance(model.visual.ln_pre, torch.nn.Identity),
                image_pool=model.visual.pool_type, text_pool=model.text_pool_type,
                text_causal=model.attn_mask is not None,
                learned_temperature=model.logit_scale.requires_grad)
    return dict(times=times, params=sum(p.numel() for p in params), arch=arch,
                matmul_gflops=2 * n ** 3 / statistics.median(mm[2:]) / 1e9,
                versions=f"torch {torch.__version__}, open_clip {open_clip.__version__}",
                threads=torch.get_num_threads())


def run_torch_round(torch_python: str, ratios, steps: int, threads: int) -> dict:
    spec = json.dumps(dict(ratios=list(ratios), steps=steps, threads=threads))
    proc = subprocess.run([torch_python, os.path.abspath(__file__), "--torch-worker", spec],
                          capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"open_clip worker failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def torch_available(torch_python: str) -> bool:
    proc = subprocess.run([torch_python, "-c", "import torch, open_clip"], capture_output=True)
    return proc.returncode == 0


# ----------------------------------------------------------------------------- mmfm (this process)

def mmfm_config(ratio: float, dtype: str):
    """The experiment config of the benchmark model: open_clip's config through mmfm's converter."""
    from mmfm.models.config import model_config_to_dict
    from mmfm.recipes import common
    from mmfm.zoo.convert.openclip_config import model_config_from_openclip

    d = model_config_to_dict(model_config_from_openclip(OPENCLIP_MODEL))
    shared = ("dtype", "param_dtype", "scan", "remat", "attn_impl")
    image = {k: v for k, v in d["image"].items() if k not in shared + ("image_size",)}
    text = {k: v for k, v in d["text"].items() if k not in shared + ("context_length",)}
    c = common.base_config()
    c.data.image_size = OPENCLIP_MODEL["vision_cfg"]["image_size"]
    c.data.context_length = OPENCLIP_MODEL["text_cfg"]["context_length"]
    c.model.image, c.model.text = image, text
    c.model.embed_dim, c.model.init_temperature = d["embed_dim"], d["init_temperature"]
    c.model.dtype = dtype
    c.loss.contrastive, c.loss.patch_drop = "clip", ratio
    c.batch_size = BATCH
    c.optim.lr, (c.optim.b1, c.optim.b2), c.optim.eps = LR, BETAS, EPS
    c.optim.weight_decay, c.optim.grad_clip = WD, CLIP_NORM
    return common.finalize(c, None)


class MmfmCase:
    """One compiled mmfm train step (build_step) kept across rounds."""

    def __init__(self, config, own_batch: bool):
        import jax
        import jax.numpy as jnp

        from mmfm.train import flops as flops_lib
        from train_step import build_step

        self.cfg, sc, self.step, state, self.batch = build_step(config)
        if own_batch:  # the same images and tokens as the open_clip side
            images, tokens = make_batch()
            self.batch = {"image": jnp.asarray(images), "tokens": jnp.asarray(tokens)}
        self.params = sum(x.size for x in jax.tree.leaves(state.params))
        self.bsz = config.batch_size
        self.flops = (flops_lib.train_flops_per_example(self.cfg, sc.objective) * self.bsz
                      + flops_lib.contrastive_flops(self.bsz, self.cfg.embed_dim))
        self.state = state
        self._run()  # compile outside the rounds

    def _run(self) -> None:
        import jax

        self.state, m = self.step(self.state, self.batch)
        jax.block_until_ready(m["loss"])

    def time(self, steps: int) -> list[float]:
        for _ in range(WARMUP):
            self._run()
        ts = []
        for _ in range(steps):
            t = time.perf_counter()
            self._run()
            ts.append(time.perf_counter() - t)
        return ts


def check_same_model(cfg, torch_arch: dict, mmfm_params: int, torch_params: int) -> str:
    im, tx = cfg.image, cfg.text
    mine = dict(act={"gelu": "GELU:none", "gelu_tanh": "GELU:tanh"}.get(im.act, im.act), ln_pre=im.ln_pre,
                image_pool={"cls": "tok"}.get(im.pool, im.pool), text_pool=tx.pool, text_causal=tx.causal,
                learned_temperature=True)  # TwoTower's `t` is a trained parameter
    assert im.act == tx.act, (im.act, tx.act)
    assert mine == torch_arch, f"architectures differ: mmfm {mine} vs open_clip {torch_arch}"
    assert mmfm_params == torch_params, f"parameter counts differ: mmfm {mmfm_params} vs open_clip {torch_params}"
    return ", ".join(f"{k}={v}" for k, v in torch_arch.items())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--torch-python", default=sys.executable,
                    help="a Python that imports torch and open_clip (default: this one)")
    ap.add_argument("--rounds", type=int, default=2, help="alternating open_clip/mmfm rounds")
    ap.add_argument("--steps", type=int, default=10, help="timed steps per case and round")
    ap.add_argument("--ratios", default=",".join(map(str, RATIOS)), help="patch-drop ratios")
    ap.add_argument("--no-demo", action="store_true", help="skip the demo-config row")
    ap.add_argument("--torch-worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.torch_worker:
        print(json.dumps(torch_worker(json.loads(args.torch_worker))))
        return
    if not torch_available(args.torch_python):
        print(f"vs_openclip.py: {args.torch_python} cannot import torch and open_clip. {INSTALL_HINT}",
              file=sys.stderr)
        sys.exit(2)
    ratios = [float(r) for r in args.ratios.split(",")]
    threads, load0 = num_cores(), os.getloadavg()[0]

    sys.path[:0] = [ROOT, os.path.join(ROOT, "benchmarks")]
    import jax
    from train_step import matmul_peak, print_table

    from experiments.configs import demo

    print(f"jax {jax.__version__} on {jax.devices()[0].platform}; torch threads = {threads} "
          f"(this machine's cores; XLA's CPU client uses all of them); "
          f"load average {load0:.1f} at start")
    t0 = time.perf_counter()
    cases = {(fw, r): MmfmCase(mmfm_config(r, dt), own_batch=True)
             for fw, dt in (("mmfm f32", "float32"), ("mmfm bf16", "bfloat16")) for r in ratios}
    if not args.no_demo:
        cases[("mmfm demo", None)] = MmfmCase(demo.get_config(), own_batch=False)
    print(f"mmfm: {len(cases)} steps compiled in {time.perf_counter() - t0:.0f} s")

    times = {k: [] for k in [("open_clip", r) for r in ratios] + list(cases)}
    rounds = {k: [] for k in times}
    xla_peak, torch_info = [], None
    for i in range(args.rounds):
        info = run_torch_round(args.torch_python, ratios, args.steps, threads)  # A
        torch_info = torch_info or info
        for r in ratios:
            times[("open_clip", r)] += info["times"][str(r)]
            rounds[("open_clip", r)].append(statistics.median(info["times"][str(r)]))
        torch_info["matmul_gflops"] = max(torch_info["matmul_gflops"], info["matmul_gflops"])
        xla_peak.append(matmul_peak())  # B
        for k, case in cases.items():
            ts = case.time(args.steps)
            times[k] += ts
            rounds[k].append(statistics.median(ts))
        xla_peak.append(matmul_peak())
        print(f"round {i + 1}/{args.rounds} done ({time.perf_counter() - t0:.0f} s)")

    ref = cases[("mmfm f32", ratios[0])]
    arch = check_same_model(ref.cfg, torch_info["arch"], ref.params, torch_info["params"])
    peak = max(xla_peak)
    print(f"{torch_info['versions']} ({torch_info['threads']} threads)")
    print(f"same model: {ref.params:,} parameters in both; {arch}")
    print(f"matmul peak (f32 2048^3, max over the run): XLA {peak / 1e9:.1f} GFLOP/s, "
          f"torch {torch_info['matmul_gflops']:.1f} GFLOP/s")
    rows = []
    for (fw, r), ts in times.items():
        case = cases.get((fw, r)) or cases[("mmfm f32", r)]  # open_clip: the same FLOP count
        t = statistics.median(ts)
        oc = statistics.median(times[("open_clip", r)]) if r is not None else None
        rows.append(dict(framework=fw, patch_drop="-" if r is None else r,
                         batch=case.bsz, step_ms=1e3 * t, samples_s=case.bsz / t,
                         vs_open_clip="-" if oc is None else f"{oc / t:.2f}x",
                         gflop_step=case.flops / 1e9, gflops=case.flops / t / 1e9,
                         frac_peak=case.flops / t / peak,
                         rounds_samples_s="/".join(f"{case.bsz / x:.1f}" for x in rounds[(fw, r)])))
    order = {"open_clip": 0, "mmfm f32": 1, "mmfm bf16": 2, "mmfm demo": 3}
    rows.sort(key=lambda row: (row["patch_drop"] == "-", row["patch_drop"] if row["patch_drop"] != "-" else 0,
                               order[row["framework"]]))
    print(f"\n# train step, median of {args.rounds} x {args.steps} steps (each round after {WARMUP} "
          f"warm-up steps); frac_peak = gflops / XLA matmul peak")
    print_table(rows, ["framework", "patch_drop", "batch", "step_ms", "samples_s", "vs_open_clip",
                       "gflop_step", "gflops", "frac_peak", "rounds_samples_s"])
    spread, worst = max((max(rounds[k]) / min(rounds[k]) - 1, k) for k in rounds)
    if (args.rounds > 1 and spread > 0.1) or load0 > threads / 2:
        # torch's OpenMP threads slow down far more than XLA's on an oversubscribed machine.
        print(f"\nwarning: the machine was busy (load average {load0:.1f} at start, "
              f"{os.getloadavg()[0]:.1f} at the end, on {threads} cores; round medians differ by up to "
              f"{spread:.0%}, {worst[0]} at patch drop {worst[1]}): rerun on an idle one before comparing")


if __name__ == "__main__":
    main()
