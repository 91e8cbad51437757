"""Record validation and the shared TFDS builder for user image-text corpora.

Every record goes through `decode_image` and `clean_caption`. Convertible inputs are converted
(grayscale, CMYK, palette/RGBA with transparency composited on white, 16-bit scaled to 8-bit) and
counted under `converted/<mode>`; the rest raise `RecordError(reason)` and are skipped and counted.

    summary = prepare("jsonl", src="pairs.jsonl", name="mine", data_dir="/tfds")
    summary["splits"]["train"] == {"written": 980, "skipped": {"empty_caption": 3, ...},
                                   "converted": {"converted/CMYK": 2}}

The prepared dataset lives in `data_dir/<format>/<name>/1.0.0/` (ArrayRecord, no TensorFlow), with
`prepare_summary.json` and `skipped.jsonl` (every skipped record: split, reason, where, detail)
beside it. Records go to `test` when a hash of their key falls under `test_fraction`, so the split
is stable however the shards are ordered. A corpus too small for any key to fall under it still
gets a test record (the usable one of lowest hash, `test_fallback` in the summary) when it has two
or more usable records; with fewer, `prepare` writes no test split and says so (`no_test_split`).
"""
from __future__ import annotations

import collections
import dataclasses
import io
import json
import os
import re
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from PIL import Image

from mmfm import fileio

# Skip reasons (a record counts once, under the first problem found).
REASONS = (
    "empty_image", "undecodable_image", "truncated_image", "decode_error", "image_too_large",
    "image_too_small", "missing_image", "missing_caption", "empty_caption", "caption_too_long",
    "non_utf8_caption", "bad_json", "missing_file", "unsafe_path", "member_too_large",
    "truncated_shard", "unreadable_shard")
CONVERTED_PREFIX = "converted/"
SUMMARY_FILE = "prepare_summary.json"
VERSION = "1.0.0"
SKIPPED_FILE = "skipped.jsonl"
MAX_TOKENIZER_CAPTIONS = 200_000
SKIP_EXAMPLES = 3  # skipped records named per reason in the summary (all are in SKIPPED_FILE)


class RecordError(ValueError):
    """A record that cannot be used; `reason` is one of `REASONS`."""

    def __init__(self, reason: str, detail: str = ""):
        if reason not in REASONS:
            raise ValueError(f"unknown skip reason {reason!r}; valid: {REASONS}")
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


class SkipCounter:
    """Written/skipped/converted counts of one split, plus where the first skips of each reason
    were; `log(reason, where, detail)` (optional) sees every skip."""

    def __init__(self, log: Callable[[str, str, str], None] | None = None):
        self.written = 0
        self.skipped: collections.Counter = collections.Counter()
        self.converted: collections.Counter = collections.Counter()
        self.examples: dict[str, list[str]] = {}
        self.log = log

    def skip(self, reason: str, where: str = "", detail: str = "") -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown skip reason {reason!r}; valid: {REASONS}")
        self.skipped[reason] += 1
        seen = self.examples.setdefault(reason, [])
        if where and len(seen) < SKIP_EXAMPLES:
            seen.append(where)
        if self.log is not None:
            self.log(reason, where, detail)

    def update(self, other: "SkipCounter") -> None:
        self.written += other.written
        self.skipped.update(other.skipped)
        self.converted.update(other.converted)
        for reason, where in other.examples.items():
            mine = self.examples.setdefault(reason, [])
            mine.extend(where[:SKIP_EXAMPLES - len(mine)])

    def to_dict(self) -> dict[str, Any]:
        return {"written": self.written, "skipped": dict(sorted(self.skipped.items())),
                "converted": dict(sorted(self.converted.items())),
                "examples": dict(sorted(self.examples.items()))}


# ----------------------------------------------------------------------------- validation

