"""`prepare`: a user corpus (webdataset tar shards or jsonl + images) -> a TFDS dataset + tokenizer.

    summary = prepare("wds", src="/corpus/{00000..00099}.tar", name="laion_sub", data_dir="/tfds")
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Mapping
from typing import Any

import tensorflow_datasets as tfds

from mmfm.data.builders import jsonl, wds
from mmfm.data.builders.common import (SUMMARY_FILE, ImageTextBuilder, ImageTextConfig, SkipCounter,
                                       dataset_dir, read_summary)
from mmfm.data import quiet
from mmfm.data.tokenizers import train_tokenizer


def builder_class(fmt: str) -> type[ImageTextBuilder]:
    classes = {"wds": wds.WdsImageText, "jsonl": jsonl.JsonlImageText}
    if fmt not in classes:
        raise ValueError(f"unknown corpus format {fmt!r}; valid: {sorted(classes)}")
    return classes[fmt]


def prepare(fmt: str, *, src: str, name: str, data_dir: str, vocab_size: int = 8000,
            **options: Any) -> dict[str, Any]:
    """Builds `data_dir/<fmt>/<name>/` from `src` unless already there; returns the summary.

    Also trains the dataset's SentencePiece tokenizer (`tokenizer.model` beside the data, at most
    `vocab_size` pieces) on up to 200k train captions.
    options: ImageTextConfig fields (image_root, test_fraction, max_pixels, min_side,
    max_caption_chars, max_member_bytes).
    """
    if not re.fullmatch(r"[a-z0-9_]+", name or ""):
        raise ValueError(f"dataset name {name!r} must be lower-case letters, digits and '_' "
                         f"(it becomes a directory and a TFDS config name)")
    valid = {f.name for f in dataclasses.fields(ImageTextConfig)} - {
        f.name for f in dataclasses.fields(tfds.core.BuilderConfig)} - {"src"}
    unknown = set(options) - valid
    if unknown:
        raise ValueError(f"unknown prepare options {sorted(unknown)}; valid: {sorted(valid)}")
    summary_path = os.path.join(dataset_dir(data_dir, fmt, name), SUMMARY_FILE)
    if os.path.isfile(summary_path):
        return read_summary(data_dir, fmt, name)
    cls = builder_class(fmt)
    config = ImageTextConfig(name=name, src=os.fspath(src), description=f"{fmt} corpus {src}",
                             **options)
    builder = cls(config=config, data_dir=os.fspath(data_dir))
    try:
        quiet.prepare(builder, f"{fmt} corpus {name!r}")
    except AssertionError as e:  # TFDS refuses to write an empty split
        counts = {s: c.to_dict() for s, c in builder.counters.items()}
        raise ValueError(f"{fmt} dataset {name!r} from {src!r}: a split got no valid records "
                         f"(counts so far: {counts}); check --src, or use test_fraction=0 for "
                         f"a tiny corpus") from e
    train_tokenizer(builder.caption_sample, os.path.join(dataset_dir(data_dir, fmt, name),
                                                         "tokenizer.model"), vocab_size=vocab_size)
    summary = {"format": fmt, "name": name, "src": config.src,
               "options": {k: getattr(config, k) for k in sorted(valid)},
               "splits": {s: c.to_dict() for s, c in builder.counters.items()}}
    total = SkipCounter()
    for c in builder.counters.values():
        total.written += c.written
        total.skipped.update(c.skipped)
        total.converted.update(c.converted)
    summary["total"] = total.to_dict()
    tmp = summary_path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(summary, f, indent=1)
    os.replace(tmp, summary_path)
    return summary


def format_summary(summary: Mapping[str, Any]) -> str:
    """A short table: written, then skipped and converted counts by reason."""
    total = summary["total"]
    per_split = ", ".join(f"{s} {c['written']}" for s, c in summary["splits"].items())
    lines = [f"{summary['format']} dataset {summary['name']!r}: written {total['written']} "
             f"({per_split}), skipped {sum(total['skipped'].values())}"]
    for kind in ("skipped", "converted"):
        for reason, count in total[kind].items():
            lines.append(f"  {kind:<9} {reason:<28} {count:>8}")
    return "\n".join(lines)
