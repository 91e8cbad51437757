"""The training driver: data -> mesh -> sharded state -> jitted step -> logs, evals, checkpoints.

One loop for every experiment: configs change the model, the objective weights and the data; nothing
here forks per experiment.
"""
from __future__ import annotations

import functools
import json
import logging
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import numpy as np

from mmfm import fileio
from mmfm import sharding as sh
from mmfm.config_utils import check_batch, model_config, objective_config
from mmfm.losses.objective import check_model_fits
from mmfm.models.multimodal import TwoTower, init_params
from mmfm.train import optim
from mmfm.train.metrics import MetricsWriter, StepClock
from mmfm.train.state import TrainState, create_state, state_shardings
from mmfm.train.step import StepConfig, train_step
from mmfm.train.teacher import load_teacher, with_distill_projection

log = logging.getLogger("mmfm")


class Trainer:
    """Holds what a run builds once: data, model, mesh, shardings and the jitted step."""

    def __init__(self, config, workdir: str, *, mesh: Optional[jax.sharding.Mesh] = None,
                 resolve_teacher=None):
        """`mesh` overrides `config.mesh.shape` (e.g. a one-device reference run in tests).
        `resolve_teacher`: loads a distillation teacher that is an export or a zoo model
        (`mmfm.train.teacher`; training runs and "init" load without it)."""
        from mmfm.data.build import build_data  # data deps load only when training

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
        # The frozen distillation teacher (None without a loss.distill_* weight): on the mesh
        # with its own shardings, outside the train state (no gradient, no update, no checkpoint).
        self.teacher = load_teacher(config, tokenizer=self.tokenizer, mesh=self.mesh,
                                    rules=self.rules, zeroshot=self.data_info.zeroshot,
                                    resolve=resolve_teacher)
        # Feature distillation's projection (to the teacher's width) is a student parameter.
        teacher_dim = self.teacher.spec.model.cfg.embed_dim if self.teacher is not None else 0
        self.model_cfg = with_distill_projection(model_config(config, self.tokenizer), self.obj,
                                                 teacher_dim)
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
            special_ids=tuple(tok.special_ids), mesh=self.mesh,
            teacher=self.teacher.spec if self.teacher is not None else None)
        # The batch field holding the classification targets (fed to the step as `label`).
        self.label_key = (str(config.data.get("label") or "label")
                          if self.obj.use_classify else None)
        # The teacher's params are a third, non-donated argument: read every step, never written.
        in_shardings = (self.state_sharding, self.batch_sharding) + (
            () if self.teacher is None else (self.teacher.shardings,))
        self.jit_step = jax.jit(functools.partial(train_step, sc=self.step_cfg),
                                in_shardings=in_shardings,
                                out_shardings=(self.state_sharding, None), donate_argnums=(0,))

    def mesh_context(self):
        return sh.mesh_context(self.mesh, self.rules)

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
        fields = {"image": "image", "tokens": "tokens"}
        if self.label_key is not None:
            if self.label_key not in local:
                ints = sorted(k for k, v in local.items() if np.asarray(v).ndim == 1)
                raise ValueError(f"config.data.label={self.label_key!r}: the training batches "
                                 f"have no such field; integer fields: {ints}")
            fields["label"] = self.label_key
        return {k: jax.make_array_from_process_local_data(self.batch_sharding,
                                                          np.asarray(local[src]))
                for k, src in fields.items()}

    def step(self, state: TrainState, local_batch: dict):
        teacher = () if self.teacher is None else (self.teacher.params,)
        with self.mesh_context():
            return self.jit_step(state, self.global_batch(local_batch), *teacher)


_PATH_KEYS = (("data", "dir"), ("data", "tokenizer"), (None, "resume_from"))


def absolute_paths(config) -> None:
    """Paths in the config made absolute, so a run never depends on the launch directory."""
    for section, key in _PATH_KEYS:
        node = config if section is None else config.get(section)
        if node is not None and node.get(key):
            node[key] = fileio.absolute(str(node[key]))  # URLs stay URLs
    dist = config.get("distill")
    if dist is not None and dist.get("teacher") and fileio.exists(str(dist.teacher)):
        dist.teacher = fileio.absolute(str(dist.teacher))  # a path (a zoo name stays a name)


