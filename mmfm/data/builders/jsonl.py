"""Image-text pairs from a jsonl file plus an image folder.

Each line is `{"image": "relative/path.jpg", "caption": "..."}` or with `"captions": [...]`
(several captions per image, e.g. COCO-style); image paths are relative to `image_root` (default:
the jsonl file's folder). Paths that resolve outside `image_root` (absolute, `..`, symlinks out)
are skipped as `unsafe_path`.

    prepare("jsonl", src="/corpus/pairs.jsonl", name="mine", data_dir="/tfds",
            image_root="/corpus/images")
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterator

from mmfm.data.builders.common import ImageTextBuilder, ImageTextConfig, RawRecord, SkipCounter


def _resolve(root: str, relative: str) -> str | None:
    """The real path of `relative` under `root`, or None if it escapes `root`."""
    if os.path.isabs(relative):
        return None
    path = os.path.realpath(os.path.join(root, relative))
    return path if path.startswith(root + os.sep) else None


def parse_line(line: bytes, lineno: int, root: str, name: str = "") -> RawRecord:
    """One line (0-based `lineno`) of jsonl file `name`; `where` is `name:LINE image` (1-based)."""
    key, where = f"line{lineno:09d}", f"{name}:{lineno + 1}"
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:  # raw non-UTF-8 bytes, almost always inside the caption
        return RawRecord(key, error="non_utf8_caption", where=where)
    try:
        obj = json.loads(text)
    except ValueError:
        return RawRecord(key, error="bad_json", where=where)
    if not isinstance(obj, dict):
        return RawRecord(key, error="bad_json", where=where)
    relative = obj.get("image")
    if not isinstance(relative, str) or not relative:
        return RawRecord(key, error="missing_image", where=where)
    where = f"{where} {relative}"
    if "captions" in obj:
        captions = obj["captions"]
        captions = tuple(captions) if isinstance(captions, list) else (captions,)
    else:
        captions = (obj["caption"],) if obj.get("caption") is not None else ()
    path = _resolve(root, relative)
    if path is None:
        return RawRecord(key, error="unsafe_path", where=where)
    if not os.path.isfile(path):
        return RawRecord(key, error="missing_file", where=where)
    with open(path, "rb") as f:
        return RawRecord(key, image=f.read(), captions=captions, where=where)


def iter_jsonl(src: str, image_root: str = "") -> Iterator[RawRecord]:
    if not os.path.isfile(src):
        raise FileNotFoundError(f"jsonl file not found: --src {src!r}")
    root = os.path.realpath(image_root or os.path.dirname(os.path.abspath(src)))
    if not os.path.isdir(root):
        raise FileNotFoundError(f"image folder not found: --image-root {image_root!r}")
    with open(src, "rb") as f:
        for lineno, line in enumerate(f):
            if line.strip():
                yield parse_line(line.strip(), lineno, root, os.path.basename(src))


class JsonlImageText(ImageTextBuilder):
    """TFDS builder `jsonl`: configs are user dataset names (`jsonl/<name>`)."""
    name = "jsonl"

    def iter_raw(self, config: ImageTextConfig, counter: SkipCounter) -> Iterator[RawRecord]:
        del counter  # every problem here belongs to one line, hence to one record
        return iter_jsonl(config.src, config.image_root)
