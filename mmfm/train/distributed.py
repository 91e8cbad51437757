"""Multi-process start-up: `jax.distributed.initialize` when a launcher asks for it.

Sources, first match wins per field: explicit arguments (the CLI flags below, defined in
`mmfm/cli.py`), then environment.

  flag                 environment            meaning
  --coordinator        MMFM_COORDINATOR       host:port of process 0 (explicit mode)
  --num_processes      MMFM_NUM_PROCESSES     number of processes (explicit mode)
  --process_id         MMFM_PROCESS_ID        this process, 0..num_processes-1 (explicit mode)
  --distributed=auto   MMFM_DISTRIBUTED=auto  JAX's cluster auto-detection (TPU VM, SLURM, Open MPI)
  --init_timeout       MMFM_INIT_TIMEOUT      seconds to wait for every process to join (300)
  --heartbeat_timeout  MMFM_HEARTBEAT_TIMEOUT seconds without heartbeats before a process is
                                              declared dead and the job aborts (60)

Peer failure. JAX's coordination service (process 0) expects heartbeats from every process; when
one stops (killed, preempted, hung machine) every survivor aborts with "Terminating process because
the JAX distributed service detected fatal errors ... another task died" after at most
`heartbeat_timeout` seconds. If instead a collective notices first (gloo: "Connection closed by
peer"), `exit_on_peer_failure` turns the exception into one clear log line and an immediate exit,
so the survivor does not wait on the dead peer in atexit hooks (distributed shutdown barrier,
async checkpoint threads).
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import sys
from typing import Optional

import jax

log = logging.getLogger("mmfm")

DEFAULT_INIT_TIMEOUT = 300
DEFAULT_HEARTBEAT_TIMEOUT = 60  # JAX's own default is 100 s; a dead peer should fail fast
PEER_FAILURE_EXIT_CODE = 75  # distinct from 1 (ordinary error) and 134 (JAX's abort)


@dataclasses.dataclass(frozen=True)
class DistributedSettings:
    mode: str  # 'none' | 'explicit' | 'auto'
    coordinator: Optional[str] = None
    num_processes: Optional[int] = None
    process_id: Optional[int] = None
    init_timeout: int = DEFAULT_INIT_TIMEOUT
    heartbeat_timeout: int = DEFAULT_HEARTBEAT_TIMEOUT


def _int(value, name: str, env: str, low: int) -> Optional[int]:
    if value is None:
        raw = os.environ.get(env)
        if raw in (None, ""):
            return None
        try:
            value = int(raw)
        except ValueError:
            raise ValueError(f"{env}={raw!r} (--{name}) is not an integer") from None
    if value < low:
        raise ValueError(f"--{name} / {env} must be >= {low}, got {value}")
    return int(value)


def resolve_settings(*, coordinator: Optional[str] = None, num_processes: Optional[int] = None,
                     process_id: Optional[int] = None, distributed: Optional[str] = None,
                     init_timeout: Optional[int] = None,
                     heartbeat_timeout: Optional[int] = None) -> DistributedSettings:
    """Merges arguments with the environment and validates them (clear errors, no JAX calls)."""
    coordinator = coordinator or os.environ.get("MMFM_COORDINATOR") or None
    mode = (distributed or os.environ.get("MMFM_DISTRIBUTED") or "").lower() or None
    if mode not in (None, "auto", "none"):
        raise ValueError(f"--distributed / MMFM_DISTRIBUTED: {mode!r} is not one of 'auto', 'none'")
    n = _int(num_processes, "num_processes", "MMFM_NUM_PROCESSES", 1)
    pid = _int(process_id, "process_id", "MMFM_PROCESS_ID", 0)
    common = dict(
        init_timeout=_int(init_timeout, "init_timeout", "MMFM_INIT_TIMEOUT", 1) or DEFAULT_INIT_TIMEOUT,
        heartbeat_timeout=_int(heartbeat_timeout, "heartbeat_timeout", "MMFM_HEARTBEAT_TIMEOUT", 1)
        or DEFAULT_HEARTBEAT_TIMEOUT)
    if coordinator and mode != "none":
        missing = [k for k, v in (("num_processes / MMFM_NUM_PROCESSES", n),
                                  ("process_id / MMFM_PROCESS_ID", pid)) if v is None]
        if missing:
            raise ValueError(f"--coordinator {coordinator} also needs {' and '.join(missing)}")
        if ":" not in coordinator:
            raise ValueError(f"--coordinator / MMFM_COORDINATOR must be host:port, got {coordinator!r}")
        if pid >= n:
            raise ValueError(f"--process_id {pid} must be < --num_processes {n}")
        return DistributedSettings("explicit", coordinator, n, pid, **common)
    if mode == "auto":
        return DistributedSettings("auto", None, n, pid, **common)
    return DistributedSettings("none", **common)


def maybe_initialize_distributed(**overrides) -> bool:
    """Initialise multi-process JAX from flags / environment, if asked; returns whether it is on.

    `overrides` are `resolve_settings` keyword arguments (the CLI passes its flags); the
    environment fills what they leave unset. Must run before any other JAX call creates the backend.
    """
    s = resolve_settings(**overrides)
    if s.mode == "none":
        return False
    kwargs = dict(initialization_timeout=s.init_timeout, heartbeat_timeout_seconds=s.heartbeat_timeout)
    if s.mode == "explicit":
        kwargs.update(coordinator_address=s.coordinator, num_processes=s.num_processes,
                      process_id=s.process_id)
    else:  # auto-detection; explicit counts (if given) override what the cluster reports
        kwargs.update({k: v for k, v in (("num_processes", s.num_processes),
                                         ("process_id", s.process_id)) if v is not None})
    log.info("distributed: initializing (%s)", ", ".join(f"{k}={v}" for k, v in kwargs.items()))
    jax.distributed.initialize(**kwargs)
    log.info("distributed: process %d of %d, %d local / %d global devices", jax.process_index(),
             jax.process_count(), jax.local_device_count(), jax.device_count())
    return True


def _looks_like_peer_failure(exc: BaseException) -> bool:
    text = f"{type(exc).__name__}: {exc}"
    return any(s in text for s in ("Connection closed by peer", "Connection reset by peer", "Gloo",
                                   "coordination service", "CoordinationService", "heartbeat",
                                   "UNAVAILABLE", "DEADLINE_EXCEEDED"))


@contextlib.contextmanager
def exit_on_peer_failure():
    """In a multi-process run, turns a failed collective into a clear error and an immediate exit.

    Without it a survivor may block for minutes in exit hooks that wait for the dead process.
    Single-process runs and ordinary exceptions are untouched (re-raised).
    """
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - re-raised unless it is a multi-process peer failure
        if jax.process_count() > 1 and _looks_like_peer_failure(exc):
            msg = (f"mmfm: process {jax.process_index()} of {jax.process_count()}: a cross-process "
                   f"operation failed, most likely because another process died or was preempted "
                   f"(see its log). Exiting with code {PEER_FAILURE_EXIT_CODE}. Cause: "
                   f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
            log.error(msg)
            print(msg, file=sys.stderr, flush=True)
            logging.shutdown()
            os._exit(PEER_FAILURE_EXIT_CODE)  # skip atexit: its barriers would wait for the dead peer
        raise
