"""Two local processes x 4 virtual CPU devices with `jax.distributed`, through the real CLI.

`python -m mmfm.train` runs in each process (explicit coordinator on a free port, small init and
heartbeat timeouts, every process under a wall-clock timeout). Checked:
  * the losses of 6 steps equal a single-process 8-device run on the same global batch (process
    0's slice first, then process 1's: the rows its devices hold in the (8,1,1) mesh);
  * only process 0 writes metrics (each step exactly once), both take part in checkpoints;
  * when one process is killed, the other exits with a clear error well within 120 s.
"""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from mmfm.train.loop import Trainer

# Minutes of CPU: run by `make test-slow` (and CI), not by `make test`.
pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STEPS = 6
PROC_TIMEOUT = 420  # s, per process; the run itself takes ~1-2 min on 2 shared cores


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(pid: int, port: int, workdir: str, data_dir: str, log_path: str, *extra: str):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu",
               PYTHONUNBUFFERED="1")
    cmd = ["timeout", "-s", "KILL", str(PROC_TIMEOUT), sys.executable, "-m", "mmfm.train",
           "--config", "experiments/configs/demo.py:tiny", "--workdir", workdir,
           f"--config.data.dir={data_dir}", "--config.log_every=1", "--config.checkpoint_every=3",
           f"--coordinator=127.0.0.1:{port}", "--num_processes=2", f"--process_id={pid}",
           "--init_timeout=60", "--heartbeat_timeout=10", *extra]
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=open(log_path, "w"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


@pytest.fixture(scope="module")
def two_process_run(shapes_dir, tmp_path_factory):
    d = tmp_path_factory.mktemp("mh")
    workdir, port = str(d / "run"), _free_port()
    logs = [str(d / f"p{i}.log") for i in range(2)]
    procs = [_launch(i, port, workdir, shapes_dir, logs[i], f"--config.total_steps={STEPS}")
             for i in range(2)]
    rcs = [p.wait(timeout=PROC_TIMEOUT + 30) for p in procs]
    for i, rc in enumerate(rcs):
        assert rc == 0, f"process {i} exited with {rc}:\n{_read(logs[i])[-3000:]}"
    return workdir, [_read(p) for p in logs]


def test_losses_equal_single_process_8_devices(two_process_run, shapes_dir, tiny_config, tmp_path):
    workdir, _ = two_process_run
    recs = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
    got = np.array([r["loss"] for r in recs if r["kind"] == "train"])
    assert len(got) == STEPS

    from mmfm.data.build import build_data
    config = tiny_config(shapes_dir, total_steps=STEPS, log_every=1)
    tr = Trainer(config, str(tmp_path))  # one process, 8 devices, mesh (8,1,1)
    assert dict(tr.mesh.shape) == {"data": 8, "fsdp": 1, "tensor": 1}
    shards = [iter(build_data(config.data, batch_size=config.batch_size // 2, seed=config.seed,
                              shard_index=i, shard_count=2)[0]) for i in range(2)]
    state, want = tr.init_state(), []
    for _ in range(STEPS):
        parts = [next(s) for s in shards]
        batch = {k: np.concatenate([p[k] for p in parts]) for k in ("image", "tokens")}
        state, m = tr.step(state, batch)
        want.append(float(jax.device_get(m["loss"])))
    want = np.array(want)
    rel = np.abs(got - want) / np.abs(want)
    print(f"2 processes: {got}\n1 process:   {want}\nmax rel diff {rel.max():.2e}")
    assert rel.max() <= 1e-5, f"2-process losses {got} != 1-process 8-device losses {want}"


def test_only_process_0_writes_logs_all_take_part_in_checkpoints(two_process_run):
    workdir, (log0, log1) = two_process_run
    recs = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
    steps = [r["step"] for r in recs if r["kind"] == "train"]
    assert steps == list(range(1, STEPS + 1)), "each step must be logged exactly once"
    assert f"step {STEPS}/{STEPS}" in log0 and f"step {STEPS}/" not in log1
    info = json.load(open(os.path.join(workdir, "run_info.json")))
    assert info["processes"] == 2 and info["devices"] == 8
    ckpts = sorted(os.listdir(os.path.join(workdir, "checkpoints")))
    assert "3" in ckpts and str(STEPS) in ckpts, ckpts
    assert "process 1 of 2" in log1 and "process 0 of 2" in log0


@pytest.mark.parametrize("victim", [1, 0], ids=["kill-worker", "kill-coordinator"])
def test_survivor_exits_with_clear_error_when_peer_is_killed(victim, shapes_dir, tmp_path):
    port = _free_port()
    logs = [str(tmp_path / f"p{i}.log") for i in range(2)]
    # A long run (no evals reached); total_steps large so nothing finishes on its own.
    procs = [_launch(i, port, str(tmp_path / "run"), shapes_dir, logs[i], "--config.total_steps=100000",
                     "--config.checkpoint_every=0") for i in range(2)]
    survivor = 1 - victim
    try:
        deadline = time.time() + PROC_TIMEOUT
        while "step 2/" not in _read(logs[0]):  # both are training (process 0 prints progress)
            assert time.time() < deadline, "training never started:\n" + _read(logs[0])[-3000:]
            assert procs[0].poll() is None and procs[1].poll() is None, _read(logs[0])[-3000:]
            time.sleep(0.5)
        os.killpg(procs[victim].pid, signal.SIGKILL)  # the timeout wrapper and python with it
        t0 = time.time()
        try:
            rc = procs[survivor].wait(timeout=120)
        except subprocess.TimeoutExpired:
            pytest.fail(f"process {survivor} still running 120 s after process {victim} was killed:\n"
                        + _read(logs[survivor])[-3000:])
        elapsed = time.time() - t0
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    out = _read(logs[survivor])
    print(f"victim {victim}: survivor exited rc={rc} after {elapsed:.1f} s")
    assert rc != 0
    # Either our handler (a failed collective) or JAX's coordination service (missed heartbeats).
    assert ("another process died" in out or "another task died" in out), out[-3000:]
