"""Image-text pairs from webdataset tar shards, as img2dataset writes them.

A shard holds members `KEY.jpg|jpeg|png|webp`, `KEY.txt` and optionally `KEY.json` (whose
"caption" is used when there is no .txt). Members of one key are consecutive; the key is the member
path up to the first dot of its file name (the webdataset convention).

    prepare("wds", src="/corpus/{00000..00127}.tar", name="cc3m", data_dir="/tfds")

Shards are read as streams and never extracted: a member named `/etc/x` or `../x` is skipped and
counted (`unsafe_path`), so nothing is ever written outside the data dir. A truncated shard keeps
every record read before the damage, drops the incomplete one and counts `truncated_shard`.
"""
from __future__ import annotations

import itertools
import json
import os
import posixpath
import re
import tarfile
import zlib
from collections.abc import Iterator

from mmfm.data.builders.common import ImageTextBuilder, ImageTextConfig, RawRecord, SkipCounter

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
WANTED_EXTS = IMAGE_EXTS + ("txt", "json")
_RANGE = re.compile(r"^(-?\d+)\.\.(-?\d+)$")


def expand_braces(pattern: str) -> list[str]:
    """Shell-style brace expansion: `a{000..002}.tar` -> a000.tar a001.tar a002.tar, `{x,y}` -> x y.

    Numeric ranges keep the zero padding of their first bound; groups may repeat and nest.
    `::` separates several patterns (as in webdataset URLs).
    """
    if "::" in pattern:
        return [p for part in pattern.split("::") for p in expand_braces(part)]
    depth, start = 0, None
    for i, ch in enumerate(pattern):
        if ch == "{":
            if depth == 0:
                start = i
            depth += 1
        elif ch == "}" and depth:
            depth -= 1
            if depth == 0:
                inner, head, tail = pattern[start + 1:i], pattern[:start], pattern[i + 1:]
                m = _RANGE.match(inner)
                if m:
                    lo, hi = int(m.group(1)), int(m.group(2))
                    width = len(m.group(1)) if m.group(1).startswith("0") else 0
                    step = 1 if hi >= lo else -1
                    options = [str(v).zfill(width) for v in range(lo, hi + step, step)]
                else:
                    options = _split_top_level(inner)
                return [head + o + t for o in options
                        for t in expand_braces(tail)] if options else [pattern]
    if depth:
        raise ValueError(f"unbalanced '{{' in shard pattern {pattern!r}")
    return [pattern]


def _split_top_level(inner: str) -> list[str]:
    parts, depth, cur = [], 0, ""
    for ch in inner:
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
            continue
        depth += ch == "{"
        depth -= ch == "}"
        cur += ch
    parts.append(cur)
    return list(itertools.chain.from_iterable(expand_braces(p) for p in parts))


def is_unsafe_member(name: str) -> bool:
    """Absolute paths, drive letters, backslashes and any `..` component are unsafe."""
    parts = name.replace("\\", "/").split("/")
    return name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name) is not None \
        or ".." in parts


def iter_shard(path: str, counter: SkipCounter,
               max_member_bytes: int) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {ext: bytes}) groups of one shard, in order; damage is counted, never raised."""
    try:
        tar = tarfile.open(path, mode="r|*")  # a stream: never seeks, never extracts
    except (OSError, tarfile.TarError, EOFError, zlib.error):
        counter.skip("unreadable_shard", path)
        return
    shard = os.path.basename(path)
    key, group = None, {}
    try:
        for member in tar:
            if not member.isfile():
                continue
            if is_unsafe_member(member.name):
                counter.skip("unsafe_path", f"{path}:{member.name}")
                continue
            folder, base = posixpath.split(member.name)
            stem, _, ext = base.partition(".")
            ext = ext.lower()
            if ext not in WANTED_EXTS:
                continue
            if member.size > max_member_bytes:
                counter.skip("member_too_large", f"{path}:{member.name}")
                continue
            member_key = f"{shard}/{posixpath.join(folder, stem)}"
            if member_key != key:  # the previous group is complete: hand it out before reading on
                if key is not None:
                    yield key, group
                key, group = member_key, {}
            group[ext] = tar.extractfile(member).read()
    except (OSError, tarfile.TarError, EOFError, zlib.error):
        # the group being read may be incomplete: drop it
        counter.skip("truncated_shard", f"{path} (after {key})" if key else path)
        return
    finally:
        tar.close()
    if key is not None:
        yield key, group


def group_to_record(key: str, group: dict[str, bytes], where: str = "") -> RawRecord:
    image = next((group[e] for e in IMAGE_EXTS if e in group), None)
    captions = (group["txt"],) if "txt" in group else ()
    if not captions and "json" in group:
        try:
            meta = json.loads(group["json"])
            if isinstance(meta, dict) and meta.get("caption") is not None:
                captions = (meta["caption"],)
        except (ValueError, UnicodeDecodeError):
            pass  # metadata is optional: a bad .json only matters when it is the caption source
    if image is None:
        return RawRecord(key, error="missing_image", where=where)
    return RawRecord(key, image=image, captions=captions, where=where)


def iter_wds(src: str, counter: SkipCounter, max_member_bytes: int) -> Iterator[RawRecord]:
    shards = expand_braces(src)
    missing = [s for s in shards if not os.path.isfile(s)]
    if missing:
        raise FileNotFoundError(f"{len(missing)} of {len(shards)} shards from --src {src!r} do "
                                f"not exist, e.g. {missing[:3]}")
    for shard in shards:
        for key, group in iter_shard(shard, counter, max_member_bytes):
            # key = "<shard name>/<member stem>": name the shard by its full path for a person
            yield group_to_record(key, group, os.path.join(os.path.dirname(shard), key))


class WdsImageText(ImageTextBuilder):
    """TFDS builder `wds`: configs are user dataset names (`wds/<name>`)."""
    name = "wds"

    def iter_raw(self, config: ImageTextConfig, counter: SkipCounter) -> Iterator[RawRecord]:
        return iter_wds(config.src, counter, config.max_member_bytes)
