"""Checkpoints and fault tolerance: the only module that imports orbax.

A step directory `<workdir>/checkpoints/<step>/` holds four items:
  state   TrainState (params, optimizer state, step, rng), sharded arrays (orbax Standard/OCDBT)
  data    the grain iterator state (JSON, written by process 0; see `set_data_state`)
  config  the experiment config (JSON)
  meta    mmfm version, git hash, package versions, mesh, process count, model config (JSON)

Saves are asynchronous (the loop blocks only while arrays are copied off the devices). Orbax
writes into a temporary directory and renames it when every item is complete, so a step killed
mid-save is never listed; leftovers are deleted when the next run starts. On restore, targets
are `jax.ShapeDtypeStruct`s carrying the *current* shardings, so a checkpoint written on one mesh
or process count restores onto another. An unreadable latest step is moved to
`<workdir>/checkpoints_corrupt/` with a warning and the previous one is used; a checkpoint whose
shapes do not fit the model raises `CheckpointMismatchError` naming the first differing path.

What a run needs to be used without its training data is recorded with it: the tokenizer file
(copied by content to `<workdir>/checkpoints/assets/`), the zero-shot class names and templates
and the preprocessing (in `meta`). `load_run(path)` is the one read-only way to load a run.

Preemption: SIGTERM/SIGINT set a flag; the loop saves the step it just finished, waits for the
write and stops. After SIGTERM (a scheduler's preemption) training returns normally (exit code 0);
after SIGINT (Ctrl-C) it raises `Interrupted`, a KeyboardInterrupt, so the CLI exits with 130 and
scripts can tell that the run stopped early. In multi-process runs JAX's preemption service
(which owns SIGTERM there) picks one sync step for all hosts
(`multihost_utils.reached_preemption_sync_point`).

A failed save (disk full, permission denied, quota) raises `CheckpointSaveError`, whose message
is one line naming the step, its path, the cause and the last good checkpoint; the half-written
step stays in orbax's temporary directory, which the next run ignores and deletes.

Test hook (documented, inert unless set): MMFM_TEST_KILL_AT_STEP=N sends SIGKILL to this process
right after step N has been logged and its checkpoint save (if any) was issued, i.e. while that
save is still in flight.
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import json
import logging
import os
import signal
import subprocess
from typing import Any, Callable, Mapping, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import traverse_util

from mmfm import fileio
from mmfm.train.resume_config import ResumeConfigError, check_resume
from mmfm.train.save_failure import CheckpointSaveError, QuietSaveFailure, failure_cause

log = logging.getLogger("mmfm")

RESUME_MODES = ("full", "params")
_PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "grain", "numpy",
             "tensorflow-datasets", "ml-collections")
_JSON_ITEMS = ("data", "config", "meta")


class CheckpointMismatchError(ValueError):
    """The checkpoint's tree or shapes do not fit the model being trained."""


# ----------------------------------------------------------------------------- paths and metadata

def checkpoint_root(workdir: str) -> str:
    return fileio.join(fileio.absolute(workdir), "checkpoints")


def is_run_dir(path: str) -> bool:
    """Whether `path` is a training run: its workdir, its checkpoints/ directory or one step
    directory inside that (what `resolve` and `load_run` accept)."""
    path = fileio.absolute(path)
    base = fileio.basename(path)
    return fileio.isdir(path) and (
        fileio.isdir(fileio.join(path, "checkpoints")) or base == "checkpoints"
        or (base.isdigit() and fileio.basename(fileio.dirname(path)) == "checkpoints"))


def resolve(path: str) -> tuple[str, Optional[int]]:
    """`path` -> (checkpoints root, step or None for the latest).

    Accepts a run's workdir, its `checkpoints/` directory, or one step directory inside it.
    """
    path = fileio.absolute(path)
    base = fileio.basename(path)
    if base.isdigit() and fileio.isdir(path):
        return fileio.dirname(path), int(base)
    if fileio.isdir(fileio.join(path, "checkpoints")):
        return fileio.join(path, "checkpoints"), None
    if fileio.isdir(path):
        return path, None
    raise FileNotFoundError(f"checkpoint path {path} does not exist (expected a workdir, its "
                            f"checkpoints/ directory or a step directory)")


