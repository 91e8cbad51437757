"""Keeps TFDS's messages that do not apply to mmfm's locally generated data off the console.

- `download_and_prepare` prints "Downloading and preparing dataset Unknown size (download: Unknown
  size, ...)" and "... downloaded and prepared to ...": nothing is downloaded here. `prepare(builder)`
  swallows those two lines and logs one of its own instead.
- "Using custom data configuration" (every builder config of ours is custom) and "OpenCV is not
  installed ... Defaulting to PIL" (PIL is what mmfm decodes with, on purpose) are dropped from the
  absl logger, in every process that imports mmfm's data modules (grain workers too).
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import time

log = logging.getLogger("mmfm")

DROPPED = ("Using custom data configuration", "OpenCV is not installed")


class _DropTfdsNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.msg if isinstance(record.msg, str) else ""
        return not msg.startswith(DROPPED)


_FILTER = _DropTfdsNoise()


def install() -> None:
    """Adds the filter to the absl logger (TFDS logs through absl); idempotent."""
    absl_log = logging.getLogger("absl")
    if _FILTER not in absl_log.filters:
        absl_log.addFilter(_FILTER)


def prepare(builder, what: str = "") -> None:
    """`builder.download_and_prepare()` without TFDS's download banner; logs one line when it
    builds (nothing when the data are already there)."""
    install()
    built = os.path.isfile(os.path.join(os.fspath(builder.data_dir), "dataset_info.json"))
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        builder.download_and_prepare()  # TFDS skips this when the version directory is complete
    if built:
        return
    log.info("prepared %s in %s (%.0f s)", what or builder.info.full_name, builder.data_dir,
             time.perf_counter() - t0)


install()
