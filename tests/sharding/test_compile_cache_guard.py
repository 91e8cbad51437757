"""The persistent-compilation-cache guard (mmfm.compile_cache), in fresh processes.

Each case is a subprocess so that XLA_FLAGS and JAX_COMPILATION_CACHE_DIR take effect before
JAX starts: it builds an mmfm mesh and runs a jitted sharded step with an all-reduce. With more
than one CPU device the guard must turn the cache off (nothing written to the cache directory,
one warning naming JAX_COMPILATION_CACHE_DIR); with one device the cache must keep working.
"""
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

STEP = """
import jax, jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P
from mmfm import sharding as sh
mesh = sh.make_mesh((-1, 1, 1))
rows, rep = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
def step(w, x):  # the gradient of a replicated w over data-sharded rows: an all-reduce
    g = jax.grad(lambda w: jnp.mean(jnp.tanh(x @ w) ** 2))(w)
    return w - 0.1 * g
f = jax.jit(step, in_shardings=(rep, rows), out_shardings=rep)
n = jax.device_count()
w = f(jnp.ones((16, 16)) / 16, jax.device_put(jnp.ones((8 * n, 16)), rows))
print("enabled", jax.config.jax_enable_compilation_cache, "sum", float(w.sum()))
"""


def run(devices, cache_dir):
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
               JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3", JAX_COMPILATION_CACHE_DIR=cache_dir,
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1")
    p = subprocess.run([sys.executable, "-c", STEP], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-3000:]
    return p


@pytest.mark.parametrize("devices", [8, 2])
def test_multi_device_cpu_runs_without_the_cache_and_say_so(devices, tmp_path):
    cache = tmp_path / "cache"
    p = run(devices, str(cache))
    assert "enabled False" in p.stdout
    assert not cache.exists() or not os.listdir(cache), os.listdir(cache)
    warnings = [line for line in p.stderr.splitlines() if "JAX_COMPILATION_CACHE_DIR" in line]
    assert len(warnings) == 1 and f"with {devices} XLA:CPU devices" in warnings[0], p.stderr[-2000:]
    assert str(cache) in warnings[0]


def test_one_device_keeps_the_cache(tmp_path):
    cache = tmp_path / "cache"
    first = run(1, str(cache))
    assert "enabled True" in first.stdout and "JAX_COMPILATION_CACHE_DIR" not in first.stderr
    entries = os.listdir(cache)
    assert entries  # the step (and its helpers) were written
    second = run(1, str(cache))
    assert sorted(os.listdir(cache)) == sorted(entries)  # the second process read, wrote nothing
    assert second.stdout.split("sum")[1] == first.stdout.split("sum")[1]
