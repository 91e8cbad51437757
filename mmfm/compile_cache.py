"""Guard: no persistent compilation cache for multi-device XLA:CPU programs.

With jax/jaxlib 0.10.2 on a 2-core machine, the demo train step on 8 virtual CPU devices (mesh
(2,2,2); (8,1,1) with the conv stem) runs when compiled fresh but, loaded from the persistent cache
(JAX_COMPILATION_CACHE_DIR / `jax_compilation_cache_dir`), aborts in its first steps: the devices
enter two collectives that no data dependence orders in different orders, each group waits for
the other, and XLA kills the process after its 40 s rendezvous timeout. So on CPU with more than
one device the cache is turned off for the process, with one warning; GPU/TPU and one-device CPU
runs keep it. Called by `sharding.make_mesh`, before anything is compiled for the mesh.

This removes the trigger we can reproduce, not XLA:CPU's ordering hazard itself: a toy jit that
replicates two unrelated row-sharded arrays (two independent all-gathers) on 4+ virtual devices
can hang on this machine even compiled fresh.
"""
from __future__ import annotations

import logging
from typing import Optional, Sequence

import jax
from jax.experimental.compilation_cache import compilation_cache

__all__ = ["guard_multi_device_cpu_cache"]

log = logging.getLogger("mmfm")


def guard_multi_device_cpu_cache(devices: Optional[Sequence[jax.Device]] = None) -> bool:
    """Turns the persistent compilation cache off if `devices` (default: all) are >1 CPU devices.

    Returns True when it turned the cache off; False when no cache is configured, it is already
    off, or the devices are not several CPU devices.
    """
    if not jax.config.jax_compilation_cache_dir or not jax.config.jax_enable_compilation_cache:
        return False
    devices = list(jax.devices() if devices is None else devices)
    if len(devices) < 2 or any(d.platform != "cpu" for d in devices):
        return False
    log.warning(
        "persistent compilation cache turned off for this process: with %d XLA:CPU devices, "
        "executables loaded from it can deadlock in their collectives (jax %s); unset "
        "JAX_COMPILATION_CACHE_DIR (now %s) to silence this, or run on one CPU device",
        len(devices), jax.__version__, jax.config.jax_compilation_cache_dir)
    jax.config.update("jax_enable_compilation_cache", False)
    # JAX decides once per process whether to use the cache; forget that decision.
    compilation_cache.reset_cache()
    return True
