"""The training driver: data -> mesh -> sharded state -> jitted step -> logs, evals, checkpoints.

One loop for every experiment: configs change the model, the objective weights and the data; nothing
here forks per experiment.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import time
from typing import Any, Optional

import flax.linen as nn
import jax
import numpy as np

from mmfm import sharding as sh
from mmfm.losses.objective import ObjectiveConfig, check_model_fits
from mmfm.models.config import ModelConfig, model_config_from_dict
from mmfm.models.multimodal import TwoTower, init_params
from mmfm.train import optim
from mmfm.train.metrics import MetricsWriter
from mmfm.train.state import TrainState, create_state, state_shardings
from mmfm.train.step import StepConfig, train_step

log = logging.getLogger("mmfm")


def model_config(config, tokenizer=None) -> ModelConfig:
    """Model config from `config.model`; vocabulary and special ids come from the tokenizer."""
    text = {}
    if tokenizer is not None:
        text = dict(vocab_size=tokenizer.vocab_size, eot_id=tokenizer.eot_id, pad_id=tokenizer.pad_id)
    text["context_length"] = config.data.context_length
    model = config.model.to_dict() if hasattr(config.model, "to_dict") else dict(config.model)
    model.setdefault("image", {})
    model["image"] = dict(model["image"], image_size=config.data.image_size)
    return model_config_from_dict(model, **text)


def objective_config(config) -> ObjectiveConfig:
    loss = config.loss.to_dict() if hasattr(config.loss, "to_dict") else dict(config.loss)
    valid = {f.name for f in dataclasses.fields(ObjectiveConfig)}
    unknown = sorted(set(loss) - valid)
    if unknown:
        raise ValueError(f"loss: unknown key(s) {unknown}; valid keys: {sorted(valid)}")
    return ObjectiveConfig(**loss).validate()


def check_batch(config, mesh) -> None:
    sh.check_batch_axes(mesh, config.batch_size)
    obj = objective_config(config)
    rows, shards = obj.masked_rows(config.batch_size), sh.num_batch_shards(mesh)
    if (obj.use_mae or obj.use_mlm) and rows % shards:
        raise ValueError(f"loss.masked_batch_frac={obj.masked_batch_frac} gives {rows} of "
                         f"{config.batch_size} rows to MAE/MLM, not divisible by the {shards} "
                         f"devices of the mesh's batch axes")


class Trainer:
    """Holds what a run builds once: data, model, mesh, shardings and the jitted step."""

    def __init__(self, config, workdir: str, *, mesh: Optional[jax.sharding.Mesh] = None):
        """`mesh` overrides `config.mesh.shape` (e.g. a one-device reference run in tests)."""
        from mmfm.data.pipeline import build_data  # data deps load only when training

        self.config, self.workdir = config, workdir
        self.mesh, self.rules = sh.mesh_from_config(config.mesh) if mesh is None else (
            mesh, sh.normalize_rules(config.mesh.rules))
        check_batch(config, self.mesh)
        self.obj = objective_config(config)
        # Validate the model against the objective before any data is prepared (fail fast).
        check_model_fits(self.obj, model_config(config))
        self.local_batch = config.batch_size // jax.process_count()
        self.data = build_data(config.data, batch_size=self.local_batch, seed=config.seed,
                               shard_index=jax.process_index(), shard_count=jax.process_count())
        self.train_loader, self.eval_arrays, self.tokenizer, self.data_info = self.data
        self.model_cfg = model_config(config, self.tokenizer)
        self.model = TwoTower(self.model_cfg)
        with self.mesh_context():
            abstract = jax.eval_shape(lambda r: nn.meta.unbox(init_params(self.model, r)),
                                      jax.random.PRNGKey(0))
        self.tx, self.lr_fn = optim.make_optimizer(config.optim, config.total_steps, abstract)
        self.state_sharding = state_shardings(self.model, self.tx, self.mesh, self.rules)
        self.batch_sharding = sh.batch_sharding(self.mesh)
        tok = self.tokenizer
        self.step_cfg = StepConfig(
            model=self.model, tx=self.tx, lr_fn=self.lr_fn, objective=self.obj,
            mean=tuple(config.preprocess.mean), std=tuple(config.preprocess.std), mask_id=tok.mask_id,
            special_ids=tuple(tok.special_ids), mesh=self.mesh)
        self.jit_step = jax.jit(functools.partial(train_step, sc=self.step_cfg),
                                in_shardings=(self.state_sharding, self.batch_sharding),
                                out_shardings=(self.state_sharding, None), donate_argnums=(0,))

    def mesh_context(self):
        return _MeshContext(self.mesh, self.rules)

    def init_state(self) -> TrainState:
        with self.mesh_context():
            init = jax.jit(functools.partial(create_state, model=self.model, tx=self.tx),
                           out_shardings=self.state_sharding)
            return init(jax.random.PRNGKey(self.config.seed))

    def abstract_state(self) -> TrainState:
        """ShapeDtypeStructs with target shardings: the restore target on any mesh."""
        shapes = jax.eval_shape(functools.partial(create_state, model=self.model, tx=self.tx),
                                jax.random.PRNGKey(0))
        return jax.tree.map(lambda s, shd: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=shd),
                            shapes, self.state_sharding)

    def global_batch(self, local: dict) -> dict:
        """Host-local numpy batch -> global arrays sharded over the mesh's batch axes."""
        return {k: jax.make_array_from_process_local_data(self.batch_sharding, np.asarray(local[k]))
                for k in ("image", "tokens")}

    def step(self, state: TrainState, local_batch: dict):
        with self.mesh_context():
            return self.jit_step(state, self.global_batch(local_batch))


