"""What a prepared corpus was built from, so a name is never silently reused for other data.

    fp = source_fingerprint("wds", "/corpus/{00000..00099}.tar")
    fp == {"files": 100, "sha256": "..."}
    check_same_source(summary, fp, ...)   # ValueError naming both sources unless they match

The fingerprint covers the source list: for webdataset shards the absolute path and size of each
shard (hashing terabytes of tars is not an option); for a jsonl file its absolute path and the
sha256 of its content (a few bytes per record, so cheap). Images referenced by a jsonl file are
not hashed: edit them in place and rebuild with `--overwrite`.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from typing import Any

from mmfm.data.builders.wds import expand_braces


def _file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def source_fingerprint(fmt: str, src: str) -> dict[str, Any]:
    """{"files": count, "sha256": digest of the source list}; missing files count as absent."""
    files = expand_braces(src) if fmt == "wds" else [src]
    entries = []
    for f in files:
        path = os.path.realpath(f)
        if not os.path.isfile(path):
            entries.append([path, None])
        elif fmt == "wds":
            entries.append([path, os.path.getsize(path)])
        else:
            entries.append([path, _file_sha256(path)])
    digest = hashlib.sha256(json.dumps(entries).encode()).hexdigest()
    return {"files": len(files), "sha256": digest}


def check_same_source(summary: Mapping[str, Any], fmt: str, name: str, src: str,
                      fingerprint: Mapping[str, Any], data_dir: str) -> None:
    """Raises ValueError when the prepared `summary` came from another source than `src`.

    Summaries written before fingerprints were recorded are compared by their `src` string.
    """
    old = summary.get("fingerprint")
    same = old == dict(fingerprint) if old else summary.get("src") == src
    if same:
        return
    files = f", {old['files']} file(s)" if old else ""
    raise ValueError(f"{fmt} dataset {name!r} in {data_dir} was prepared from another source "
                     f"(--src {summary.get('src')!r}{files}; now --src {src!r}, "
                     f"{fingerprint['files']} file(s), or the files changed): pass --overwrite "
                     f"to rebuild it, or choose another --name")
