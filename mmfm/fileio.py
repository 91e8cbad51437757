"""File modes: what mmfm writes honours the user's umask, like any file `open()` creates.

`tempfile.mkstemp`/`mkdtemp` (used for write-then-rename) create private files (0600) and
directories (0700), and so does the safetensors writer; `honour_umask` gives them the mode a plain
`open()`/`os.makedirs` would have (0644/0755 under the usual umask 022).
"""
from __future__ import annotations

import os
import threading

_LOCK = threading.Lock()


def umask() -> int:
    """The process umask (reading it means setting it; the lock keeps that atomic here)."""
    with _LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def honour_umask(path: str) -> None:
    """chmod `path` to 0666 (files) or 0777 (directories, recursively their contents) minus the umask."""
    mask = umask()
    if os.path.isdir(path):
        for root, dirs, files in os.walk(path):
            os.chmod(root, 0o777 & ~mask)
            for f in files:
                os.chmod(os.path.join(root, f), 0o666 & ~mask)
    else:
        os.chmod(path, 0o666 & ~mask)
