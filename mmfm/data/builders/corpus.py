"""`prepare`: a user corpus (webdataset tar shards or jsonl + images) -> a TFDS dataset + tokenizer.

    summary = prepare("wds", src="/corpus/{00000..00099}.tar", name="laion_sub", data_dir="/tfds")
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import tempfile
from collections.abc import Mapping
from typing import Any

import tensorflow_datasets as tfds

from mmfm import fileio
from mmfm.data.builders import jsonl, wds
from mmfm.data.builders.common import (SKIPPED_FILE, SUMMARY_FILE, VERSION, ImageTextBuilder,
                                       ImageTextConfig, SkipCounter, dataset_dir, read_summary)
from mmfm.data.builders.fingerprint import check_same_source, source_fingerprint
from mmfm.data import quiet
from mmfm.data.tokenizers import train_tokenizer


SMALL_SPLIT = 100  # evals on fewer examples warn (mmfm.evals.evaluators)


def builder_class(fmt: str) -> type[ImageTextBuilder]:
    classes = {"wds": wds.WdsImageText, "jsonl": jsonl.JsonlImageText}
    if fmt not in classes:
        raise ValueError(f"unknown corpus format {fmt!r}; valid: {sorted(classes)}")
    return classes[fmt]


def prepare(fmt: str, *, src: str, name: str, data_dir: str, vocab_size: int = 8000,
            overwrite: bool = False, **options: Any) -> dict[str, Any]:
    """Builds `data_dir/<fmt>/<name>/` from `src` unless already there; returns the summary.

    Also trains the dataset's SentencePiece tokenizer (`tokenizer.model` beside the data, at most
    `vocab_size` pieces) on up to 200k train captions.
    An existing dataset of that name is reused only if it was prepared from the same source (see
    `fingerprint`); otherwise ValueError, unless `overwrite`, which deletes and rebuilds it.
    Reused with other options, the summary says so under `options_differ`.
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
    src, data_dir = os.fspath(src), os.fspath(data_dir)
    fp = source_fingerprint(fmt, src)
    out_dir = dataset_dir(data_dir, fmt, name)
    if fileio.isfile(fileio.join(out_dir, SUMMARY_FILE)) and not overwrite:
        summary = read_summary(data_dir, fmt, name)
        check_same_source(summary, fmt, name, src, fp, data_dir)
        asked = {k: getattr(ImageTextConfig(name=name, **options), k) for k in sorted(valid)}
        differ = {k: [summary["options"].get(k), v] for k, v in asked.items()
                  if summary.get("options", {}).get(k) != v}
        return dict(summary, reused=True, **({"options_differ": differ} if differ else {}))
    if fileio.isdir(fileio.dirname(out_dir)):  # --overwrite, or a build that died half-way
        fileio.rmtree(fileio.dirname(out_dir))
    if not fileio.is_url(data_dir):
        return _prepare_here(fmt, src, name, data_dir, vocab_size, fp, valid, options)
    # TFDS writes ArrayRecord files through local file handles only: build in a local staging
    # directory, then upload, the summary last (it is what marks a prepared dataset).
    with tempfile.TemporaryDirectory(prefix="mmfm-prepare-") as local:
        summary = _prepare_here(fmt, src, name, local, vocab_size, fp, valid, options)
        fileio.copytree(os.path.join(local, fmt, name), fileio.join(data_dir, fmt, name),
                        last=(os.path.join(VERSION, "dataset_info.json"),
                              os.path.join(VERSION, SUMMARY_FILE)))
    return summary


def _prepare_here(fmt: str, src: str, name: str, data_dir: str, vocab_size: int, fp: dict,
                  valid: set, options: Mapping[str, Any]) -> dict[str, Any]:
    """`prepare` into a local `data_dir`."""
    out_dir = dataset_dir(data_dir, fmt, name)
    summary_path = os.path.join(out_dir, SUMMARY_FILE)
    builder = _build(fmt, name, src, data_dir, options)
    train_tokenizer(builder.caption_sample, os.path.join(out_dir, "tokenizer.model"),
                    vocab_size=vocab_size)
    asked = ImageTextConfig(name=name, **options)  # a train-only rebuild still records these
    summary = {"format": fmt, "name": name, "src": src, "fingerprint": fp,
               "options": {k: getattr(asked, k) for k in sorted(valid)},
               "splits": {s: builder.counters[s].to_dict() for s in ("train", "test")
                          if s in builder.counters}}
    if builder.test_fallback:
        summary["test_fallback"] = builder.test_fallback
    if builder.no_test_reason:
        summary["no_test_split"] = builder.no_test_reason
    total = SkipCounter()
    for c in builder.counters.values():
        total.update(c)
    summary["total"] = total.to_dict()
    os.replace(builder.skipped_tmp, os.path.join(out_dir, SKIPPED_FILE))
    fileio.write_atomic(summary_path, json.dumps(summary, indent=1))
    return summary


