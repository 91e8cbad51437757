"""Metrics sinks: JSON lines, TensorBoard (tensorboardX, no TensorFlow) and a progress line.

Only the main process writes. After a resume, `truncate_after(step)` drops entries past the restored
step so every step appears exactly once in metrics.jsonl; TensorBoard readers use the newest event
for a step, and we purge them on resume with `purge_step`.
"""
from __future__ import annotations

import json
import math
import os
import sys
from typing import Mapping, Optional

import numpy as np


def _scalar(v) -> float:
    v = np.asarray(v)
    return float(v) if v.size == 1 else float(v.mean())


def truncate_jsonl(path: str, after_step: int) -> int:
    """Keep only lines with step <= after_step; returns the number of lines dropped."""
    if not os.path.exists(path):
        return 0
    kept, dropped = [], 0
    with open(path) as f:
        for line in f:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:  # a line cut by a kill mid-write
                dropped += 1
                continue
            if rec.get("step", -1) <= after_step:
                kept.append(line if line.endswith("\n") else line + "\n")
            else:
                dropped += 1
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.writelines(kept)
    os.replace(tmp, path)
    return dropped


class MetricsWriter:
    def __init__(self, workdir: str, *, enabled: bool = True, total_steps: Optional[int] = None,
                 resume_step: int = 0):
        self.enabled = enabled
        self.total_steps = total_steps
        self.path = os.path.join(workdir, "metrics.jsonl")
        self._tb = None
        if not enabled:
            return
        os.makedirs(workdir, exist_ok=True)
        truncate_jsonl(self.path, resume_step)
        from tensorboardX import SummaryWriter  # imported lazily: only the main process needs it
        # purge_step hides events at steps > resume_step left by an interrupted earlier run (also
        # when it died before its first checkpoint: resume_step 0).
        self._tb = SummaryWriter(os.path.join(workdir, "tb"), purge_step=resume_step + 1)

    def write(self, step: int, metrics: Mapping[str, object], *, kind: str = "train") -> dict:
        rec = {"step": int(step), "kind": kind}
        for k, v in metrics.items():
            rec[k] = v if isinstance(v, (str, list)) else _scalar(v)
        if not self.enabled:
            return rec
        with open(self.path, "a") as f:
            f.write(json.dumps(rec) + "\n")
        for k, v in rec.items():
            if k not in ("step", "kind") and isinstance(v, float) and math.isfinite(v):
                self._tb.add_scalar(f"{kind}/{k}", v, int(step))
        return rec

    def progress(self, step: int, rec: Mapping[str, float], samples_per_step: int) -> float:
        """One line: step/total, loss and its terms, lr, samples/s (the loop's), ETA."""
        rate = float(rec.get("samples_per_sec", float("nan")))
        eta = ""
        if self.total_steps and math.isfinite(rate) and rate > 0:
            secs = (self.total_steps - step) * samples_per_step / rate
            eta = f" eta {int(secs // 60)}m{int(secs % 60):02d}s"
        terms = " ".join(f"{k.split('/')[-1]}={rec[k]:.4f}" for k in sorted(rec) if k.startswith("loss/"))
        total = f"/{self.total_steps}" if self.total_steps else ""
        if self.enabled:
            print(f"step {step}{total} loss={rec.get('loss', float('nan')):.4f} {terms} "
                  f"lr={rec.get('lr', 0):.2e} {rate:.1f} samples/s{eta}", flush=True, file=sys.stdout)
        return rate

    def flush(self) -> None:
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
