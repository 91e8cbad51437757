"""Truthful progress: throughput and ETA exclude compilation and evals; TensorBoard tags are legal
(no "Summary name ... is illegal" lines) while metrics.jsonl keeps the metric names."""
import json
import logging
import os

from mmfm.train.metrics import MetricsWriter, StepClock, format_eta, tb_tag


class FakeClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def run_steps(clock, fake, start, steps, *, compile_s=60.0, step_s=0.1, log_every=5, total=None,
              batch=128):
    """Drives a StepClock the way the loop does; returns the (step, rate, eta) of each log."""
    logs = []
    for step in range(start, start + steps):
        fake.t += (compile_s if step == start else 0.0) + step_s
        done = step + 1
        if done == start + 1:
            clock.warm(done)
        if done % log_every == 0:
            logs.append((done, clock.interval_rate(done, batch), clock.eta(done, total)))
    return logs


def test_eta_excludes_the_compile_of_the_first_step():
    fake = FakeClock()
    logs = run_steps(StepClock(0, fake), fake, 0, 20, total=1000)
    step, rate, eta = logs[0]
    assert step == 5 and abs(rate - 128 / 0.1) < 1e-6  # 4 post-compile steps at 0.1 s
    assert abs(eta - 995 * 0.1) < 1e-6  # ~100 s left, not the ~3.3 h the compile would suggest
    assert format_eta(eta) == "1m40s"


def test_a_resumed_run_near_its_end_shows_seconds_not_minutes():
    fake = FakeClock()
    logs = run_steps(StepClock(1990, fake), fake, 1990, 8, compile_s=40.0, log_every=5, total=2000)
    step, _, eta = logs[0]
    assert step == 1995 and abs(eta - 0.5) < 1e-6


def test_paused_time_is_not_training_time():
    fake = FakeClock()
    clock = StepClock(0, fake)
    run_steps(clock, fake, 0, 10, total=100, log_every=100)
    with clock.paused():
        fake.t += 500.0  # an evaluation
    assert abs(clock.eta(10, 100) - 90 * 0.1) < 1e-6


def test_the_interval_of_only_the_compile_step_has_no_rate():
    fake = FakeClock()
    logs = run_steps(StepClock(0, fake), fake, 0, 2, log_every=1, total=10)
    assert logs[0][1] is None and logs[0][2] is None
    assert logs[1][1] is not None


def test_tensorboard_tags_are_legal_and_jsonl_keeps_names(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    assert tb_tag("eval/retrieval/i2t/R@1") == "eval/retrieval/i2t/R_1"
    w = MetricsWriter(str(tmp_path))
    w.write(3, {"retrieval/i2t/R@1": 0.5, "retrieval/t2i/R@10": 0.75}, kind="eval")
    w.close()
    assert not [r for r in caplog.records if "illegal" in r.getMessage()]
    rec = json.loads(open(os.path.join(tmp_path, "metrics.jsonl")).readline())
    assert rec["retrieval/i2t/R@1"] == 0.5 and rec["retrieval/t2i/R@10"] == 0.75
    from tests.checkpoint.test_checkpoint_resume import tb_scalars
    assert set(tb_scalars(str(tmp_path))) == {"eval/retrieval/i2t/R_1", "eval/retrieval/t2i/R_10"}
