"""Fine-tuning is a training run: SIGKILLed and resumed, it ends bit-exactly where an uninterrupted
fine-tune does (its head, its frozen towers, its optimizer and data position).

The fine-tunes start from the 40-step demo reference run (`resume_from`, params only, the
classifier left out); a kill before the first save restarts from that run again.
"""
import random
import signal
import subprocess
import sys

import pytest

from tests.checkpoint.conftest import REPO, read_metrics, train_env
from tests.checkpoint.test_checkpoint_resume import assert_same_state, finalised_steps
from tests.subprocess_env import failure_report

pytestmark = pytest.mark.slow

STEPS = 20


def run_finetune(workdir, data_dir, source, **env):
    cmd = [sys.executable, "-m", "mmfm.train", "--config",
           "experiments/configs/finetune_shapes.py:tiny", "--workdir", str(workdir),
           f"--config.data.dir={data_dir}", f"--config.resume_from={source}",
           "--config.total_steps=24", "--config.checkpoint_every=5", "--config.log_every=1",
           f"--max_steps={STEPS}"]
    return subprocess.run(cmd, cwd=REPO, env=train_env(1, **env), capture_output=True, text=True,
                          timeout=300)


def test_sigkilled_finetune_resumes_bit_exactly(reference_run, ckpt_data_dir, tmp_path):
    ref = tmp_path / "ref"
    p = run_finetune(ref, ckpt_data_dir, reference_run)
    assert p.returncode == 0, failure_report(p)
    rng = random.Random(7)
    # One kill before the first save (the restart starts from the source run again), one while
    # a save is in flight, one between saves.
    kills = [3, 10, rng.choice([s for s in range(11, STEPS) if s % 5])]
    w = tmp_path / "killed"
    for k in kills + [None]:
        p = run_finetune(w, ckpt_data_dir, reference_run,
                         **({"MMFM_TEST_KILL_AT_STEP": k} if k else {}))
        if k is None:
            assert p.returncode == 0, failure_report(p)
            break
        assert p.returncode == -signal.SIGKILL, failure_report(p)
        assert read_metrics(w)[-1]["step"] == k
        assert all(s < k for s in finalised_steps(w))
    print("SIGKILL steps:", kills)
    assert_same_state(str(ref), str(w), step=STEPS)
    ref_logs = {r["step"]: r["loss/classify"] for r in read_metrics(ref)}
    got = [(r["step"], r["loss/classify"]) for r in read_metrics(w)]
    assert [s for s, _ in got] == list(range(1, STEPS + 1))
    assert all(ref_logs[s] == v for s, v in got), got
