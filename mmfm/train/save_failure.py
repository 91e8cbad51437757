"""A failed checkpoint save, told in one line: which step, where, why, and what is still good.

Orbax reports a failed asynchronous save from its writer threads, as pages of tracebacks, and
re-raises it later wherever the main thread next waits. `checkpoint.Checkpointer` turns that into
one `CheckpointSaveError` and keeps the writer threads' noise off the console (`QuietSaveFailure`);
the CLI prints its message and exits with `CheckpointSaveError.exit_code`.
"""
from __future__ import annotations

import errno
import logging
import os
import re
import sys
import threading
from typing import Optional


class CheckpointSaveError(OSError):
    """A checkpoint could not be written; `str()` is the one line to show the user."""

    exit_code = 74  # EX_IOERR (sysexits.h): distinct from 1 (an ordinary error)

    def __init__(self, step: int, path: str, cause: str, last_good: Optional[str]):
        self.step, self.path, self.cause, self.last_good = step, path, cause, last_good
        resume = (f"the last good checkpoint is {last_good}; free the space or fix the permission "
                  f"and rerun the same command to resume from it" if last_good else
                  "there is no earlier checkpoint; a rerun starts from the beginning")
        super().__init__(f"mmfm: saving the checkpoint of step {step} to {path} failed: {cause}; "
                         f"{resume}")


DISK_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO)
_OS_ERROR = re.compile(r"\[OS error (\d+)|\[Errno (\d+)\]|os_error_code='(\d+)'|errno[ =:]+(\d+)",
                       re.IGNORECASE)


class QuietSaveFailure:
    """While a Checkpointer is open: a failed async save is reported once, by CheckpointSaveError.

    Without this, one failed save prints hundreds of lines: orbax logs each failed write thread's
    traceback (absl ERROR records), and tensorstore writes that complete after orbax closed the
    save's event loop each print "RuntimeError: Event loop is closed" through sys.unraisablehook.
    On the same full disk a logging thread (TensorBoard's event writer) may fail too: that
    becomes one warning line instead of a traceback. Everything else passes through.
    """

    def __init__(self):
        self._hook, self._thread_hook = sys.unraisablehook, threading.excepthook
        sys.unraisablehook, threading.excepthook = self._unraisable, self._thread_exception
        logging.getLogger("absl").addFilter(self)

    def filter(self, record: logging.LogRecord) -> bool:
        orbax = f"{os.sep}orbax{os.sep}" in record.pathname
        return not (orbax and record.levelno >= logging.ERROR)

    def _unraisable(self, u) -> None:
        stray = isinstance(u.exc_value, RuntimeError) and "Event loop is closed" in str(u.exc_value)
        if not stray:
            self._hook(u)

    def _thread_exception(self, args) -> None:
        e = args.exc_value
        if isinstance(e, OSError) and e.errno in DISK_ERRORS:
            name = args.thread.name if args.thread is not None else "a thread"
            logging.getLogger("mmfm").warning("%s could not write: %s", name, failure_cause(e))
        else:
            self._thread_hook(args)

    def remove(self) -> None:
        logging.getLogger("absl").removeFilter(self)
        if sys.unraisablehook == self._unraisable:
            sys.unraisablehook = self._hook
        if threading.excepthook == self._thread_exception:
            threading.excepthook = self._thread_hook


def _os_reason(code: int) -> str:
    return f"{os.strerror(code)} (errno {errno.errorcode.get(code, code)})"


def failure_cause(exc: BaseException) -> str:
    """Why a save failed, e.g. "No space left on device (errno ENOSPC)": the first OSError in the
    exception chain, else an OS error code in a message (tensorstore's errors arrive as
    ValueError text), else the innermost exception's first line."""
    chain = [exc]
    while (nxt := chain[-1].__cause__ or chain[-1].__context__) is not None and nxt not in chain:
        chain.append(nxt)
    for e in chain:
        if isinstance(e, OSError) and e.errno:
            return _os_reason(e.errno)
    for e in chain:
        if m := _OS_ERROR.search(str(e)):
            return _os_reason(int(next(g for g in m.groups() if g)))
    lines = str(chain[-1]).strip().splitlines()
    return f"{type(chain[-1]).__name__}: {lines[0][:300] if lines else ''}"
