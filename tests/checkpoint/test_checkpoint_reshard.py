"""Save on 8 devices with mesh (8,1,1), resume on (2,2,2): training continues on the new mesh.

Subprocesses with 8 virtual CPU devices. Steps 1..20 (before the switch) must equal an
uninterrupted (8,1,1) run bit for bit; steps 21..40 run on (2,2,2), whose partitioned matmuls and
psums round differently, so they must match within the sharding tests' tolerance on the loss:
relative difference <= 1e-5 per step (tests/sharding/test_mesh_equivalence.py).
"""
import numpy as np

from tests.checkpoint.conftest import STEPS, read_metrics, run_train
from tests.subprocess_env import failure_report
import pytest

# Minutes of CPU: run by `make test-slow` (and CI), not by `make test`.
pytestmark = pytest.mark.slow

SWITCH = 20
LOSS_RTOL = 1e-5


def test_save_on_8x1x1_resume_on_2x2x2(ckpt_data_dir, tmp_path):
    ref, w = str(tmp_path / "ref"), str(tmp_path / "switch")
    mesh_a, mesh_b = "--config.mesh.shape=(8,1,1)", "--config.mesh.shape=(2,2,2)"
    p = run_train(ref, ckpt_data_dir, mesh_a, devices=8)
    assert p.returncode == 0, failure_report(p)
    p = run_train(w, ckpt_data_dir, mesh_a, devices=8, max_steps=SWITCH)
    assert p.returncode == 0, failure_report(p)
    p = run_train(w, ckpt_data_dir, mesh_b, devices=8)
    assert p.returncode == 0, failure_report(p)
    # The session's compile cache is configured; the 8-device runs must have turned it off.
    assert "persistent compilation cache turned off" in p.stderr
    assert f"resumed from step {SWITCH} " in p.stderr
    assert "written on mesh {'data': 8, 'fsdp': 1, 'tensor': 1}" in p.stderr
    assert "mesh {'data': 2, 'fsdp': 2, 'tensor': 2}" in p.stderr

    ref_m, got = read_metrics(ref), read_metrics(w)
    assert [r["step"] for r in got] == list(range(1, STEPS + 1))
    ref_loss = np.array([r["loss"] for r in ref_m])
    loss = np.array([r["loss"] for r in got])
    assert np.array_equal(loss[:SWITCH], ref_loss[:SWITCH])
    rel = np.abs(loss[SWITCH:] - ref_loss[SWITCH:]) / np.abs(ref_loss[SWITCH:])
    print(f"max relative loss difference after the mesh switch: {rel.max():.2e}")
    assert rel.max() <= LOSS_RTOL, rel
