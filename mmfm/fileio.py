"""Every file mmfm reads or writes goes through here: local paths or URLs (`gs://bucket/run`).

Local paths use the os module as before; URLs (gs://, s3://, ...) use `etils.epath`, which reaches
the bucket through TensorFlow's gfile when it is installed and else through fsspec (`gcsfs` for
gs://, the `mmfm[gcs]` extra). Paths stay strings, and URLs stay URLs: `absolute` never turns
`gs://b/run` into `/cwd/gs:/b/run`.

Atomicity: a local `write_atomic` writes a temporary file and renames it; an object store has no
rename, but one object upload is all-or-nothing (a reader sees the old object or the new one),
so a URL is written in place. Directory replacement (`replace_dir`) is atomic only locally.

File modes: `tempfile.mkstemp`/`mkdtemp` create private files (0600) and directories (0700), and
so does the safetensors writer; `honour_umask` gives them the mode a plain `open()`/
`os.makedirs` would have (0644/0755 under the usual umask 022).
"""
from __future__ import annotations

import builtins
import contextlib
import importlib
import importlib.util
import logging
import os
import posixpath
import re
import shutil
import tempfile
import threading
from typing import IO, Iterator

_LOCK = threading.Lock()
_URL = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")
# The URL schemes `etils.epath` opens, and the fsspec package each needs without TensorFlow.
_SCHEMES = {"gs": ("gcsfs", "gcs"), "s3": ("s3fs", None), "az": ("adlfs", None), "hf": (None, None)}


class MissingExtraError(ValueError):
    """A URL whose filesystem package is not installed (a user error: one line, exit 2)."""


def scheme(path) -> str | None:
    """"gs" for gs://b/x; None for a local path (file:// counts as local)."""
    m = _URL.match(os.fspath(path))
    return None if m is None or m.group(1).lower() == "file" else m.group(1).lower()


def is_url(path) -> bool:
    return scheme(path) is not None


def _local(path) -> str:
    p = os.fspath(path)
    return p[len("file://"):] if p.startswith("file://") else p


def epath_of(path):
    """The `etils.epath.Path` of a URL, after checking that its filesystem can be opened."""
    from etils import epath

    s = scheme(path)
    if s not in _SCHEMES:
        raise ValueError(f"{path}: unsupported URL scheme {s}:// (supported: "
                         f"{', '.join(k + '://' for k in _SCHEMES)} and local paths)")
    package, extra = _SCHEMES[s]
    if package and not importlib.util.find_spec("tensorflow"):  # else epath uses TF's gfile
        try:
            importlib.import_module(package)
        except ImportError:
            hint = f"pip install 'mmfm[{extra}]'" if extra else f"pip install {package}"
            raise MissingExtraError(f"{path}: {s}:// paths need the {package} package: "
                                    f"{hint}") from None
    if package and not _FSSPEC_CONFIGURED:
        _configure_fsspec()
    return epath.Path(os.fspath(path))


_FSSPEC_CONFIGURED = False


def _configure_fsspec() -> None:
    """No cached directory listings: Orbax's arrays are written by tensorstore, not through
    fsspec, so a listing cached before a save would hide the files the save wrote."""
    global _FSSPEC_CONFIGURED
    import fsspec.config

    for proto in ("gs", "gcs", "s3", "az", "abfs"):
        fsspec.config.conf.setdefault(proto, {}).setdefault("use_listings_cache", False)
    logging.getLogger("fsspec").setLevel(logging.WARNING)  # an INFO line per file opened
    _FSSPEC_CONFIGURED = True


def absolute(path) -> str:
    """A local path made absolute (`~` expanded); a URL unchanged but for a trailing '/'."""
    p = os.fspath(path)
    if is_url(p):
        return p.rstrip("/") if not p.endswith("://") else p
    return os.path.abspath(os.path.expanduser(_local(p)))


def join(base, *parts) -> str:
    return posixpath.join(os.fspath(base), *parts) if is_url(base) else os.path.join(base, *parts)


def dirname(path) -> str:
    p = os.fspath(path)
    return posixpath.dirname(p.rstrip("/")) if is_url(p) else os.path.dirname(p)


def basename(path) -> str:
    p = os.fspath(path)
    return posixpath.basename(p.rstrip("/")) if is_url(p) else os.path.basename(p)


# ----------------------------------------------------------------------------- queries

def exists(path) -> bool:
    return epath_of(path).exists() if is_url(path) else os.path.exists(_local(path))


def isdir(path) -> bool:
    return epath_of(path).is_dir() if is_url(path) else os.path.isdir(_local(path))


def isfile(path) -> bool:
    if is_url(path):
        p = epath_of(path)
        return p.exists() and not p.is_dir()
    return os.path.isfile(_local(path))


def listdir(path) -> list[str]:
    """Sorted entry names of a directory."""
    if is_url(path):
        return sorted(p.name for p in epath_of(path).iterdir())
    return sorted(os.listdir(_local(path)))


def walk(base) -> Iterator[tuple[str, list[str], list[str]]]:
    """`os.walk` for paths and URLs: (directory, subdirectory names, file names), top down."""
    if not is_url(base):
        yield from os.walk(_local(base))
        return
    if not isdir(base):
        return
    dirs, files = [], []
    for p in sorted(epath_of(base).iterdir()):  # one listing; epath's walk drops the scheme
        (dirs if p.is_dir() else files).append(p.name)
    yield absolute(base), dirs, files
    for d in dirs:
        yield from walk(join(base, d))


