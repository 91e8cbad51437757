"""The accelerator and open_clip benchmarks on a CPU-only machine without torch: gpu.py says there is
no accelerator and exits 0, its dry run traces the real ViT-B/16 CLIP step (so a typo in the config
or the step shows here), and vs_openclip.py exits 2 with the install hint. Real processes."""
import importlib.util
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def bench(script, *args):
    return subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", script), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, JAX_PLATFORMS="cpu"))


def test_gpu_benchmark_on_cpu_says_no_accelerator_and_exits_0():
    p = bench("gpu.py")
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip().splitlines() == ["gpu.py: no accelerator present (jax sees only CPU devices); "
                                             "nothing measured"]


def test_gpu_benchmark_dry_run_traces_the_vit_b16_step():
    p = bench("gpu.py", "--dry-run")
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("ViT-B/16 CLIP traced: 124.5M parameters, batch 256, bfloat16 compute"), p.stdout


@pytest.mark.skipif(importlib.util.find_spec("open_clip") is not None, reason="open_clip is installed here")
def test_vs_openclip_without_open_clip_exits_2_with_the_install_hint():
    p = bench("vs_openclip.py", "--torch-python", sys.executable)
    assert p.returncode == 2
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "cannot import torch and open_clip" in lines[0], p.stderr
    assert "--torch-python /tmp/zoo/torchvenv/bin/python" in lines[0] and "pip install" in lines[0]