class _NoTestSplit(Exception):
    """The corpus cannot spare a test record: build it again with train only."""


def _build(fmt: str, name: str, src: str, data_dir: str,
           options: Mapping[str, Any]) -> ImageTextBuilder:
    """The built dataset; a corpus too small for a test split is built again without one (the
    builder's `no_test_reason` says why)."""
    try:
        return _run_builder(fmt, name, src, data_dir, options)
    except _NoTestSplit as e:
        builder = _run_builder(fmt, name, src, data_dir, dict(options, test_fraction=0.0))
        builder.no_test_reason = str(e)
        return builder


def _run_builder(fmt: str, name: str, src: str, data_dir: str,
                 options: Mapping[str, Any]) -> ImageTextBuilder:
    """Runs the TFDS builder; every skipped record goes to `builder.skipped_tmp` (jsonl)."""
    config = ImageTextConfig(name=name, src=src, description=f"{fmt} corpus {src}", **options)
    builder = builder_class(fmt)(config=config, data_dir=os.fspath(data_dir))
    parent = os.path.dirname(dataset_dir(data_dir, fmt, name))
    os.makedirs(parent, exist_ok=True)
    builder.skipped_tmp = os.path.join(parent, f"{SKIPPED_FILE}.tmp{os.getpid()}")
    with open(builder.skipped_tmp, "w", encoding="utf-8") as log:
        builder.skip_log = lambda split, reason, where, detail: log.write(json.dumps(
            {"split": split, "reason": reason, "where": where, "detail": detail[:300]},
            ensure_ascii=False) + "\n")
        try:
            quiet.prepare(builder, f"{fmt} corpus {name!r}")
        except AssertionError as e:  # TFDS refuses to write an empty split
            if builder.no_test_reason is not None and builder.usable:
                raise _NoTestSplit(builder.no_test_reason) from e
            counts = SkipCounter()
            for c in [*builder.counters.values(), builder.fallback_skips]:
                counts.update(c)
            if not counts.written:
                raise ValueError(f"{fmt} dataset {name!r} from {src!r}: no usable record "
                                 f"(skipped by reason: {dict(counts.skipped)}); check --src "
                                 f"and the skip reasons") from e
            written = {s: c.written for s, c in builder.counters.items()}
            raise ValueError(f"{fmt} dataset {name!r} from {src!r}: the train split got no "
                             f"records (written: {written}); lower --test-fraction") from e
    return builder


def _where_list(examples: list[str], count: int) -> str:
    more = f", ... {count - len(examples)} more" if count > len(examples) else ""
    return "; ".join(examples) + more


def format_summary(summary: Mapping[str, Any], *, data_dir: str | None = None) -> str:
    """A short table: written, then skipped (with the first records of each reason) and
    converted counts by reason, and notes on the test split and reuse."""
    total = summary["total"]
    per_split = ", ".join(f"{s} {c['written']}" for s, c in summary["splits"].items())
    lines = [f"{summary['format']} dataset {summary['name']!r}: written {total['written']} "
             f"({per_split}), skipped {sum(total['skipped'].values())}"]
    examples = total.get("examples", {})
    for reason, count in total["skipped"].items():
        lines.append(f"  {'skipped':<9} {reason:<28} {count:>8}")
        if examples.get(reason):
            lines.append(f"            e.g. {_where_list(examples[reason], count)}")
    for reason, count in total["converted"].items():
        lines.append(f"  {'converted':<9} {reason:<28} {count:>8}")
    if total["skipped"] and data_dir is not None:
        path = fileio.join(dataset_dir(data_dir, summary["format"], summary["name"]),
                           SKIPPED_FILE)
        lines.append(f"every skipped record: {fileio.absolute(path)}")
    if summary.get("no_test_split"):
        lines.append(f"no test split: {summary['no_test_split']}; evaluations use the train "
                     f"split")
    elif summary.get("test_fallback"):
        lines.append(f"test split: no record hashed into --test-fraction "
                     f"{summary['options']['test_fraction']}, so one record "
                     f"({summary['test_fallback']['where']}) was moved there")
    test = summary["splits"].get("test", {}).get("written")
    if test is not None and test < SMALL_SPLIT:
        lines.append(f"warning: the test split has only {test} record(s): metrics on it are "
                     f"noise (under {SMALL_SPLIT})")
    if summary.get("reused"):
        lines.append("reused the dataset already prepared from this source")
        for k, (old, new) in summary.get("options_differ", {}).items():
            lines.append(f"  note: it was prepared with {k}={old!r}, not {new!r}; pass "
                         f"--overwrite to rebuild with the options given now")
    return "\n".join(lines)