class _MeshContext:
    """`jax.set_mesh` + flax logical axis rules, so logical constraints resolve to the mesh."""

    def __init__(self, mesh, rules):
        self.mesh, self.rules = mesh, rules

    def __enter__(self):
        self._m = jax.set_mesh(self.mesh)
        self._m.__enter__()
        self._r = nn.logical_axis_rules(self.rules)
        self._r.__enter__()

    def __exit__(self, *exc):
        self._r.__exit__(*exc)
        self._m.__exit__(*exc)


def train_and_evaluate(config, workdir: str, *, max_steps: Optional[int] = None) -> dict:
    """Run (or resume) training in `workdir`; returns the final eval results."""
    from mmfm import checkpoint
    from mmfm.evals.runner import eval_schedule, run_evals

    os.makedirs(workdir, exist_ok=True)
    evals_due = eval_schedule(config)
    tr = Trainer(config, workdir)
    is_main = jax.process_index() == 0
    ckpt = checkpoint.Checkpointer(workdir, config, tr)
    # This workdir's latest readable step, else config.resume_from, else a fresh state.
    state, data_state = ckpt.restore(tr.abstract_state(), init_fn=tr.init_state)
    it = iter(tr.train_loader)
    if state is None:
        state = tr.init_state()
    checkpoint.set_data_state(it, data_state)
    start = int(state.step)
    writer = MetricsWriter(workdir, enabled=is_main, total_steps=config.total_steps, resume_step=start)
    if is_main:
        _write_run_info(workdir, config, tr)
    last = max_steps if max_steps is not None else config.total_steps
    results: dict = {}
    t_log, step_log = time.perf_counter(), start
    try:
        for step in range(start, min(last, config.total_steps)):
            state, metrics = tr.step(state, next(it))
            done = step + 1
            if done % config.log_every == 0 or done == config.total_steps:
                metrics = jax.device_get(metrics)  # the only host sync, at log intervals
                now = time.perf_counter()
                metrics["samples_per_sec"] = config.batch_size * (done - step_log) / max(now - t_log, 1e-9)
                metrics.update(it.skip_counts())  # corrupt/skipped records, by reason
                t_log, step_log = now, done
                rec = writer.write(done, metrics)
                writer.progress(done, rec, config.batch_size)
            if evals_due(done):
                results = run_evals(tr, state, writer, done)
                t_log = time.perf_counter()  # eval time is not training throughput
            # Logs are flushed before each save so they are durable up to the saved step.
            ckpt.maybe_save(done, state, it, before_save=writer.flush)
            if ckpt.preempted:
                break
        ckpt.close(state, it)
    finally:
        it.close()  # joins grain's worker processes (and their shared memory) on every exit
        try:
            ckpt.wait()  # never leave an async save half-written behind an exception
        finally:  # a failed save raises CheckpointSaveError here: still restore the handlers
            ckpt.release()
        writer.close()
    return results


def _write_run_info(workdir: str, config, tr: Trainer) -> None:
    n_params = sum(int(np.prod(s.shape)) for s in jax.tree.leaves(tr.abstract_state().params))
    info = {"config": json.loads(config.to_json_best_effort()), "num_params": n_params,
            "mesh": dict(tr.mesh.shape), "devices": jax.device_count(), "processes": jax.process_count()}
    with open(os.path.join(workdir, "run_info.json"), "w") as f:
        json.dump(info, f, indent=1)
    log.info("model: %d params; mesh %s", n_params, dict(tr.mesh.shape))