def _registry() -> ocp.handlers.DefaultCheckpointHandlerRegistry:
    reg = ocp.handlers.DefaultCheckpointHandlerRegistry()
    reg.add("state", ocp.args.StandardSave)
    reg.add("state", ocp.args.StandardRestore)
    reg.add("state", ocp.args.PyTreeRestore)  # partial (params-only) and target-free restores
    for item in _JSON_ITEMS:
        reg.add(item, ocp.args.JsonSave)
        reg.add(item, ocp.args.JsonRestore)
    return reg


def _git_hash() -> Optional[str]:
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        out = subprocess.run(["git", "-C", here, "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def run_metadata(trainer=None) -> dict:
    """What produced a checkpoint: versions, git hash, mesh, process count, model config."""
    from mmfm.version import __version__

    versions = {}
    for pkg in _PACKAGES:
        try:
            versions[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            pass
    meta: dict = {"mmfm_version": __version__, "git_hash": _git_hash(), "packages": versions,
                  "process_count": jax.process_count(), "device_count": jax.device_count()}
    if trainer is not None:
        from mmfm.models.config import model_config_to_dict
        meta["mesh"] = {k: int(v) for k, v in trainer.mesh.shape.items()}
        meta["model"] = model_config_to_dict(trainer.model_cfg)
        cfg, info = trainer.config, trainer.data_info
        meta["zeroshot"] = {k: [list(n), list(t)] for k, (n, t) in dict(info.zeroshot).items()}
        meta["preprocess"] = {"image_size": int(cfg.data.image_size),
                              "mean": list(cfg.preprocess.mean), "std": list(cfg.preprocess.std),
                              "interpolation": "bilinear", "resize_mode": "shortest"}
        meta["tokenizer"] = {"source": fileio.absolute(info.tokenizer_path),
                             "lowercase": bool(cfg.data.get("lowercase", False))}
    return meta


ASSETS_DIR = "assets"


def record_tokenizer(root: str, meta: dict) -> None:
    """Copies the run's tokenizer file into `<root>/assets/` (by content) and notes it in `meta`.

    Process 0 writes, through a temporary name, so a reader never sees a partial file.
    """
    tok = meta.get("tokenizer")
    if not tok or "source" not in tok:
        return
    data = fileio.read_bytes(tok["source"])
    digest = hashlib.sha256(data).hexdigest()
    rel = f"{ASSETS_DIR}/{digest[:16]}-{fileio.basename(tok['source'])}"
    dest = fileio.join(root, rel)
    if jax.process_index() == 0 and not fileio.isfile(dest):
        fileio.write_atomic(dest, data)
    tok.update(file=rel, sha256=digest)


# ----------------------------------------------------------------------------- tree checks

def _key_str(k) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def _flat(tree) -> dict[str, Any]:
    """{'params/img/cls': leaf, ...}: orbax's saved dicts and our dataclasses/namedtuples agree."""
    leaves = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: x is None)[0]
    return {"/".join(_key_str(k) for k in path): leaf for path, leaf in leaves if leaf is not None}


def check_compatible(saved_tree, target_tree, *, where: str) -> None:
    """Raises CheckpointMismatchError at the first path whose shape differs (params first)."""
    saved, target = _flat(saved_tree), _flat(target_tree)
    order = sorted(target, key=lambda p: (not p.startswith("params/"), p))
    for path in order:  # sorted: params first, then alphabetical paths
        if path not in saved:
            raise CheckpointMismatchError(f"{where}: `{path}` (shape {tuple(target[path].shape)}) "
                                          f"is missing from the checkpoint")
        s, t = tuple(saved[path].shape), tuple(target[path].shape)
        if s != t:
            raise CheckpointMismatchError(f"{where}: shape mismatch at `{path}`: checkpoint {s}, "
                                          f"model {t}")
    extra = sorted(set(saved) - set(target))
    if extra:
        raise CheckpointMismatchError(f"{where}: the checkpoint has entries the model lacks, "
                                      f"first `{extra[0]}` ({len(extra)} in all)")


def set_data_state(it, saved: Optional[Mapping]) -> None:
    """Restores the iterator position; tolerates a changed process count.

    Batches are a pure function of their index, and every process has consumed the same number
    of batches (one per step), so the position carries over even when sharding changed; only
    the seed, the global batch and the dataset must match.
    """
    if not saved:
        return
    current = it.get_state()
    old, new = dict(saved.get("loader", {})), dict(current.get("loader", {}))
    per_host = ("shard_index", "shard_count", "batch_size")
    if {k: v for k, v in old.items() if k not in per_host} != \
            {k: v for k, v in new.items() if k not in per_host}:
        it.set_state(saved)  # raises naming the differing loader settings
        return
    if old.get("batch_size", 0) * old.get("shard_count", 1) != \
            new.get("batch_size", 0) * new.get("shard_count", 1):
        raise ValueError(f"checkpoint was written with a global batch of "
                         f"{old.get('batch_size')}x{old.get('shard_count')} examples, this run "
                         f"uses {new.get('batch_size')}x{new.get('shard_count')}")
    if old.get("shard_count") != new.get("shard_count"):
        log.warning("data: checkpoint has %s shards, this run %s; continuing at batch %d of the "
                    "new sharding", old.get("shard_count"), new.get("shard_count"),
                    saved["next_batch"])
    it.set_state(dict(current, next_batch=int(saved["next_batch"])))


# ----------------------------------------------------------------------------- preemption

class Interrupted(KeyboardInterrupt):
    """Training stopped by SIGINT (Ctrl-C) after saving `step`: rerun the same command to resume."""

    def __init__(self, step: int, path: str):
        self.step, self.path = step, path
        super().__init__(f"interrupted (SIGINT): saved step {step} to {path}; rerun the same "
                         f"command to resume")


class PreemptionWatcher:
    """SIGTERM/SIGINT -> `requested` (and `signum`); restores the previous handlers on `uninstall`."""

    def __init__(self):
        self.requested, self._old = False, {}
        self.signum: Optional[int] = None
        sigs = [signal.SIGINT]
        if not _jax_preemption_service():  # otherwise JAX's notifier owns SIGTERM
            sigs.append(signal.SIGTERM)
        for sig in sigs:
            try:
                self._old[sig] = signal.signal(sig, self._handler)
            except ValueError:  # not the main thread (notebook workers): no handlers
                pass

    def _handler(self, signum, _frame):
        if self.requested and signum == signal.SIGINT:  # a second Ctrl-C: stop at once
            raise KeyboardInterrupt
        log.warning("received %s: saving the current step, then stopping",
                    signal.Signals(signum).name)
        self.requested, self.signum = True, signum

    def uninstall(self) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old = {}


def _jax_preemption_service() -> bool:
    try:
        from jax._src import distributed  # no public accessor in this JAX
        return getattr(distributed.global_state, "preemption_sync_manager", None) is not None
    except ImportError:
        return False


def _maybe_test_kill(step: int) -> None:
    if os.environ.get("MMFM_TEST_KILL_AT_STEP") == str(step):
        os.kill(os.getpid(), signal.SIGKILL)


# ----------------------------------------------------------------------------- the checkpointer

def _manager(root: str, *, keep: Optional[int] = None, read_only: bool = False):
    absl_log = logging.getLogger("absl")
    level = absl_log.level
    if read_only:  # Orbax warns that a read-only manager is read-only: what was asked for
        absl_log.setLevel(logging.ERROR)
    try:
        opts = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=True,
                                            cleanup_tmp_directories=not read_only,
                                            read_only=read_only, create=not read_only)
        return ocp.CheckpointManager(root, options=opts, handler_registry=_registry())
    finally:
        absl_log.setLevel(level)


def _saved_state_tree(manager, step: int):
    md = manager.item_metadata(step)
    tree = md["state"] if md is not None and "state" in md else None
    if tree is None:
        raise OSError(f"step {step} has no readable `state` metadata")
    return getattr(tree, "tree", tree)


def _restore_full(manager, step: int, abstract_state, where: str):
    """(state, data_state) of `step`, restored onto the shardings in `abstract_state`."""
    check_compatible(_saved_state_tree(manager, step), abstract_state, where=where)
    out = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore(),
        meta=ocp.args.JsonRestore()))
    saved_mesh = (out["meta"] or {}).get("mesh")
    if saved_mesh:
        log.info("%s: written on mesh %s by %s process(es)", where, saved_mesh,
                 out["meta"].get("process_count"))
    return out["state"], out["data"]


