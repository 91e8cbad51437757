"""Guarded child processes die with their parent (SIGKILL included), and only then."""
import os
import queue
import signal
import subprocess
import sys
import textwrap
import threading
import time

# A parent that starts one guarded child from a short-lived thread (as grain does), lets that
# thread exit once the child's guard is in place, reports the child's pid (on stderr, so it cannot
# interleave with the child's output) and sleeps. The child prints "alive" once a second. (A bare PR_SET_PDEATHSIG=SIGKILL fails the first check: the
# kernel sends it when the starting thread exits.)
PARENT = textwrap.dedent("""
    import multiprocessing as mp, sys, threading, time
    from mmfm.data import workers

    def child(init, guarded):
        init(0, 1)
        guarded.set()
        while True:
            print("alive", flush=True)
            time.sleep(1)

    def start(proc, guarded):
        proc.start()
        guarded.wait()  # this thread ends only after the child installed its guard

    if __name__ == "__main__":
        ctx = mp.get_context("spawn")
        guarded = ctx.Event()
        proc = ctx.Process(target=child, args=(workers.worker_init_fn(), guarded), daemon=True)
        starter = threading.Thread(target=start, args=(proc, guarded))
        starter.start(); starter.join()
        print(f"pid {proc.pid}", file=sys.stderr, flush=True)  # not the child's stdout pipe
        time.sleep(600)
""")


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _lines(stream) -> "queue.Queue[str]":
    """Lines of `stream` read by a thread, so a test can wait for one with a timeout."""
    q: "queue.Queue[str]" = queue.Queue()
    threading.Thread(target=lambda: [q.put(line.strip()) for line in stream], daemon=True).start()
    return q


def test_child_outlives_its_starting_thread_but_not_its_parent(tmp_path):
    script = tmp_path / "parent.py"
    script.write_text(PARENT)
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True,
                              cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))),
                              env=dict(os.environ, PYTHONPATH=os.getcwd()))
    child = None
    try:
        lines, errors = _lines(parent.stdout), _lines(parent.stderr)
        reported = errors.get(timeout=60)
        while not reported.startswith("pid "):  # e.g. import warnings
            reported = errors.get(timeout=60)
        child = int(reported.split()[1])  # printed after the starting thread ended
        while not lines.empty():  # only output printed from now on counts below
            lines.get_nowait()
        # Still running ~2 s after the thread that started it exited.
        assert [lines.get(timeout=5) for _ in range(3)] == ["alive"] * 3 and _running(child)
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=10)
        deadline = time.monotonic() + 10
        while _running(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        gone_after = 10 - (deadline - time.monotonic())
        print(f"child {child} gone {gone_after:.2f} s after its parent's SIGKILL")
        assert not _running(child)
    finally:
        parent.kill()
        if child and _running(child):
            os.kill(child, signal.SIGKILL)
