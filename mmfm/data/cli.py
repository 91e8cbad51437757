"""`mmfm data prepare` and `mmfm tokenizer train` (argparse; logic lives in the library).

  mmfm data prepare --format wds --src '/corpus/{00000..00127}.tar' --name cc3m --data-dir /tfds
  mmfm data prepare --format jsonl --src pairs.jsonl --image-root images/ --name mine \
      --data-dir /tfds --test-fraction 0.01
  mmfm tokenizer train --input captions.txt --output tok.model --vocab-size 8000
  mmfm tokenizer train --input /tfds/wds/cc3m/1.0.0 --output tok.model   # a prepared dataset

Prepare prints TFDS's progress bars while writing, then the written and skipped counts by reason.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator, Sequence


def _prepare_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mmfm data prepare",
                                description="Prepare an image-text corpus as a TFDS dataset.")
    p.add_argument("--format", required=True, choices=("wds", "jsonl"))
    p.add_argument("--src", required=True,
                   help="tar shards (brace patterns allowed, '::' separated) or a jsonl file")
    p.add_argument("--name", required=True, help="dataset name (config.data.dataset)")
    p.add_argument("--data-dir", required=True, help="TFDS data dir (config.data.dir)")
    p.add_argument("--image-root", default="", help="jsonl: image folder (default: its folder)")
    p.add_argument("--test-fraction", type=float, default=0.01)
    p.add_argument("--max-pixels", type=int, default=64_000_000)
    p.add_argument("--min-side", type=int, default=1)
    p.add_argument("--max-caption-chars", type=int, default=4096)
    p.add_argument("--vocab-size", type=int, default=8000, help="the dataset's tokenizer")
    return p


def prepare_main(argv: Sequence[str]) -> int:
    from mmfm.data.builders.common import format_summary, prepare
    a = _prepare_parser().parse_args(argv)
    if not 0.0 <= a.test_fraction < 1.0:
        raise SystemExit(f"--test-fraction must be in [0, 1), got {a.test_fraction}")
    summary = prepare(a.format, src=a.src, name=a.name, data_dir=a.data_dir,
                      vocab_size=a.vocab_size, image_root=a.image_root,
                      test_fraction=a.test_fraction, max_pixels=a.max_pixels,
                      min_side=a.min_side, max_caption_chars=a.max_caption_chars)
    print(format_summary(summary))
    print(f"train with: --config.data.name={a.format} --config.data.dataset={a.name} "
          f"--config.data.dir={a.data_dir}")
    return 0


def data_main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] != "prepare":
        print("usage: mmfm data prepare --format wds|jsonl --src ... --name NAME --data-dir DIR",
              file=sys.stderr)
        return 2
    return prepare_main(argv[1:])


def iter_texts(path: str) -> Iterator[str]:
    """Captions from a text file (one per line), a jsonl file (caption/captions fields) or a
    prepared dataset directory (its train split's captions)."""
    if os.path.isdir(path):
        import tensorflow_datasets as tfds
        source = tfds.builder_from_directory(path).as_data_source(split="train")
        for i in range(len(source)):
            for c in source[i]["captions"]:
                yield c.decode("utf-8") if isinstance(c, bytes) else str(c)
        return
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--input not found: {path}")
    with open(path, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            if path.endswith(".jsonl"):
                try:
                    obj = json.loads(line)
                except ValueError as e:
                    raise ValueError(f"{path}:{lineno}: not JSON: {e}") from e
                captions = obj.get("captions") or [obj.get("caption")]
                yield from (c for c in captions if isinstance(c, str))
            else:
                yield line


def tokenizer_main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] != "train":
        print("usage: mmfm tokenizer train --input FILE|DIR --output tok.model", file=sys.stderr)
        return 2
    p = argparse.ArgumentParser(prog="mmfm tokenizer train",
                                description="Train a SentencePiece tokenizer on captions.")
    p.add_argument("--input", required=True, help=".txt (one caption a line), .jsonl or a "
                                                   "prepared dataset directory")
    p.add_argument("--output", required=True, help="where to write the .model file")
    p.add_argument("--vocab-size", type=int, default=8000)
    p.add_argument("--model-type", default="bpe", choices=("bpe", "unigram"))
    p.add_argument("--no-lowercase", action="store_true", help="keep case (default: fold)")
    a = p.parse_args(argv[1:])
    from mmfm.data.tokenizers import train_tokenizer
    tok = train_tokenizer(iter_texts(a.input), a.output, vocab_size=a.vocab_size,
                          lowercase=not a.no_lowercase, model_type=a.model_type)
    print(f"wrote {a.output}: {tok.vocab_size} ids (pad {tok.pad_id}, bos {tok.bos_id}, "
          f"eot {tok.eot_id}, mask {tok.mask_id})")
    return 0