class ResumeRefusedError(CheckpointMismatchError, ResumeConfigError):
    """A refused config change (model/objective) whose checkpoint does not fit the model either."""


def _check_resume_config(manager, step: int, config_json: dict, abstract_state,
                         workdir: str) -> dict:
    """Config changes since `step` was saved (logged); a refused change raises, with the first
    shape mismatch appended when there is one."""
    try:
        return check_resume(_restore_json(manager, step)[0], config_json, step=step,
                            workdir=workdir)
    except ResumeConfigError as refused:
        try:
            check_compatible(_saved_state_tree(manager, step), abstract_state,
                             where=f"checkpoint {manager.directory}/{step}")
        except CheckpointMismatchError as shapes:
            raise ResumeRefusedError(f"{refused} ({shapes})") from None
        raise


def _flat_get(tree, key: str):
    if isinstance(tree, Mapping) and key in tree:
        return tree[key]
    raise CheckpointMismatchError(f"checkpoint state has no `{key}` entry")


class Checkpointer:
    """One run's checkpoints: auto-resume, async periodic saves, preemption, integrity.

    Config keys read: checkpoint_every (0: only at the end and on preemption), keep_checkpoints,
    resume_from ("" or a workdir / checkpoints dir / step dir of another run), resume_mode
    ("full": params, optimizer, step, rng and data position; "params": params only),
    resume_dont_load (with "params": regexes of parameter paths that keep their fresh
    initialisation, e.g. `("^classifier/",)` for a new head, like big_vision's `dont_load`;
    checkpoint entries the model lacks are then skipped, and listed in the log).
    """

    def __init__(self, workdir: str, config, trainer=None):
        self.every = int(config.checkpoint_every)
        keep = int(config.keep_checkpoints)
        if self.every < 0 or keep < 1:
            raise ValueError(f"checkpoint_every must be >= 0 and keep_checkpoints >= 1, got "
                             f"{self.every} and {keep}")
        self.resume_from = str(config.get("resume_from", "") or "")
        self.resume_mode = str(config.get("resume_mode", "full"))
        if self.resume_mode not in RESUME_MODES:
            raise ValueError(f"resume_mode must be one of {RESUME_MODES}, got {self.resume_mode!r}")
        self.dont_load = tuple(config.get("resume_dont_load", ()) or ())
        if self.dont_load and self.resume_mode != "params":
            raise ValueError(f"resume_dont_load={list(self.dont_load)} needs resume_mode='params' "
                             f"(got {self.resume_mode!r})")
        self.root = checkpoint_root(workdir)
        self.manager = _manager(self.root, keep=keep)
        self.meta = run_metadata(trainer)
        record_tokenizer(self.root, self.meta)
        self.config_json = json.loads(config.to_json_best_effort()) \
            if hasattr(config, "to_json_best_effort") else dict(config)
        self.preempted = False
        self.stopped_at: Optional[int] = None  # the step saved on preemption
        self.resumed_step: Optional[int] = None  # set by restore_latest
        self.config_changes: dict = {}  # {key: (old, new)} against the resumed step's config
        self._last_saved: Optional[int] = None
        self._in_flight: Optional[int] = None  # the step of the async save not yet waited for
        self.failed: Optional[CheckpointSaveError] = None
        self._quiet: Optional[QuietSaveFailure] = None  # installed by the first save
        self._watcher = PreemptionWatcher()

    # -- restore
    def restore(self, abstract_state, init_fn: Optional[Callable[[], Any]] = None):
        """(state, data_state): this workdir's latest step, else `resume_from`, else (None, None)."""
        state, data = self.restore_latest(abstract_state)
        if state is None and self.resume_from:
            state, data = self.restore_from(self.resume_from, abstract_state,
                                            mode=self.resume_mode, init_fn=init_fn)
        return state, data

    def restore_latest(self, abstract_state) -> tuple[Optional[Any], Optional[dict]]:
        """The newest readable finalised step; unreadable ones are quarantined with a warning.

        Its saved config is compared with this run's first (`resume_config.check_resume`).
        """
        for step in sorted(self.manager.all_steps(), reverse=True):
            try:
                changes = _check_resume_config(self.manager, step, self.config_json,
                                               abstract_state, fileio.dirname(self.root))
                state, data = _restore_full(self.manager, step, abstract_state,
                                            where=f"checkpoint {self.root}/{step}")
            except (CheckpointMismatchError, ResumeConfigError):
                raise
            except Exception as e:  # noqa: BLE001 - any read failure means "corrupted"
                log.warning("checkpoint step %d in %s is unreadable (%s: %s); falling back to the "
                            "previous checkpoint", step, self.root, type(e).__name__,
                            str(e).splitlines()[0][:300] if str(e) else "")
                self._quarantine(step)
                continue
            log.warning("resumed from step %d (%s/%d)", step, self.root, step)
            self._last_saved, self.resumed_step, self.config_changes = step, step, changes
            return state, data
        return None, None

    def restore_from(self, path: str, abstract_state, *, mode: str = "full",
                     init_fn: Optional[Callable[[], Any]] = None):
        """Starts from another run's checkpoint; mode "params" needs `init_fn` for the rest."""
        root, step = resolve(path)
        src = _manager(root, read_only=True)
        try:
            steps = src.all_steps()
            step = max(steps) if step is None and steps else step
            if step is None or step not in steps:
                raise FileNotFoundError(f"resume_from={path}: no finalised checkpoint there "
                                        f"(steps found in {root}: {sorted(steps)})")
            where = f"resume_from {root}/{step}"
            if mode == "full":
                state, data = _restore_full(src, step, abstract_state, where=where)
            else:
                if init_fn is None:
                    raise ValueError("resume_mode='params' needs init_fn for the fresh state")
                fresh = init_fn()
                if self.dont_load:
                    params = _restore_some_params(src, step, abstract_state.params, fresh.params,
                                                  self.dont_load, where=where)
                else:
                    params = _restore_params(src, step, abstract_state.params, where=where)
                state, data = fresh.replace(params=params), None
        finally:
            src.close()
        log.warning("started from %s (%s), step %d", where, mode, int(state.step))
        return state, data

    def _quarantine(self, step: int) -> None:
        if jax.process_index() == 0:
            dest = fileio.join(fileio.dirname(self.root), "checkpoints_corrupt", str(step))
            if fileio.exists(dest):
                fileio.rmtree(dest)
            fileio.makedirs(fileio.dirname(dest))
            fileio.move(fileio.join(self.root, str(step)), dest)
            log.warning("moved unreadable step %d to %s", step, dest)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils
            multihost_utils.sync_global_devices(f"mmfm_quarantine_{step}")
        self.manager.reload()

    # -- save
    def _check_preemption(self, step: int) -> bool:
        if self._watcher.requested:
            return True
        # Multi-process: every host must stop at the same step; JAX's service agrees on one.
        return jax.process_count() > 1 and self.manager.reached_preemption(step)

    def save(self, step: int, state, data_iter) -> None:
        """Issues an async save of `step` (blocks only for the device->host copy).

        Raises CheckpointSaveError if this save, or the previous one still in flight, failed.
        """
        if self._last_saved == step:
            return
        self._finish_in_flight()  # orbax would wait too, but could not say which step failed
        if self._quiet is None:
            self._quiet = QuietSaveFailure()
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_iter.get_state()),
            config=ocp.args.JsonSave(self.config_json),
            meta=ocp.args.JsonSave(dict(self.meta, step=int(step))))
        try:
            self.manager.save(step, args=args, force=True)
        except Exception as e:  # noqa: BLE001 - any failure to write is reported the same way
            raise self._save_failed(step, e) from e
        self._last_saved, self._in_flight = step, step

    def _finish_in_flight(self) -> None:
        if self.failed is not None:
            raise self.failed
        try:
            self.manager.wait_until_finished()
        except Exception as e:  # noqa: BLE001
            raise self._save_failed(self._in_flight, e) from e
        self._in_flight = None

    def _save_failed(self, step: Optional[int], exc: BaseException) -> CheckpointSaveError:
        step = self._last_saved if step is None else step
        good = [s for s in self.manager.all_steps() if s != step]
        last_good = f"step {max(good)} ({self.root}/{max(good)})" if good else None
        self.failed = CheckpointSaveError(step, fileio.join(self.root, str(step)),
                                          failure_cause(exc), last_good)
        log.debug("checkpoint save of step %s failed", step, exc_info=exc)
        return self.failed

    def maybe_save(self, step: int, state, data_iter,
                   before_save: Optional[Callable[[], None]] = None, *, final: bool = False) -> None:
        """Every `checkpoint_every` steps, at the `final` step, and on preemption (then waits and
        sets `preempted`).

        `before_save` runs first (the loop flushes its logs, so they are durable up to `step`).
        """
        self.preempted = self._check_preemption(step)
        if self.preempted or final or (self.every and step % self.every == 0):
            if before_save is not None and self._last_saved != step:
                before_save()
            self.save(step, state, data_iter)
        if self.preempted:
            self._finish_in_flight()
            log.warning("preempted: saved step %d to %s/%d", step, self.root, step)
            self.stopped_at = step
        _maybe_test_kill(step)

    def wait(self) -> None:
        """Waits for the save in flight; after a failed save, returns at once (already raised)."""
        if self.failed is None:
            self._finish_in_flight()

    def close(self, state, data_iter) -> None:
        """Saves the final step (if not saved yet), waits for all writes and closes."""
        self.save(int(jax.device_get(state.step)), state, data_iter)
        self._finish_in_flight()
        self.manager.close()
        self.release()

    def raise_if_interrupted(self) -> None:
        """Raises `Interrupted` if a SIGINT stopped the run (its step is saved by then)."""
        if self.stopped_at is not None and self._watcher.signum == signal.SIGINT:
            raise Interrupted(self.stopped_at, fileio.join(self.root, str(self.stopped_at)))

    def release(self) -> None:
        """Restores the signal handlers (and log filters) that were there before this checkpointer.

        After a failed save the filters stay: the aborted save's writes may still complete late.
        """
        self._watcher.uninstall()
        if self._quiet is not None and self.failed is None:
            self._quiet.remove()
            self._quiet = None


