"""Resume after SIGKILL with a distillation teacher present: bit-exact, like the plain run.

The teacher is a 5-step `demo.py:tiny` run (read from its checkpoint by every process); the
student is `demo.py:tiny` with `loss.distill_weight` on. The teacher is re-loaded by every
resumed process (it is never in the student's checkpoints), so any drift in its loading or
placement would show up as a different final state. Generous timeouts: on 2 shared cores one of
these runs can take minutes.
"""
import re
import signal

import pytest

from tests.checkpoint.conftest import read_metrics, run_train
from tests.checkpoint.test_checkpoint_resume import assert_logs_match, assert_same_state
from tests.subprocess_env import failure_report

pytestmark = pytest.mark.slow  # five training subprocesses


TIMEOUT = 900


def test_sigkill_with_a_teacher_resumes_bit_exactly(ckpt_data_dir, tmp_path):
    teacher = str(tmp_path / "teacher")
    p = run_train(teacher, ckpt_data_dir, max_steps=5, timeout=TIMEOUT)
    assert p.returncode == 0, failure_report(p)
    distill = ("--config.loss.distill_weight=0.5", f"--config.distill.teacher={teacher}")
    ref = str(tmp_path / "reference")
    p = run_train(ref, ckpt_data_dir, *distill, timeout=TIMEOUT)
    assert p.returncode == 0, failure_report(p)
    assert all(r["loss/distill"] > 0 for r in read_metrics(ref))
    w = str(tmp_path / "killed")
    resumed = []
    for kill in (13, 27, None):  # between saves (every 5 steps)
        p = run_train(w, ckpt_data_dir, *distill, timeout=TIMEOUT,
                      **({"MMFM_TEST_KILL_AT_STEP": kill} if kill else {}))
        m = re.search(r"resumed from step (\d+) ", p.stderr)
        resumed.append(int(m.group(1)) if m else 0)
        if kill is None:
            assert p.returncode == 0, failure_report(p)
        else:
            assert p.returncode == -signal.SIGKILL, failure_report(p)
            assert read_metrics(w)[-1]["step"] == kill
    # Async saves: each run resumes from a save finalised before its predecessor was killed.
    assert resumed[0] == 0 and 0 < resumed[1] < 13 and resumed[1] <= resumed[2] < 27, resumed
    assert all(r % 5 == 0 for r in resumed), resumed
    assert_same_state(ref, w)
    assert_logs_match(ref, w)
    got = {r["step"]: r["loss/distill"] for r in read_metrics(w)}
    want = {r["step"]: r["loss/distill"] for r in read_metrics(ref)}
    assert got == want
