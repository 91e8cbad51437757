"""Faults end cleanly: real `python -m mmfm.train` runs with grain worker processes.

- However the training process ends (SIGKILL, SIGTERM, Ctrl-C to its process group, a failure in
  the data pipeline, a normal finish), every process it spawned is gone within 10 s; graceful
  ends leave no "leaked semaphore" warnings.
- A save that fills the disk ends the run with one line naming the step, the path, the cause and
  the last good checkpoint (exit code 74, no tracebacks); the earlier checkpoints are intact and
  bit-exact, and after space is freed the same command finishes with every step logged once.
"""
import os
import re
import signal
import subprocess
import time

import pytest

from mmfm import checkpoint
from tests.checkpoint.conftest import REPO, read_metrics, run_train, train_cmd, train_env
from tests.checkpoint.test_checkpoint_resume import (assert_logs_match, assert_same_state,
                                                     finalised_steps)
from tests.subprocess_env import failure_report

pytestmark = pytest.mark.slow

WORKERS = ("--config.data.worker_count=2",)
GRACE_S = 10.0


def _proc_table() -> dict[int, tuple[int, int, str]]:
    """pid -> (parent pid, process group, state letter) of every live process."""
    table = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        table[int(name)] = (int(fields[1]), int(fields[2]), fields[0])
    return table


def _descendants(root: int, table) -> set[int]:
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found, todo = set(), [root]
    while todo:
        for c in children.get(todo.pop(), []):
            found.add(c)
            todo.append(c)
    return found


def _alive(pids, pgid) -> list[int]:
    """Recorded pids still running (zombies count as gone), plus any member of the group."""
    table = _proc_table()
    return sorted(p for p, (_, group, state) in table.items()
                  if state != "Z" and (p in pids or group == pgid))


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return "?"


class TrackedRun:
    """The training CLI in its own session (process group = its pid), its children recorded."""

    def __init__(self, workdir, data_dir, tmp_path, *overrides, max_steps=10, **env):
        self.out, self.err = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
        with open(self.out, "w") as out, open(self.err, "w") as err:
            # Files, not pipes: a leaked worker would hold a pipe open and hang the test.
            cmd = train_cmd(workdir, data_dir, *overrides, max_steps=max_steps)
            self.proc = subprocess.Popen(cmd, cwd=REPO, env=train_env(**env), stdout=out,
                                         stderr=err, start_new_session=True)
        self.spawned: set[int] = set()
        self.cmdlines: dict[int, str] = {}

    def poll_until(self, predicate=lambda: False, timeout=300.0) -> bool:
        """Records children until the run exits or `predicate()`; True if predicate fired."""
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            for pid in _descendants(self.proc.pid, _proc_table()):
                self.spawned.add(pid)
                cmd = _cmdline(pid)  # re-read: right after fork it is still the parent's
                if cmd.strip() and cmd != "?":  # a zombie's is empty
                    self.cmdlines[pid] = cmd
            if predicate():
                return True
            time.sleep(0.1)
        return False

    def wait(self, timeout=300.0) -> int:
        self.poll_until(timeout=timeout)
        return self.proc.wait(timeout=30)

    def workers(self) -> list[int]:
        return sorted(p for p, cmd in self.cmdlines.items() if "multiprocessing.spawn" in cmd)

    def logged(self, step: int) -> bool:
        return f"step {step}/" in self.out.read_text()

    def survivors_after_grace(self) -> list[int]:
        deadline = time.monotonic() + GRACE_S
        while (alive := _alive(self.spawned, self.proc.pid)) and time.monotonic() < deadline:
            time.sleep(0.2)
        return alive

    def cleanup(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        for pid in _alive(self.spawned, self.proc.pid):  # only what this run spawned
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


@pytest.mark.parametrize("end", ["sigkill", "sigterm", "ctrl_c", "data_failure", "finish"])
def test_no_spawned_process_outlives_the_run(ckpt_data_dir, tmp_path, end):
    env = {"MMFM_TEST_KILL_AT_STEP": 6} if end == "sigkill" else {}
    # data_failure: enough steps left that the trainer reads past what was prefetched.
    run = TrackedRun(str(tmp_path / "w"), ckpt_data_dir, tmp_path, *WORKERS,
                     max_steps=40 if end == "data_failure" else 10, **env)
    try:
        if end in ("sigterm", "ctrl_c", "data_failure"):
            assert run.poll_until(lambda: run.logged(4) and len(run.workers()) >= 2), \
                run.err.read_text()[-3000:]
            if end == "sigterm":
                run.proc.send_signal(signal.SIGTERM)
            elif end == "ctrl_c":  # a terminal sends SIGINT to the whole foreground group
                os.killpg(run.proc.pid, signal.SIGINT)
            else:  # a worker dies (e.g. the OOM killer): the pipeline raises in the trainer
                os.kill(run.workers()[0], signal.SIGKILL)
        rc = run.wait()
        err = run.err.read_text()
        workers = run.workers()
        alive = run.survivors_after_grace()
        print(f"{end}: exit {rc}; spawned {sorted(run.spawned)} (workers {workers}); "
              f"alive {GRACE_S:.0f} s later: {alive}")
        assert len(workers) >= 2, f"the run started no grain workers: {sorted(run.spawned)}"
        assert not alive, [(p, _cmdline(p)) for p in alive]
        # Ctrl-C exits 130 after its save (so scripts can tell the run stopped early); SIGTERM 0.
        expected_rc = {"sigkill": -signal.SIGKILL, "data_failure": None, "ctrl_c": 130}.get(end, 0)
        if expected_rc is None:
            assert rc not in (0, -signal.SIGKILL), err[-3000:]
            assert "Worker process was terminated unexpectedly" in err, err[-3000:]
        else:
            assert rc == expected_rc, err[-3000:]
        if end in ("sigterm", "ctrl_c"):
            assert re.search(r"preempted: saved step \d+", err), err[-3000:]
        if end != "sigkill" and end != "data_failure":
            assert "leaked" not in err and "Traceback" not in err, err[-3000:]
            assert read_metrics(str(tmp_path / "w"))[-1]["step"] >= (10 if end == "finish" else 4)
    finally:
        run.cleanup()


# ----------------------------------------------------------------------------- a full disk

def _mount_tmpfs(path, size_mb: int) -> None:
    os.makedirs(path, exist_ok=True)
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(path)],
                       capture_output=True, text=True)
    if p.returncode != 0:
        pytest.skip(f"cannot mount a size-limited tmpfs here (needs root or CAP_SYS_ADMIN): "
                    f"{p.stderr.strip()}")