def load_state(path: str, step: Optional[int] = None) -> tuple[int, dict]:
    """(step, state as saved: nested dicts of numpy arrays). For tools and tests; no model needed.

    `path`: a workdir, its checkpoints/ directory or a step directory; step None = the latest.
    """
    root, path_step = resolve(path)
    src = _manager(root, read_only=True)
    try:
        step = step if step is not None else path_step if path_step is not None else src.latest_step()
        if step is None:
            raise FileNotFoundError(f"no finalised checkpoint in {root}")
        tree = _saved_state_tree(src, step)
        restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
        out = src.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
            restore_args=restore_args)))
        return step, out["state"]
    finally:
        src.close()


# ----------------------------------------------------------------------------- reading a run

@dataclasses.dataclass(frozen=True)
class Run:
    """A trained run as its checkpoint recorded it (see `load_run`)."""
    workdir: str
    root: str  # the checkpoints/ directory
    step: int
    config: dict  # the experiment config saved with this step (JSON)
    meta: dict  # versions, mesh, model config, tokenizer, zero-shot names, preprocessing
    params: Any  # nested dicts of arrays, or None when loaded with params=False

    @property
    def model_config(self) -> dict:
        return self.meta["model"]

    @property
    def tokenizer_file(self) -> str:
        """Absolute path of the tokenizer copy inside the run (read it, never write it)."""
        return fileio.join(self.root, self.meta["tokenizer"]["file"])

    @property
    def tokenizer_lowercase(self) -> bool:
        return bool(self.meta["tokenizer"].get("lowercase", False))

    @property
    def zeroshot(self) -> dict:
        """{label key: (class names, templates)} of the training data."""
        return {k: (tuple(v[0]), tuple(v[1])) for k, v in self.meta.get("zeroshot", {}).items()}

    @property
    def preprocess(self) -> dict:
        return dict(self.meta["preprocess"])


