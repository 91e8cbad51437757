"""Multi-process start-up: `jax.distributed.initialize` when a launcher asks for it."""
from __future__ import annotations

import logging
import os

import jax

log = logging.getLogger("mmfm")


def maybe_initialize_distributed() -> bool:
    """Initialise multi-process JAX from the environment, if asked.

    MMFM_COORDINATOR=host:port, MMFM_NUM_PROCESSES, MMFM_PROCESS_ID: explicit (local tests, custom
    launchers). MMFM_DISTRIBUTED=auto: JAX's auto-detection (TPU VMs, SLURM, Open MPI).
    Otherwise a single process. Returns whether distributed mode is on.
    """
    coord = os.environ.get("MMFM_COORDINATOR")
    if coord:
        jax.distributed.initialize(
            coordinator_address=coord, num_processes=int(os.environ["MMFM_NUM_PROCESSES"]),
            process_id=int(os.environ["MMFM_PROCESS_ID"]),
            initialization_timeout=int(os.environ.get("MMFM_INIT_TIMEOUT", "300")))
    elif os.environ.get("MMFM_DISTRIBUTED", "").lower() == "auto":
        jax.distributed.initialize()
    else:
        return False
    log.info("distributed: process %d of %d, %d local / %d global devices", jax.process_index(),
             jax.process_count(), jax.local_device_count(), jax.device_count())
    return True