def _fill(path, leave_bytes: int) -> str:
    """A file that takes all free space of `path`'s filesystem but `leave_bytes`."""
    st = os.statvfs(path)
    filler = os.path.join(path, "filler")
    fd = os.open(filler, os.O_CREAT | os.O_WRONLY)
    try:
        os.posix_fallocate(fd, 0, st.f_bavail * st.f_frsize - leave_bytes)
    finally:
        os.close(fd)
    return filler


def test_full_disk_ends_the_run_with_one_clear_line(reference_run, ckpt_data_dir, tmp_path):
    mnt = tmp_path / "small_fs"
    _mount_tmpfs(mnt, 40)
    try:
        w = str(mnt / "run")
        p = run_train(w, ckpt_data_dir, max_steps=30)  # checkpoints 20, 25, 30 on the small disk
        assert p.returncode == 0, failure_report(p)
        filler = _fill(str(mnt), 32 * 1024)
        p = run_train(w, ckpt_data_dir)  # resumes at 30; the save of 35 finds no space
        err_lines = [line for line in p.stderr.splitlines() if line.strip()]
        root = os.path.join(w, "checkpoints")
        expected = (f"mmfm: saving the checkpoint of step 35 to {root}/35 failed: No space left on "
                    f"device (errno ENOSPC); the last good checkpoint is step 30 ({root}/30); "
                    f"free the space or fix the permission and rerun the same command to resume "
                    f"from it")
        print(f"exit {p.returncode}; {len(err_lines)} stderr lines; last: {err_lines[-1]}")
        assert p.returncode == checkpoint.CheckpointSaveError.exit_code == 74, failure_report(p)
        assert err_lines[-1] == expected
        assert sum("mmfm: saving the checkpoint" in line for line in err_lines) == 1
        noise = [line for line in err_lines if re.search(
            r"Traceback|Event loop is closed|RESOURCE_EXHAUSTED|^E\d{4} ", line)]
        assert not noise, "\n".join(err_lines)
        assert len(err_lines) < 20, err_lines
        # Nothing good was lost; the half-written step stays for the next run to ignore.
        assert finalised_steps(w) == [20, 25, 30]
        assert any(d.startswith("35.") for d in os.listdir(root)), os.listdir(root)
        for step in (20, 25):
            assert checkpoint.load_state(w, step)[0] == step
        assert_same_state(reference_run, w, step=30)
        os.remove(filler)
        p = run_train(w, ckpt_data_dir)
        assert p.returncode == 0, failure_report(p)
        assert "resumed from step 30 " in p.stderr
        assert not any(d.startswith("35.") for d in os.listdir(root))
        assert_logs_match(reference_run, w)  # every step 1..40 once, same losses
        assert_same_state(reference_run, w)
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_full_disk_before_any_save_ends_the_run_with_one_clear_line(ckpt_data_dir, tmp_path):
    """A disk with no space at all: the run's own files (run info, logs) fail before a checkpoint
    save is reached. Still one line, exit 74, naming the last good checkpoint; nothing lost."""
    mnt = tmp_path / "small_fs"
    _mount_tmpfs(mnt, 40)
    try:
        w = str(mnt / "run")
        p = run_train(w, ckpt_data_dir, max_steps=10)  # checkpoints 5 and 10
        assert p.returncode == 0, failure_report(p)
        filler = _fill(str(mnt), 0)
        p = run_train(w, ckpt_data_dir, max_steps=20)
        err_lines = [line for line in p.stderr.splitlines() if line.strip()]
        root = os.path.join(w, "checkpoints")
        print(f"exit {p.returncode}; {len(err_lines)} stderr lines; last: {err_lines[-1]}")
        assert p.returncode == 74, failure_report(p)
        assert err_lines[-1].startswith(f"mmfm: writing {w}"), failure_report(p)
        assert ("failed: No space left on device (errno ENOSPC); the last good checkpoint is step "
                f"10 ({root}/10)") in err_lines[-1]
        assert not [line for line in err_lines if "Traceback" in line], "\n".join(err_lines)
        assert finalised_steps(w) == [5, 10]
        os.remove(filler)
        p = run_train(w, ckpt_data_dir, max_steps=20)
        assert p.returncode == 0, failure_report(p)
        assert "resumed from step 10 " in p.stderr
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