def find(base, name: str) -> list[str]:
    """Sorted paths of the files called `name` anywhere under `base` (none if it is missing)."""
    return sorted(join(root, name) for root, _, files in walk(base) if name in files)


def getsize(path) -> int:
    return epath_of(path).stat().length if is_url(path) else os.path.getsize(_local(path))


# ----------------------------------------------------------------------------- reading and writing

def open(path, mode: str = "r", **kwargs) -> IO:  # noqa: A001 - the builtin, for paths and URLs
    if not is_url(path):
        return builtins.open(_local(path), mode, **kwargs)
    if "a" in mode:  # objects are written whole: MetricsWriter rewrites its file instead
        raise ValueError(f"{path}: appending is not supported on {scheme(path)}:// URLs")
    return epath_of(path).open(mode, **kwargs)


def read_bytes(path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def read_text(path) -> str:
    with open(path, "r", encoding="utf-8") as f:
        return f.read()


def makedirs(path) -> None:
    if is_url(path):
        epath_of(path).mkdir(parents=True, exist_ok=True)
    else:
        os.makedirs(_local(path), exist_ok=True)


def write_atomic(path, data: bytes | str) -> None:
    """Writes `data` so that a reader sees either the old file or the whole new one."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    if is_url(path):
        with open(path, "wb") as f:  # one upload: all or nothing
            f.write(raw)
        return
    path = _local(path)
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=parent, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
        honour_umask(tmp)  # mkstemp creates it 0600
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def remove(path) -> None:
    epath_of(path).unlink() if is_url(path) else os.remove(_local(path))


def rmtree(path) -> None:
    if is_url(path):
        epath_of(path).rmtree()
    else:
        shutil.rmtree(_local(path))


def copy(src, dst) -> None:
    """Copies one file; either side may be a URL."""
    if not is_url(dst):
        os.makedirs(os.path.dirname(os.path.abspath(_local(dst))), exist_ok=True)
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        shutil.copyfileobj(fin, fout, 1 << 22)


def copytree(src: str, dst: str, *, last: tuple[str, ...] = ()) -> None:
    """Copies the local directory `src` into `dst` (a path or URL). Files named in `last`
    (relative paths) go after all others, so a reader that waits for them sees a whole tree."""
    rels = sorted(os.path.relpath(os.path.join(root, f), src)
                  for root, _, files in os.walk(src) for f in files)
    rels = [r for r in rels if r not in last] + [r for r in last if r in rels]
    for rel in rels:
        copy(os.path.join(src, rel), join(dst, *rel.split(os.sep)))


def move(src: str, dst: str) -> None:
    """Moves a file or directory. Local: a rename. URL: a copy, then the source is deleted."""
    if not (is_url(src) or is_url(dst)):
        shutil.move(_local(src), _local(dst))
        return
    if isdir(src):
        with staged(src) as local:
            copytree(local, dst)
        rmtree(src)
    else:
        copy(src, dst)
        remove(src)


@contextlib.contextmanager
def local_file(path) -> Iterator[str]:
    """A local copy of the file at `path` (the file itself when it is local), for readers that
    need a real file (safetensors' memory map, numpy's zip reader)."""
    if not is_url(path):
        yield _local(path)
        return
    with tempfile.TemporaryDirectory(prefix="mmfm-stage-") as tmp:
        local = os.path.join(tmp, basename(path))
        copy(path, local)
        yield local


@contextlib.contextmanager
def staged(path) -> Iterator[str]:
    """A local copy of the directory at `path` (the directory itself when it is local)."""
    if not is_url(path):
        yield _local(path)
        return
    with tempfile.TemporaryDirectory(prefix="mmfm-stage-") as tmp:
        top = absolute(path)
        for root, _, files in walk(top):
            rel = root[len(top):].lstrip("/")
            for f in files:
                copy(join(root, f), os.path.join(tmp, *rel.split("/"), f) if rel else os.path.join(tmp, f))
        yield tmp


# ----------------------------------------------------------------------------- file modes

def umask() -> int:
    """The process umask (reading it means setting it; the lock keeps that atomic here)."""
    with _LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def honour_umask(path: str) -> None:
    """chmod `path` to 0666 (files) or 0777 (directories, recursively their contents) minus the
    umask. Objects behind a URL have no modes: nothing to do."""
    if is_url(path):
        return
    mask = umask()
    if os.path.isdir(path):
        for root, dirs, files in os.walk(path):
            os.chmod(root, 0o777 & ~mask)
            for f in files:
                os.chmod(os.path.join(root, f), 0o666 & ~mask)
    else:
        os.chmod(path, 0o666 & ~mask)


def write_dir_atomic(out: str, write, *, prefix: str) -> str:
    """A local directory made by `write(tmp)` in a sibling temporary directory, then renamed over
    `out`: a reader sees the old directory or the whole new one, and a failure leaves nothing.
    Returns the absolute path."""
    out = os.path.abspath(out)
    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=prefix)
    try:
        write(tmp)
        honour_umask(tmp)  # mkdtemp and some writers (safetensors) make private (0700/0600) entries
        if os.path.exists(out):
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
