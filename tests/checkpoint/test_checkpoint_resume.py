"""Fault tolerance end to end: real training subprocesses killed and resumed.

- SIGKILL at 5 seeded-random steps (one while an async save is in flight), with and without grain
  worker processes: final state bit-exact vs. an uninterrupted run; per-step losses in metrics.jsonl and TensorBoard equal and each step
  logged exactly once.
- SIGTERM at a random step: a checkpoint of exactly the step it stopped at, exit 0 within 30 s,
  and the resume continues from that step.
- A corrupted file in the latest checkpoint: warning naming the step, fallback to the previous
  one, and the run still ends bit-exactly where the reference did.
"""
import os
import random
import re
import shutil
import signal
import struct
import subprocess
import time

import numpy as np
import pytest

from mmfm import checkpoint
from tests.checkpoint.conftest import (REPO, STEPS, flat_leaves, read_metrics, run_train,
                                       train_cmd, train_env)
from tests.subprocess_env import failure_report

# Minutes of CPU: run by `make test-slow` (and CI), not by `make test`.
pytestmark = pytest.mark.slow

LOSS_KEYS = ("loss", "loss/clip", "loss/mae", "loss/mlm", "lr")


def tb_scalars(workdir):
    """{tag: {step: value}} as TensorBoard shows it: a SessionLog START at step s hides every
    earlier-written event with step >= s (TensorBoard's orphaned-data purge). Raises if a step
    of a tag survives twice."""
    from tensorboardX.proto import event_pb2

    events = []
    tb = os.path.join(workdir, "tb")
    for name in sorted(os.listdir(tb)):  # file names start with the creation time: file order
        with open(os.path.join(tb, name), "rb") as f:
            data = f.read()
        pos = 0
        while pos + 12 <= len(data):  # TFRecord: u64 length, u32 crc, payload, u32 crc
            (n,) = struct.unpack("<Q", data[pos:pos + 8])
            if pos + 12 + n + 4 > len(data):
                break  # a record cut by SIGKILL: TensorBoard skips it too
            ev = event_pb2.Event.FromString(data[pos + 12:pos + 12 + n])
            pos += 12 + n + 4
            events.append(ev)
    out: dict = {}
    for ev in events:
        if ev.HasField("session_log") and ev.session_log.status == ev.session_log.START:
            for tag in out:
                out[tag] = [(s, v) for s, v in out[tag] if s < ev.step]
        for val in ev.summary.value:
            out.setdefault(val.tag, []).append((ev.step, val.simple_value))
    result = {}
    for tag, pairs in out.items():
        steps = [s for s, _ in pairs]
        assert len(steps) == len(set(steps)), f"TensorBoard tag {tag} has duplicated steps"
        result[tag] = dict(pairs)
    return result


def assert_same_state(a_dir, b_dir, step=STEPS):
    sa, a = checkpoint.load_state(a_dir, step)
    sb, b = checkpoint.load_state(b_dir, step)
    fa, fb = flat_leaves(a), flat_leaves(b)
    assert sorted(fa) == sorted(fb)
    for path in fa:
        x, y = np.asarray(fa[path]), np.asarray(fb[path])
        assert x.dtype == y.dtype and x.shape == y.shape, path
        # bit-exact: compare raw bytes (also equal NaNs / signed zeros)
        assert x.tobytes() == y.tobytes(), f"{path}: max |diff| {np.max(np.abs(x - y))}"
    assert int(fa["step"]) == step


def assert_logs_match(ref_dir, run_dir, first=1, last=STEPS):
    ref = {r["step"]: r for r in read_metrics(ref_dir)}
    got = read_metrics(run_dir)
    steps = [r["step"] for r in got]
    assert steps == list(range(first, last + 1)), f"steps logged: {steps}"
    for r in got:
        for k in LOSS_KEYS:
            assert r[k] == ref[r["step"]][k], (r["step"], k, r[k], ref[r["step"]][k])
    tb, tb_ref = tb_scalars(run_dir), tb_scalars(ref_dir)
    assert sorted(tb["train/loss"]) == list(range(first, last + 1))
    assert tb["train/loss"] == {s: v for s, v in tb_ref["train/loss"].items() if s >= first}


def finalised_steps(workdir):
    root = os.path.join(workdir, "checkpoints")
    return sorted(int(d) for d in os.listdir(root) if d.isdigit())