def _to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB: 16/32-bit gray scaled to 8 bits, transparency composited on white."""
    mode = img.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        arr = np.asarray(img).astype(np.float64)
        # 16-bit data (I;16*, or I as PIL opens 16-bit PNGs) spans 0..65535.
        arr = arr / 257.0 if mode != "F" else arr
        return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8)).convert("RGB")
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


def decode_image(data: bytes, *, max_pixels: int = 64_000_000,
                 min_side: int = 1) -> tuple[bytes, str | None]:
    """Validates encoded image bytes; returns (RGB JPEG/PNG bytes, converted-from mode or None).

    Original bytes are kept when they already are an RGB JPEG or PNG (no re-encoding loss);
    anything else is converted to RGB and re-encoded (JPEG q95 for JPEG sources, else PNG).
    The pixel count is checked from the header before decoding (decompression-bomb guard).
    Raises RecordError with reason empty_image, undecodable_image, image_too_large,
    image_too_small, truncated_image or decode_error.
    """
    if not data:
        raise RecordError("empty_image")
    try:
        img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:  # PIL's own limit (2 x MAX_IMAGE_PIXELS)
        raise RecordError("image_too_large", str(e)) from e
    except Exception as e:  # PIL raises many types for garbage
        raise RecordError("undecodable_image", str(e)) from e
    w, h = img.size
    if w * h > max_pixels:
        raise RecordError("image_too_large", f"{w}x{h} > max_pixels={max_pixels}")
    if min(w, h) < min_side:
        raise RecordError("image_too_small", f"{w}x{h} < min_side={min_side}")
    fmt = img.format
    try:
        img.load()
    except OSError as e:
        reason = "truncated_image" if "truncated" in str(e) else "decode_error"
        raise RecordError(reason, str(e)) from e
    except Exception as e:
        raise RecordError("decode_error", str(e)) from e
    if img.mode == "RGB" and fmt in ("JPEG", "PNG") and "transparency" not in img.info:
        return bytes(data), None
    rgb, buf = _to_rgb(img), io.BytesIO()
    if fmt == "JPEG":
        rgb.save(buf, format="JPEG", quality=95)
    else:
        rgb.save(buf, format="PNG")
    return buf.getvalue(), img.mode


def clean_caption(value: Any, *, max_chars: int = 4096) -> str:
    """Caption bytes/str -> stripped str with whitespace runs collapsed.

    Raises RecordError: missing_caption (None / not text), non_utf8_caption (invalid UTF-8 bytes or
    lone surrogates from JSON escapes), empty_caption, caption_too_long (> max_chars).
    """
    if value is None or not isinstance(value, (str, bytes, bytearray)):
        raise RecordError("missing_caption", f"got {type(value).__name__}")
    if isinstance(value, (bytes, bytearray)):
        try:
            value = bytes(value).decode("utf-8")
        except UnicodeDecodeError as e:
            raise RecordError("non_utf8_caption", str(e)) from e
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:  # "\ud800" survives json.loads but cannot be stored
        raise RecordError("non_utf8_caption", str(e)) from e
    text = re.sub(r"\s+", " ", value).strip()
    if not text:
        raise RecordError("empty_caption")
    if len(text) > max_chars:
        raise RecordError("caption_too_long", f"{len(text)} > max_chars={max_chars}")
    return text


def in_test_split(key: str, test_fraction: float) -> bool:
    """Stable key-hash split assignment (crc32, 1e-4 resolution)."""
    return zlib.crc32(key.encode("utf-8", "surrogatepass")) % 10_000 < test_fraction * 10_000


# ----------------------------------------------------------------------------- builder

@dataclasses.dataclass(eq=False)
class ImageTextConfig(tfds.core.BuilderConfig):
    """One prepared corpus: `name` is the user's dataset name, `src` where records come from."""
    src: str = ""
    image_root: str = ""
    test_fraction: float = 0.01
    max_pixels: int = 64_000_000
    min_side: int = 1
    max_caption_chars: int = 4096
    max_member_bytes: int = 64 << 20


@dataclasses.dataclass
class RawRecord:
    """What a format reader yields: a unique key plus raw fields, or the reason it is unusable.

    `where` names the record for a person (`pairs.jsonl:12 images/a.jpg`, `shard.tar:key`)."""
    key: str
    image: bytes | None = None
    captions: tuple[Any, ...] = ()
    error: str | None = None
    where: str = ""


class ImageTextBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Base for the wds/jsonl builders; subclasses implement `iter_raw(config, counter)`."""

    VERSION = tfds.core.Version(VERSION)
    RELEASE_NOTES = {"1.0.0": "Initial release."}

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        return epath.Path(__file__)  # no checksums file needed: nothing is downloaded

    def __init__(self, *, config: ImageTextConfig, **kwargs):
        kwargs.setdefault("file_format", "array_record")
        self.counters: dict[str, SkipCounter] = {}
        self.caption_sample: list[str] = []  # train captions for the dataset's tokenizer
        self.skip_log: Callable[[str, str, str, str], None] | None = None  # (split, reason, ...)
        self.test_fallback: dict | None = None  # {key, where} moved to test in a tiny corpus
        self.no_test_reason: str | None = None  # why a tiny corpus can have no test split
        self.usable = 0  # usable records outside the test hash range (set by the fallback)
        self.fallback_skips = SkipCounter()  # what the fallback pass skipped (for errors)
        super().__init__(config=config, **kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=f"Image-text pairs prepared from {self.builder_config.src}",
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(None, None, 3)),
                "caption": tfds.features.Text(),  # the first caption
                "captions": tfds.features.Sequence(tfds.features.Text()),  # all of them
                "key": tfds.features.Text(),
            }))

    def iter_raw(self, config: ImageTextConfig, counter: SkipCounter) -> Iterator[RawRecord]:
        raise NotImplementedError

    def _split_generators(self, dl_manager):
        del dl_manager  # local files only
        splits = {}
        if self.builder_config.test_fraction > 0:  # first: a tiny corpus may need a fallback
            splits["test"] = self._generate_examples("test")
        splits["train"] = self._generate_examples("train")
        return splits

    def _counter(self, split: str) -> SkipCounter:
        if split not in self.counters:
            log = None
            if self.skip_log is not None:
                log = lambda reason, where, detail: self.skip_log(split, reason, where, detail)
            self.counters[split] = SkipCounter(log)
        return self.counters[split]

    def _in_test(self, key: str) -> bool:
        return in_test_split(key, self.builder_config.test_fraction) or (
            self.test_fallback is not None and key == self.test_fallback["key"])

    def _generate_examples(self, split: str):
        cfg = self.builder_config
        counter = self._counter(split)
        # Source-level problems (truncated shards, bad json lines) count in the train pass only.
        source_counter = counter if split == "train" else SkipCounter()
        for raw in self.iter_raw(cfg, source_counter):
            if (split == "test") != self._in_test(raw.key):
                continue
            if raw.error is not None:
                counter.skip(raw.error, raw.where or raw.key)
                continue
            try:
                example = self._validate(raw, cfg, counter)
            except RecordError as e:
                counter.skip(e.reason, raw.where or raw.key, str(e))
                continue
            counter.written += 1
            if split == "train" and len(self.caption_sample) < MAX_TOKENIZER_CAPTIONS:
                self.caption_sample.extend(example["captions"])
            yield raw.key, example
        if split == "test" and counter.written == 0:
            fallback = self._fallback_test_record(cfg, counter)
            if fallback is not None:
                counter.written += 1
                yield fallback["key"], fallback

    def _fallback_test_record(self, cfg: ImageTextConfig, counter: SkipCounter):
        """No key hashed into test: the usable record of lowest key hash becomes the test split,
        if another usable one is left for train; else `no_test_reason` is set and None returned.

        One more pass over the source, which only a tiny (or almost all broken) corpus takes.
        """
        best, usable, scratch = None, 0, self.fallback_skips
        for raw in self.iter_raw(cfg, scratch):
            if in_test_split(raw.key, cfg.test_fraction):
                continue
            if raw.error is not None:
                scratch.skip(raw.error)
                continue
            try:
                self._validate(raw, cfg, SkipCounter())
            except RecordError as e:
                scratch.skip(e.reason)
                continue
            usable += 1
            rank = zlib.crc32(raw.key.encode("utf-8", "surrogatepass"))
            if best is None or rank < best[0]:
                best = (rank, raw)
        if usable < 2:
            self.no_test_reason = f"only {usable} usable record(s): none to spare for a test split"
            self.usable = usable
            return None
        self.test_fallback = {"key": best[1].key, "where": best[1].where}
        return self._validate(best[1], cfg, counter)

    @staticmethod
    def _validate(raw: RawRecord, cfg: ImageTextConfig, counter: SkipCounter) -> dict[str, Any]:
        if raw.image is None:
            raise RecordError("missing_image")
        if not raw.captions:
            raise RecordError("missing_caption")
        captions, first_error = [], None
        for value in raw.captions:  # keep the good captions of a multi-caption record
            try:
                captions.append(clean_caption(value, max_chars=cfg.max_caption_chars))
            except RecordError as e:
                first_error = first_error or e
        if not captions:
            raise first_error
        image, converted = decode_image(raw.image, max_pixels=cfg.max_pixels,
                                        min_side=cfg.min_side)
        if converted:
            counter.converted[CONVERTED_PREFIX + converted] += 1
        return {"image": image, "caption": captions[0], "captions": captions, "key": raw.key}


# ----------------------------------------------------------------------------- prepare

def dataset_dir(data_dir: str, fmt: str, name: str) -> str:
    """Where `prepare(fmt, name=name, data_dir=data_dir)` stores its files."""
    return fileio.join(os.fspath(data_dir), fmt, name, VERSION)


def read_summary(data_dir: str, fmt: str, name: str) -> dict[str, Any]:
    path = fileio.join(dataset_dir(data_dir, fmt, name), SUMMARY_FILE)
    if not fileio.isfile(path):
        raise FileNotFoundError(f"no prepared {fmt} dataset {name!r}: {path} is missing; run "
                                f"`mmfm data prepare --format {fmt} --name {name} "
                                f"--data-dir {data_dir} --src ...`")
    return json.loads(fileio.read_text(path))
