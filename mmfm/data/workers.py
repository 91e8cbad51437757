"""Worker processes die with the process that started them, however it ends (SIGKILL included).

A SIGKILLed parent runs no cleanup, so its children must notice by themselves: without this guard
grain's workers are re-parented to init and keep running (measured: 2 workers of 236 MB each
still alive minutes after `kill -9`; the multiprocessing resource tracker lives on with them,
because they hold its pipe open, and exits once they are gone).

`guard_worker` is grain's `worker_init_fn` (run in each worker before it reads data):
  - exit at once if the parent is already gone (it died while the worker was starting);
  - Linux: the parent-death signal (prctl PR_SET_PDEATHSIG). The kernel sends it when the
    *thread* that started the child exits, and grain starts workers from its prefetch threads,
    so the handler exits only if `os.getppid()` changed (a thread's exit re-parents the child to
    another thread of the same process: same pid);
  - elsewhere: a daemon thread polls `os.getppid()`;
  - SIGINT is ignored: Ctrl-C reaches the whole foreground process group, and the parent stops
    its workers itself after saving (a worker killed by Ctrl-C would fail the parent's next read).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import signal
import sys
import threading
import time
from typing import Callable, Optional

PARENT_GONE_EXIT_CODE = 70
_PR_SET_PDEATHSIG = 1
_DEATH_SIGNAL = signal.SIGUSR2
_POLL_S = 0.5
_parent_pid: Optional[int] = None


def _parent_gone() -> bool:
    return _parent_pid is not None and os.getppid() != _parent_pid


def _exit_if_parent_gone(*_args) -> None:
    if _parent_gone():
        os._exit(PARENT_GONE_EXIT_CODE)  # nothing to flush: the consumer of our output is dead


def _set_parent_death_signal(sig: int) -> bool:
    """prctl(PR_SET_PDEATHSIG, sig); False where unavailable (not Linux, no libc)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _watch_parent() -> None:
    while True:
        time.sleep(_POLL_S)
        _exit_if_parent_gone()


def guard_worker(index: int = 0, count: int = 1, *, parent_pid: int) -> None:
    """Makes this (child) process exit when `parent_pid` is gone. `index, count`: grain's
    worker index and worker count (unused; grain passes them to every worker_init_fn)."""
    del index, count
    global _parent_pid
    _parent_pid = int(parent_pid)
    _exit_if_parent_gone()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if _set_parent_death_signal(_DEATH_SIGNAL):
        signal.signal(_DEATH_SIGNAL, _exit_if_parent_gone)
    else:
        threading.Thread(target=_watch_parent, name="mmfm-parent-watch", daemon=True).start()
    _exit_if_parent_gone()  # the parent may have died between the first check and the guard


def worker_init_fn() -> Callable[[int, int], None]:
    """A picklable grain `worker_init_fn` that guards workers of the calling process."""
    return functools.partial(guard_worker, parent_pid=os.getpid())
