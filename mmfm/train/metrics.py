"""Metrics sinks: JSON lines, TensorBoard (tensorboardX, no TensorFlow) and a progress line.

Only the main process writes. TensorBoard tags are sanitised (`retrieval/i2t/R@1` ->
`retrieval/i2t/R_1`, the name TensorBoard itself would use); metrics.jsonl keeps the names as they
are. Throughput and the ETA come from post-compile step times (`StepClock`). After a resume, `truncate_after(step)` drops entries past the restored
step so every step appears exactly once in metrics.jsonl; TensorBoard readers use the newest event
for a step, and we purge them on resume with `purge_step`.
"""
from __future__ import annotations

import contextlib
import json
import math
import re
import sys
import time
from typing import Callable, Mapping, Optional

import numpy as np

from mmfm import fileio

UPLOAD_EVERY_S = 60.0


def _scalar(v) -> float:
    v = np.asarray(v)
    return float(v) if v.size == 1 else float(v.mean())


_TB_ILLEGAL = re.compile(r"[^-/\w.]")


def tb_tag(name: str) -> str:
    """A TensorBoard-legal tag (letters, digits, `_`, `-`, `.`, `/`) for a metric name."""
    return _TB_ILLEGAL.sub("_", name)


class StepClock:
    """Training speed from post-compile step times, excluding paused time (evaluations).

    The first step a process runs compiles the train step (seconds to minutes), so the clock starts
    when it has finished (`warm`); a log interval that contains it is measured from there.
    `interval_rate` is the samples/s since the previous log; `eta` uses the average seconds per
    step since warm-up, over the steps still to run.
    """

    def __init__(self, start_step: int, clock: Callable[[], float] = time.perf_counter):
        self._clock = clock
        self._warm_step: Optional[int] = None
        self._warm_t = 0.0
        self._paused = 0.0  # total paused seconds since warm-up
        self._last_step, self._last_t, self._last_paused = start_step, None, 0.0

    def warm(self, step: int) -> None:
        """`step` (the first of this process, which compiled) has finished."""
        self._warm_step, self._warm_t = step, self._clock()
        self._last_step, self._last_t, self._last_paused = step, self._warm_t, self._paused

    @contextlib.contextmanager
    def paused(self):
        t0 = self._clock()
        try:
            yield
        finally:
            self._paused += self._clock() - t0

    def interval_rate(self, step: int, samples_per_step: int) -> Optional[float]:
        """Samples/s over the post-compile steps since the previous call; None if there were none."""
        now = self._clock()
        steps = step - self._last_step
        secs = now - (self._last_t if self._last_t is not None else now) - (self._paused - self._last_paused)
        self._last_step, self._last_t, self._last_paused = step, now, self._paused
        if self._warm_step is None or steps <= 0 or secs <= 0:
            return None
        return samples_per_step * steps / secs

    def seconds_per_step(self, step: int) -> Optional[float]:
        if self._warm_step is None or step <= self._warm_step:
            return None
        return max(self._clock() - self._warm_t - self._paused, 0.0) / (step - self._warm_step)

    def eta(self, step: int, total_steps: int) -> Optional[float]:
        """Seconds left to `total_steps` at the post-compile speed; None before any measurement."""
        sps = self.seconds_per_step(step)
        return None if sps is None else sps * max(total_steps - step, 0)


def format_eta(secs: float) -> str:
    secs = int(round(secs))
    h, m, s = secs // 3600, secs % 3600 // 60, secs % 60
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def _kept_lines(path: str, after_step: int) -> tuple[list[str], int]:
    """(lines of `path` with step <= after_step, number of lines dropped)."""
    if not fileio.exists(path):
        return [], 0
    kept, dropped = [], 0
    for line in fileio.read_text(path).splitlines(keepends=True):
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:  # a line cut by a kill mid-write
            dropped += 1
            continue
        if rec.get("step", -1) <= after_step:
            kept.append(line if line.endswith("\n") else line + "\n")
        else:
            dropped += 1
    return kept, dropped


def truncate_jsonl(path: str, after_step: int) -> int:
    """Keep only lines with step <= after_step; returns the number of lines dropped."""
    kept, dropped = _kept_lines(path, after_step)
    if fileio.exists(path):
        fileio.write_atomic(path, "".join(kept))
    return dropped


