"""mmfm's glibc malloc tuning (mmfm/host_memory.py): a jitted computation whose temporaries need a
block larger than glibc's mmap threshold page-faults its working set back in at every run without
the tuning, and reuses it (no page faults) once `import mmfm` has applied it. Fresh processes,
because the tuning must precede JAX's worker threads."""
import os
import subprocess
import sys

import pytest

SCRIPT = r"""
import resource, sys
import mmfm  # applies the tuning unless MMFM_HOST_MALLOC=0
import jax, jax.numpy as jnp

@jax.jit
def f(x):  # 3 temporaries of 64 MB each, alive together
    a = jnp.sin(x); b = jnp.cos(x); c = jnp.tanh(x)
    return (a * b + c).sum() + (a - c).max() + (b * c).min()

x = jnp.ones((4096, 4096))
for _ in range(3):
    f(x).block_until_ready()
faults = []
for _ in range(8):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    f(x).block_until_ready()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(mmfm.host_memory.keep_step_memory(), min(faults), max(faults))
"""


def faults_per_run(**env) -> tuple[bool, int, int]:
    """(tuning applied, fewest and most page faults in one of 8 runs after 3 warm-up runs)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=dict(clean, JAX_PLATFORMS="cpu", **env),
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    applied, fewest, most = out.stdout.split()
    return applied == "True", int(fewest), int(most)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc tuning is Linux-only")
def test_import_mmfm_keeps_step_memory_between_runs():
    # 192 MB of temporaries = 49k pages. With the tuning the heap still grows over the first runs
    # in some address-space layouts (seen: ~10k faults per run for a few runs), then a run touches
    # no new page: the block is reused. Without it, every run maps and faults the block again.
    applied, fewest, _ = faults_per_run()
    assert applied
    assert fewest < 1_000, fewest
    applied_off, fewest_off, _ = faults_per_run(MMFM_HOST_MALLOC="0")
    assert not applied_off
    assert fewest_off > 20_000, fewest_off