def _restore_json(manager, step: int) -> tuple[dict, dict]:
    out = manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore(),
                                                        meta=ocp.args.JsonRestore()))
    return dict(out["config"] or {}), dict(out["meta"] or {})


def _restore_params(manager, step: int, target=None, where: Optional[str] = None):
    """Params of `step`: numpy arrays, or onto `target`'s shardings (ShapeDtypeStructs)."""
    saved = _flat_get(_saved_state_tree(manager, step), "params")
    if target is None:
        item = {"params": saved}
        restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), item)
    else:
        check_compatible({"params": saved}, {"params": target},
                         where=where or f"{manager.directory}/{step}")
        item = {"params": target}
        restore_args = ocp.checkpoint_utils.construct_restore_args(item)
    out = manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
        item=item, restore_args=restore_args, partial_restore=True)))
    return out["state"]["params"]


def _path_dict(tree) -> dict[str, Any]:
    """{'img/encoder/.../kernel': leaf} of a nested params dict (or orbax metadata tree)."""
    return {k[len("p/"):]: v for k, v in _flat({"p": tree}).items()}


def _nest(flat: Mapping[str, Any]) -> dict:
    return traverse_util.unflatten_dict(dict(flat), sep="/")


def _restore_some_params(manager, step: int, target, fresh, dont_load, where: str):
    """`fresh` params with every path not matching `dont_load` read from the checkpoint.

    `target` (ShapeDtypeStructs with shardings) gives the restored arrays' placement. Checkpoint
    entries the model lacks (a decoder a fine-tune drops) are skipped and logged.
    """
    import re
    patterns = [re.compile(p) for p in dont_load]
    want = _path_dict(target)
    skip = {k for k in want if any(p.search(k) for p in patterns)}
    if not skip:
        raise ValueError(f"resume_dont_load {list(dont_load)} matches no parameter of the model; "
                         f"paths look like {sorted(want)[:6]}")
    saved = _path_dict(_flat_get(_saved_state_tree(manager, step), "params"))
    load = {k: v for k, v in want.items() if k not in skip}
    check_compatible({"params": _nest({k: saved[k] for k in load if k in saved})},
                     {"params": _nest(load)}, where=where)
    unused = sorted(set(saved) - set(load))
    if unused:
        log.info("%s: %d checkpoint entries not loaded (resume_dont_load or not in the model), "
                 "first %s", where, len(unused), unused[:4])
    item = {"params": _nest(load)}
    out = manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
        item=item, restore_args=ocp.checkpoint_utils.construct_restore_args(item),
        partial_restore=True)))
    merged = dict(_path_dict(fresh), **_path_dict(out["state"]["params"]))
    return _nest(merged)