class _ObjectRecordFile:
    """A TensorBoard event file behind a URL: objects cannot be appended to, so each flush
    uploads the whole file again (as tensorboardX's own gs:// writer does)."""

    def __init__(self, path: str):
        self.path, self.buffer, self.dirty = path, bytearray(), False

    def write(self, data: bytes) -> None:
        self.buffer += data
        self.dirty = True

    def flush(self) -> None:
        if self.dirty:
            fileio.write_atomic(self.path, bytes(self.buffer))
            self.dirty = False

    def close(self) -> None:
        self.flush()


class _ObjectRecordFiles:  # tensorboardX's writer-factory interface, for one URL scheme
    def open(self, path: str) -> _ObjectRecordFile:
        return _ObjectRecordFile(path)

    def directory_check(self, path: str) -> None:
        fileio.makedirs(path)


class MetricsWriter:
    def __init__(self, workdir: str, *, enabled: bool = True, total_steps: Optional[int] = None,
                 resume_step: int = 0):
        self.enabled = enabled
        self.total_steps = total_steps
        self.path = fileio.join(workdir, "metrics.jsonl")
        self._tb = None
        # Behind a URL the lines are kept here and the whole file is uploaded at each flush
        # (before every checkpoint save) and at most UPLOAD_EVERY_S apart: objects cannot grow.
        self._lines: Optional[list[str]] = None
        self._uploaded = time.monotonic()
        if not enabled:
            return
        fileio.makedirs(workdir)
        from tensorboardX import SummaryWriter  # imported lazily: only the main process needs it
        if fileio.is_url(workdir):
            from tensorboardX import record_writer
            self._lines = _kept_lines(self.path, resume_step)[0]
            self.flush_lines()
            record_writer.register_writer_factory(fileio.scheme(workdir), _ObjectRecordFiles())
        else:
            truncate_jsonl(self.path, resume_step)
        # purge_step hides events at steps > resume_step left by an interrupted earlier run (also
        # when it died before its first checkpoint: resume_step 0).
        self._tb = SummaryWriter(fileio.join(workdir, "tb"), purge_step=resume_step + 1)

    def write(self, step: int, metrics: Mapping[str, object], *, kind: str = "train") -> dict:
        rec = {"step": int(step), "kind": kind}
        for k, v in metrics.items():
            rec[k] = v if isinstance(v, (str, list)) else _scalar(v)
        if not self.enabled:
            return rec
        if self._lines is not None:
            self._lines.append(json.dumps(rec) + "\n")
            if time.monotonic() - self._uploaded > UPLOAD_EVERY_S:
                self.flush_lines()
        else:
            with open(self.path, "a") as f:
                f.write(json.dumps(rec) + "\n")
        for k, v in rec.items():
            if k not in ("step", "kind") and isinstance(v, float) and math.isfinite(v):
                self._tb.add_scalar(tb_tag(f"{kind}/{k}"), v, int(step))
        return rec

    def progress(self, step: int, rec: Mapping[str, float], samples_per_step: int,
                 eta_s: Optional[float] = None) -> float:
        """One line: step/total, loss and its terms, lr, samples/s (post-compile), ETA (`eta_s`)."""
        rate = float(rec.get("samples_per_sec", float("nan")))
        eta = "" if eta_s is None or not self.total_steps else f" eta {format_eta(eta_s)}"
        speed = f" {rate:.1f} samples/s" if math.isfinite(rate) else " (compiling)"
        terms = " ".join(f"{k.split('/')[-1]}={rec[k]:.4f}" for k in sorted(rec) if k.startswith("loss/"))
        total = f"/{self.total_steps}" if self.total_steps else ""
        if self.enabled:
            print(f"step {step}{total} loss={rec.get('loss', float('nan')):.4f} {terms} "
                  f"lr={rec.get('lr', 0):.2e}{speed}{eta}", flush=True, file=sys.stdout)
        return rate

    def flush_lines(self) -> None:
        if self._lines is not None:
            fileio.write_atomic(self.path, "".join(self._lines))
            self._uploaded = time.monotonic()

    def flush(self) -> None:
        self.flush_lines()
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        self.flush_lines()
        if self._tb is not None:
            self._tb.close()
