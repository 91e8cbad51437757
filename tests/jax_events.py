"""Counting JAX traces and XLA compilations through jax.monitoring (public API, no private caches)."""
import collections
import contextlib

import jax

_TRACE = "/jax/core/compile/jaxpr_trace_duration"
_COMPILE = "/jax/core/compile/backend_compile_duration"


@contextlib.contextmanager
def count_compilations():
    """Yields {"trace": Counter, "compile": Counter} keyed by function name, filled inside the block.

    A function jitted once and called N times with the same shapes shows trace == compile == 1; a
    persistent-cache hit is a compile event too (JAX records it around the cache lookup).
    """
    counts = {"trace": collections.Counter(), "compile": collections.Counter()}

    def listener(event, duration_secs, **kw):
        kind = {_TRACE: "trace", _COMPILE: "compile"}.get(event)
        if kind:
            counts[kind][kw.get("fun_name", "?")] += 1

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield counts
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
