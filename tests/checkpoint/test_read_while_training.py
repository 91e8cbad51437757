"""Reading a run while it trains: `mmfm export` of a live workdir never disturbs its saves.

A real training process saves every step; `mmfm export` runs against its workdir three times while
saves are in flight. The reads open nothing writable (no Orbax clean-up of in-flight temporary
directories), so the training finishes with exit 0 and every step logged once, and each export
holds a step that was finalised when it was read.
"""
import json
import os
import subprocess
import sys
import time

import pytest

from mmfm import checkpoint
from tests.checkpoint.conftest import REPO, read_metrics, train_cmd, train_env
from tests.subprocess_env import failure_report

pytestmark = pytest.mark.slow
STEPS = 30


def test_exports_of_a_live_run_leave_its_saves_intact(ckpt_data_dir, tmp_path):
    workdir = tmp_path / "run"
    cmd = train_cmd(workdir, ckpt_data_dir, "--config.checkpoint_every=1",
                    "--config.keep_checkpoints=2", max_steps=STEPS)
    trainer = subprocess.Popen(cmd, cwd=REPO, env=train_env(1), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    exported = []
    try:
        deadline = time.time() + 300
        while not os.path.isdir(workdir / "checkpoints" / "1"):
            assert trainer.poll() is None and time.time() < deadline, "training did not start"
            time.sleep(0.2)
        for i in range(3):
            out = tmp_path / f"export{i}"
            p = subprocess.run([sys.executable, "-c", "from mmfm.cli import main; main()", "export",
                                "--workdir", str(workdir), "--out", str(out)], cwd=tmp_path,
                               env=dict(train_env(1), PYTHONPATH=REPO), capture_output=True,
                               text=True, timeout=300)
            assert p.returncode == 0, failure_report(p)
            exported.append(json.load(open(out / "config.json"))["source"]["step"])
            if trainer.poll() is not None:
                break
        stdout, stderr = trainer.communicate(timeout=600)
    finally:
        if trainer.poll() is None:
            trainer.kill()
    assert trainer.returncode == 0, stderr[-3000:]
    assert exported and all(1 <= s <= STEPS for s in exported), exported
    steps = [r["step"] for r in read_metrics(workdir)]
    assert steps == list(range(1, STEPS + 1)), "every step logged exactly once"
    assert checkpoint.load_run(str(workdir)).step == STEPS
    leftovers = [d for d in os.listdir(workdir / "checkpoints") if "tmp" in d]
    assert not leftovers, leftovers