def train(config, workdir: str, *, max_steps: Optional[int] = None,
          make_evaluator: Optional[Callable[[Trainer], Any]] = None,
          resolve_teacher: Optional[Callable] = None) -> dict:
    """Runs (or resumes) training in `workdir`; returns the last evaluation's results.

    `make_evaluator(trainer)` is called once and returns an object with `due(step)` and
    `(state, writer, step) -> metrics` (`mmfm.evals.runner.TrainingEvaluator`); None: no evals.
    Every step is checkpointed (when due) before it is evaluated, so a failing eval never loses
    the training it measured. SIGTERM saves the current step and returns; SIGINT (Ctrl-C) saves it
    and raises `mmfm.checkpoint.Interrupted` (a KeyboardInterrupt). `resolve_teacher`: loads an
    export / zoo distillation teacher (see `Trainer`).
    """
    from mmfm import checkpoint

    absolute_paths(config)
    workdir = fileio.absolute(workdir)
    fileio.makedirs(workdir)
    tr = Trainer(config, workdir, resolve_teacher=resolve_teacher)
    evaluator = make_evaluator(tr) if make_evaluator is not None else None
    is_main = jax.process_index() == 0
    ckpt = checkpoint.Checkpointer(workdir, config, tr)
    # This workdir's latest readable step, else config.resume_from, else a fresh state.
    try:
        state, data_state = ckpt.restore(tr.abstract_state(), init_fn=tr.init_state)
    except BaseException:  # e.g. a refused config change: give the signal handlers back
        ckpt.release()
        raise
    it = iter(tr.train_loader)
    if state is None:
        state = tr.init_state()
    checkpoint.set_data_state(it, data_state)
    start = int(state.step)
    writer = MetricsWriter(workdir, enabled=is_main, total_steps=config.total_steps, resume_step=start)
    if is_main:
        _write_run_info(workdir, config, tr, ckpt)
    last = max_steps if max_steps is not None else config.total_steps
    results: dict = {}
    clock = StepClock(start)  # post-compile step times: the throughput and the ETA
    try:
        if start == 0 and evaluator is not None and evaluator.due(0):
            results = evaluator(state, writer, 0)  # baselines before training (`at_start`)
        for step in range(start, min(last, config.total_steps)):
            state, metrics = tr.step(state, next(it))
            done = step + 1
            if done == start + 1:  # the first step of a process compiles: time it apart
                jax.block_until_ready(metrics)
                clock.warm(done)
            if done % config.log_every == 0 or done == config.total_steps:
                metrics = jax.device_get(metrics)  # the only host sync, at log intervals
                rate = clock.interval_rate(done, config.batch_size)
                if rate is not None:
                    metrics["samples_per_sec"] = rate
                metrics.update(it.skip_counts())  # corrupt/skipped records, by reason
                rec = writer.write(done, metrics)
                writer.progress(done, rec, config.batch_size, eta_s=clock.eta(done, config.total_steps))
            # Logs are flushed before each save so they are durable up to the saved step.
            ckpt.maybe_save(done, state, it, before_save=writer.flush,
                            final=done == config.total_steps)
            if ckpt.preempted:
                break
            if evaluator is not None and evaluator.due(done):
                with clock.paused():  # eval time is not training throughput
                    results = evaluator(state, writer, done)
        ckpt.close(state, it)
    finally:
        it.close()  # joins grain's worker processes (and their shared memory) on every exit
        try:
            ckpt.wait()  # never leave an async save half-written behind an exception
        finally:  # a failed save raises CheckpointSaveError here: still restore the handlers
            ckpt.release()
        writer.close()
    ckpt.raise_if_interrupted()  # Ctrl-C: saved and stopped; the caller learns it stopped early
    return results


def _write_run_info(workdir: str, config, tr: Trainer, ckpt) -> None:
    """run_info.json: the current config, sizes, and each resume's config changes."""
    from mmfm.train.resume_config import record_resume

    n_params = sum(int(np.prod(s.shape)) for s in jax.tree.leaves(tr.abstract_state().params))
    info = {"config": json.loads(config.to_json_best_effort()), "num_params": n_params,
            "mesh": dict(tr.mesh.shape), "devices": jax.device_count(), "processes": jax.process_count()}
    record_resume(workdir, info, step=ckpt.resumed_step, changes=ckpt.config_changes)
    log.info("model: %d params; mesh %s", n_params, dict(tr.mesh.shape))
