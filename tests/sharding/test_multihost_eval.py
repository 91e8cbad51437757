"""Evaluation on the training mesh: 2 processes x 4 virtual devices on FSDP and FSDP+tensor meshes.

The real CLI trains 4 steps with an eval at step 2 (`eval_every`) and at the end, plus named
evaluators (zero-shot on captioned_shapes, MAE pictures), in each of two `jax.distributed`
processes. Checked: both exit 0, the last step is checkpointed, and every eval metric equals that of
one process with 8 devices on the same mesh and the same global batches, to 1e-5 relative.
"""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from mmfm.train.metrics import MetricsWriter
from mmfm.train.loop import Trainer
from test_multihost import PROC_TIMEOUT, _free_port, _read

pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STEPS = 4

CONFIG = textwrap.dedent('''
    from experiments.configs import demo

    def get_config(arg=None):
        c = demo.get_config("tiny")
        with c.unlocked():
            c.evals.evaluators = dict(
                zs=dict(type="zeroshot", dataset="captioned_shapes", label_key="shape",
                        every=2, topk=(1, 2)),
                recon=dict(type="mae_pictures", dataset="captioned_shapes", num_images=4))
        return c
''')


def _config_file(d) -> str:
    path = os.path.join(str(d), "eval_on_mesh.py")
    with open(path, "w") as f:
        f.write(CONFIG)
    return path


def _launch(pid, port, config_file, workdir, data_dir, mesh, log_path):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu",
               PYTHONUNBUFFERED="1")
    cmd = ["timeout", "-s", "KILL", str(PROC_TIMEOUT), sys.executable, "-m", "mmfm.train",
           "--config", config_file, "--workdir", workdir, f"--config.data.dir={data_dir}",
           f"--config.mesh.shape={mesh}", f"--config.total_steps={STEPS}", "--config.eval_every=2",
           "--config.checkpoint_every=0", f"--coordinator=127.0.0.1:{port}", "--num_processes=2",
           f"--process_id={pid}", "--init_timeout=60", "--heartbeat_timeout=30"]
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=open(log_path, "w"),
                            stderr=subprocess.STDOUT, start_new_session=True)


def _eval_records(workdir):
    recs = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
    return {r["step"]: {k: v for k, v in r.items() if k not in ("step", "kind", "time")}
            for r in recs if r["kind"] == "eval"}


def _one_process_reference(config_file, data_dir, mesh, workdir):
    """The same run in this process (8 devices): global batches = process 0's then process 1's rows."""
    from mmfm.config_utils import load_config
    from mmfm.data.build import build_data
    from mmfm.evals.runner import TrainingEvaluator

    sys.path.insert(0, REPO)
    config = load_config(config_file)
    with config.unlocked():
        config.data.dir, config.mesh.shape = data_dir, mesh
        config.total_steps, config.eval_every, config.checkpoint_every = STEPS, 2, 0
    tr = Trainer(config, workdir)
    evaluator = TrainingEvaluator(tr)
    shards = [iter(build_data(config.data, batch_size=config.batch_size // 2, seed=config.seed,
                              shard_index=i, shard_count=2)[0]) for i in range(2)]
    writer = MetricsWriter(workdir, enabled=True, total_steps=STEPS)
    state, out = tr.init_state(), {}
    try:
        for step in range(1, STEPS + 1):
            parts = [next(s) for s in shards]
            state, _ = tr.step(state, {k: np.concatenate([p[k] for p in parts])
                                       for k in ("image", "tokens")})
            if evaluator.due(step):
                out[step] = evaluator(state, writer, step)
    finally:
        writer.close()
    # Three evals of one run (the reference adds a third call) compile each encoder once.
    evaluator(state, writer, STEPS)
    return out, dict(evaluator.encoder.traces)


@pytest.mark.parametrize("mesh", [(1, 8, 1), (2, 2, 2)], ids=["fsdp-1x8x1", "fsdp-tensor-2x2x2"])
def test_two_process_evals_on_mesh_equal_one_process(mesh, shapes_dir, tmp_path):
    config_file = _config_file(tmp_path)
    workdir, port = str(tmp_path / "run"), _free_port()
    logs = [str(tmp_path / f"p{i}.log") for i in range(2)]
    mesh_flag = "(" + ",".join(str(m) for m in mesh) + ")"
    procs = [_launch(i, port, config_file, workdir, shapes_dir, mesh_flag, logs[i]) for i in range(2)]
    rcs = [p.wait(timeout=PROC_TIMEOUT + 30) for p in procs]
    for i, rc in enumerate(rcs):
        assert rc == 0, f"process {i} exited with {rc}:\n{_read(logs[i])[-4000:]}"
    assert str(STEPS) in os.listdir(os.path.join(workdir, "checkpoints"))
    got = _eval_records(workdir)
    assert sorted(got) == [2, STEPS]
    assert "zs/top2" in got[STEPS] and "recon/masked_mse" in got[STEPS]
    assert "zs/top1" in got[2] and "recon/masked_mse" not in got[2]  # recon: only at the end

    want, traces = _one_process_reference(config_file, shapes_dir, mesh, str(tmp_path / "ref"))
    assert traces == {"image": 1, "text": 1, "mae": 1}, traces
    for step in (2, STEPS):
        assert set(got[step]) == set(want[step])
        for k, v in want[step].items():
            assert got[step][k] == pytest.approx(v, rel=1e-5, abs=1e-7), (step, k, got[step][k], v)
