"""In-process checks of mmfm.checkpoint: cross-mesh restore, mismatch errors, resume_from,
integrity of step listing, metadata items, data-position transfer and signal handling."""
import os
import signal

import jax
import numpy as np
import pytest

from mmfm import checkpoint
from mmfm.train.loop import Trainer
from tests.checkpoint.conftest import flat_leaves


def make_config(data_dir, **overrides):
    from experiments.configs import demo

    config = demo.get_config("tiny")
    with config.unlocked():
        config.data.dir = data_dir
        config.checkpoint_every = 2
        for key, value in overrides.items():
            node = config
            *parents, leaf = key.split(".")
            for p in parents:
                node = node[p]
            node[leaf] = value
    return config


def _bits(tree):
    return {k: np.asarray(v).tobytes() for k, v in flat_leaves(jax.device_get(tree)).items()}


@pytest.fixture(scope="module")
def saved_run(ckpt_data_dir, tmp_path_factory):
    """Two steps on mesh (8,1,1), checkpointed at step 2: (workdir, trainer, state)."""
    w = str(tmp_path_factory.mktemp("saved"))
    tr = Trainer(make_config(ckpt_data_dir, **{"mesh.shape": (8, 1, 1)}), w)
    ck = checkpoint.Checkpointer(w, tr.config, tr)
    state, it = tr.init_state(), iter(tr.train_loader)
    for _ in range(2):
        state = tr.step(state, next(it))[0]
        ck.maybe_save(int(state.step), state, it)
    ck.close(state, it)
    return w, tr, state


def test_restore_onto_another_mesh_is_bit_exact(saved_run, ckpt_data_dir, tmp_path):
    w, _, state = saved_run
    tr = Trainer(make_config(ckpt_data_dir, **{"mesh.shape": (2, 2, 2)}), str(tmp_path))
    ck = checkpoint.Checkpointer(w, tr.config, tr)
    restored, data = ck.restore(tr.abstract_state())
    ck.release()
    assert int(restored.step) == 2 and data["next_batch"] == 2
    assert _bits(restored) == _bits(state)
    want = jax.tree.leaves(tr.state_sharding)
    got = [x.sharding for x in jax.tree.leaves(restored)]
    assert all(g == s for g, s in zip(got, want))
    assert dict(got[0].mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}


def test_mismatched_shapes_name_the_parameter(saved_run, ckpt_data_dir, tmp_path):
    w, _, _ = saved_run
    cfg = make_config(ckpt_data_dir, **{"model.embed_dim": 48})
    tr = Trainer(cfg, str(tmp_path))
    ck = checkpoint.Checkpointer(w, cfg, tr)
    with pytest.raises(checkpoint.CheckpointMismatchError,
                       match=r"shape mismatch at `params/img/head/bias`: checkpoint "
                             r"\(32,\), model \(48,\)"):
        ck.restore(tr.abstract_state())
    ck.release()
    assert os.path.isdir(os.path.join(w, "checkpoints", "2"))  # a mismatch is not "corrupted"


def test_resume_from_params_only_and_full(saved_run, tmp_path):
    w, tr, state = saved_run
    for mode in ("params", "full"):
        cfg = tr.config.copy_and_resolve_references()
        with cfg.unlocked():
            cfg.resume_from, cfg.resume_mode = os.path.join(w, "checkpoints", "2"), mode
        ck = checkpoint.Checkpointer(str(tmp_path / mode), cfg, tr)
        got, data = ck.restore(tr.abstract_state(), init_fn=tr.init_state)
        ck.release()
        assert _bits(got.params) == _bits(state.params)
        if mode == "params":
            fresh = tr.init_state()
            assert int(got.step) == 0 and data is None
            assert _bits(got.opt_state) == _bits(fresh.opt_state)
        else:
            assert int(got.step) == 2 and data["next_batch"] == 2
            assert _bits(got.opt_state) == _bits(state.opt_state)
    cfg = tr.config.copy_and_resolve_references()
    with cfg.unlocked():
        cfg.resume_from = str(tmp_path / "nowhere")
    ck = checkpoint.Checkpointer(str(tmp_path / "x"), cfg, tr)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        ck.restore(tr.abstract_state(), init_fn=tr.init_state)
    ck.release()


def test_items_and_metadata(saved_run):
    w, tr, _ = saved_run
    import orbax.checkpoint as ocp
    # Plain orbax, read-only: the items are ordinary JSON items any orbax reader can open.
    mgr = ocp.CheckpointManager(os.path.join(w, "checkpoints"),
                                options=ocp.CheckpointManagerOptions(read_only=True))
    out = mgr.restore(2, args=ocp.args.Composite(meta=ocp.args.JsonRestore(),
                                                 config=ocp.args.JsonRestore()))
    mgr.close()
    meta = out["meta"]
    assert meta["mmfm_version"] and meta["step"] == 2 and meta["process_count"] == 1
    assert meta["mesh"] == {"data": 8, "fsdp": 1, "tensor": 1}
    assert meta["packages"]["orbax-checkpoint"] and meta["packages"]["jax"] == jax.__version__
    assert meta["model"]["embed_dim"] == 32 and len(meta["git_hash"] or "x" * 40) == 40
    assert out["config"]["checkpoint_every"] == 2 and out["config"]["model"]["embed_dim"] == 32


def test_unfinalised_step_is_never_listed(saved_run, tmp_path):
    import shutil
    w, tr, _ = saved_run
    w2 = str(tmp_path / "copy")
    shutil.copytree(w, w2)
    root = os.path.join(w2, "checkpoints")
    # What a kill mid-save leaves behind: orbax's temporary directory with a full-looking tree.
    shutil.copytree(os.path.join(root, "2"), os.path.join(root, "4.orbax-checkpoint-tmp-123"))
    ck = checkpoint.Checkpointer(w2, tr.config, tr)
    state, _ = ck.restore(tr.abstract_state())
    ck.release()
    assert int(state.step) == 2
    # The leftover was cleaned up; `assets` holds the run's recorded tokenizer.
    assert sorted(os.listdir(root)) == ["2", checkpoint.ASSETS_DIR]


def test_data_position_carries_over_a_process_count_change(saved_run):
    _, tr, _ = saved_run
    it = iter(tr.train_loader)
    saved = dict(it.get_state(), next_batch=7)
    saved["loader"] = dict(saved["loader"], shard_count=2, shard_index=1,
                           batch_size=saved["loader"]["batch_size"] // 2)
    checkpoint.set_data_state(it, saved)
    assert it.get_state()["next_batch"] == 7
    with pytest.raises(ValueError, match="global batch"):
        checkpoint.set_data_state(it, dict(saved, loader=dict(saved["loader"], batch_size=3)))
    with pytest.raises(ValueError, match="seed"):
        checkpoint.set_data_state(it, dict(saved, loader=dict(saved["loader"], seed=99)))


def test_sigterm_sets_the_flag_and_handlers_are_restored():
    before = signal.getsignal(signal.SIGTERM)
    watcher = checkpoint.PreemptionWatcher()
    os.kill(os.getpid(), signal.SIGTERM)
    assert watcher.requested
    watcher.uninstall()
    assert signal.getsignal(signal.SIGTERM) is before