def load_run(path: str, *, step: Optional[int] = None, params: bool = True,
             target=None) -> Run:
    """Reads a trained run: its config, metadata and params. The one way to load a run.

    `path` is a workdir, its checkpoints/ directory or a step directory; `step` None = the
    newest finalised step (a step being written by a live run is not listed). Strictly
    read-only: opens no writable manager, installs no signal handler, moves or deletes nothing,
    and needs neither the training data nor the launch directory. `target`: a tree of
    `jax.ShapeDtypeStruct`s with shardings to restore the params onto (default: numpy).
    """
    root, path_step = resolve(path)
    src = _manager(root, read_only=True)
    try:
        steps = sorted(src.all_steps())
        want = step if step is not None else path_step
        if want is not None and want not in steps:
            raise FileNotFoundError(f"{path}: step {want} is not a finalised checkpoint in {root} "
                                    f"(steps: {steps})")
        if not steps:
            raise FileNotFoundError(f"{path}: no finalised checkpoint in {root}")
        chosen = want if want is not None else steps[-1]
        config, meta = _restore_json(src, chosen)
        if "tokenizer" not in meta or "file" not in meta.get("tokenizer", {}):
            raise FileNotFoundError(f"{root}/{chosen}: this checkpoint records no tokenizer (it was "
                                    "written before runs recorded one); resume the run with this "
                                    "mmfm for one more step (--config.total_steps=N+1) to record it")
        tree = _restore_params(src, chosen, target) if params else None
    finally:
        src.close()
    return Run(workdir=fileio.dirname(root), root=root, step=int(chosen), config=config,
               meta=meta, params=tree)
