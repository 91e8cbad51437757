"""TFDS builders for user image-text corpora (webdataset tar shards, jsonl + image folders).

    from mmfm.data.builders import prepare
    summary = prepare("wds", src="/corpus/{00000..00099}.tar", name="laion_sub", data_dir="/tfds")

Both builders store ArrayRecord files without TensorFlow, validate every record
(`builders.common`) and count skipped records by reason in `prepare_summary.json`.
"""
from mmfm.data.builders.common import (CONVERTED_PREFIX, REASONS, RecordError, SkipCounter,
                                       clean_caption, decode_image, read_summary)
from mmfm.data.builders.corpus import format_summary, prepare

__all__ = ["CONVERTED_PREFIX", "REASONS", "RecordError", "SkipCounter", "clean_caption",
           "decode_image", "format_summary", "prepare", "read_summary"]
