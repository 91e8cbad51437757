"""Ctrl-C (SIGINT) saves the step it finished, then the trainer exits with 130 (not 0), so a script
can tell that the run stopped early; the message says where it saved and how to resume. A
read-only consumer (export) of that run logs no "resumed from step" warning."""
import os
import re
import signal
import subprocess
import sys

from tests.checkpoint.conftest import REPO, train_cmd, train_env


def test_sigint_saves_then_exits_130(ckpt_data_dir, tmp_path):
    w = str(tmp_path / "w")
    proc = subprocess.Popen(train_cmd(w, ckpt_data_dir), cwd=REPO, env=train_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stdout:
            if line.startswith("step 3/"):
                proc.send_signal(signal.SIGINT)
                break
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err[-3000:]
    m = re.search(r"mmfm train: interrupted \(SIGINT\): saved step (\d+) to (\S+);", err)
    assert m, err[-3000:]
    step = int(m.group(1))
    assert os.path.isdir(os.path.join(w, "checkpoints", str(step))) and "Traceback" not in err

    exp = subprocess.run([sys.executable, "-c", "from mmfm.cli import main; main()", "export",
                          "--workdir", w, "--out", str(tmp_path / "exp")], cwd=REPO,
                         env=train_env(), capture_output=True, text=True, timeout=300)
    assert exp.returncode == 0, exp.stderr[-3000:]
    assert "resumed from" not in exp.stderr and "WARNING" not in exp.stderr, exp.stderr[-3000:]