@pytest.mark.parametrize("workers", [0, 2])
def test_sigkill_at_random_steps_resumes_bit_exactly(reference_run, ckpt_data_dir, tmp_path,
                                                     workers):
    """The reference ran without worker processes: batches do not depend on them."""
    rng = random.Random(20240611)
    # Four kills between saves plus one right after a save was issued (still in flight).
    kills = sorted(rng.sample([s for s in range(2, STEPS) if s % 5], 4)
                   + [rng.choice(range(10, STEPS, 5))])
    print("SIGKILL steps:", kills)
    w = str(tmp_path / "killed")
    resumed_from = []
    for k in kills + [None]:
        p = run_train(w, ckpt_data_dir, f"--config.data.worker_count={workers}",
                      **({"MMFM_TEST_KILL_AT_STEP": k} if k else {}))
        m = re.search(r"resumed from step (\d+) ", p.stderr)
        resumed_from.append(int(m.group(1)) if m else 0)
        if k is None:
            assert p.returncode == 0, failure_report(p)
            break
        assert p.returncode == -signal.SIGKILL, failure_report(p)
        assert read_metrics(w)[-1]["step"] == k
        if k % 5 == 0:
            assert k not in finalised_steps(w), "the save of the kill step was not in flight"
        # Async: the newest finalised step is a save issued before step k (or none yet).
        assert all(s % 5 == 0 and s < k for s in finalised_steps(w))
    print("SIGKILL steps:", kills, "each run resumed from:", resumed_from)
    # Each run resumed from the newest step finalised by its predecessor, never going back.
    assert resumed_from == sorted(resumed_from) and resumed_from[-1] > 0
    assert_same_state(reference_run, w)
    assert_logs_match(reference_run, w)


def test_sigterm_saves_that_step_and_exits_cleanly(reference_run, ckpt_data_dir, tmp_path):
    target = random.Random(7).randrange(8, 28)
    w = str(tmp_path / "term")
    proc = subprocess.Popen(train_cmd(w, ckpt_data_dir), cwd=REPO, env=train_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:  # the progress line of each step
        if line.startswith(f"step {target}/"):
            proc.send_signal(signal.SIGTERM)
            t0 = time.monotonic()
            break
    out, err = proc.communicate(timeout=60)
    elapsed = time.monotonic() - t0
    assert proc.returncode == 0, err[-3000:]
    assert elapsed < 30
    m = re.search(r"preempted: saved step (\d+) to (\S+)", err)
    assert m, err[-3000:]
    stopped = int(m.group(1))
    print(f"SIGTERM after step {target}; stopped and saved at {stopped} in {elapsed:.1f}s")
    assert target <= stopped < STEPS
    assert stopped in finalised_steps(w) and m.group(2).endswith(f"/checkpoints/{stopped}")
    assert read_metrics(w)[-1]["step"] == stopped
    step, _ = checkpoint.load_state(w, stopped)
    assert step == stopped
    p = run_train(w, ckpt_data_dir)
    assert p.returncode == 0, failure_report(p)
    assert f"resumed from step {stopped} " in p.stderr
    assert_logs_match(reference_run, w)
    assert_same_state(reference_run, w)


@pytest.mark.parametrize("victim", ["array_chunk", "array_metadata"])
def test_corrupted_latest_checkpoint_falls_back(reference_run, ckpt_data_dir, tmp_path, victim):
    w = str(tmp_path / "corrupt")
    shutil.copytree(reference_run, w)
    assert finalised_steps(w) == [30, 35, 40]
    state_dir = os.path.join(w, "checkpoints", "40", "state")
    if victim == "array_chunk":  # truncate the biggest data file of the OCDBT store
        files = [os.path.join(r, f) for r, _, fs in os.walk(state_dir) for f in fs
                 if os.sep + "d" + os.sep in os.path.join(r, f)]
        path = max(files, key=os.path.getsize)
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) // 2)
    else:  # overwrite the tree metadata with garbage
        with open(os.path.join(state_dir, "_METADATA"), "wb") as f:
            f.write(b"\x00garbage{")
    # Resume; the run must redo steps 36..40 from step 35 and end where the reference ended.
    for name in ("metrics.jsonl",):
        assert read_metrics(w)[-1]["step"] == STEPS
    p = run_train(w, ckpt_data_dir)
    assert p.returncode == 0, failure_report(p)
    assert re.search(r"checkpoint step 40 in \S+ is unreadable", p.stderr), failure_report(p)
    assert "resumed from step 35 " in p.stderr
    assert os.path.isdir(os.path.join(w, "checkpoints_corrupt", "40"))
    assert_same_state(reference_run, w)
    assert_logs_match(reference_run, w)
