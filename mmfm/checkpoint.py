"""Checkpoints: the only module that imports orbax.

Items per step: `state` (params, optimizer state, step, rng), `data` (the grain iterator state),
`meta` (mmfm version, mesh, model config). Saves are async; a step directory orbax has not
finalised is never restored. SIGTERM/SIGINT set `preempted`; the loop then saves the current step
and stops.
"""
from __future__ import annotations

import dataclasses
import logging
import signal
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp

log = logging.getLogger("mmfm")


def _ckpt_dir(workdir: str) -> str:
    import os
    return os.path.join(os.path.abspath(workdir), "checkpoints")


class Checkpointer:
    def __init__(self, workdir: str, config, trainer=None):
        self.every = int(config.checkpoint_every)
        self.manager = ocp.CheckpointManager(
            _ckpt_dir(workdir),
            options=ocp.CheckpointManagerOptions(max_to_keep=int(config.keep_checkpoints),
                                                 enable_async_checkpointing=True))
        self.meta = _metadata(config, trainer)
        self.preempted = False
        self._last_saved: Optional[int] = None
        self._install_signal_handlers()

    def _install_signal_handlers(self) -> None:
        def handler(signum, _frame):
            log.warning("received signal %d: checkpointing at the current step and stopping", signum)
            self.preempted = True
        try:
            signal.signal(signal.SIGTERM, handler)
            signal.signal(signal.SIGINT, handler)
        except ValueError:  # not the main thread (e.g. inside a notebook worker): no handlers
            pass

    def restore_latest(self, abstract_state) -> tuple[Optional[Any], Optional[dict]]:
        """(state, data_state) of the latest finalised step, or (None, None) for a fresh run."""
        step = self.manager.latest_step()
        if step is None:
            return None, None
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
        log.warning("resumed from step %d", step)
        self._last_saved = step
        return restored["state"], restored["data"]

    def save(self, step: int, state, data_iter) -> None:
        if self._last_saved == step:
            return
        self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_iter.get_state()),
            meta=ocp.args.JsonSave(self.meta)), force=True)
        self._last_saved = step

    def maybe_save(self, step: int, state, data_iter) -> None:
        if self.preempted or (self.every and step % self.every == 0):
            self.save(step, state, data_iter)
        if self.preempted:
            self.manager.wait_until_finished()
            log.warning("preempted: saved step %d to %s", step, self.manager.directory)

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self, state, data_iter) -> None:
        self.save(int(jax.device_get(state.step)), state, data_iter)
        self.manager.wait_until_finished()
        self.manager.close()


def _metadata(config, trainer) -> dict:
    from mmfm import __version__

    meta: dict = {"mmfm_version": __version__}
    if trainer is not None:
        meta["mesh"] = dict(trainer.mesh.shape)
        meta["model"] = dataclasses.asdict(trainer.model_cfg)
    return meta
