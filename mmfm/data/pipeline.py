"""The input pipeline: records -> decoded, tokenized, batched numpy arrays (grain).

Dataset-agnostic: a source is any random-access sequence of record dicts (a TFDS
`data_source`, a list, ...) with an `image` (uint8 array, PIL image or encoded bytes) and a
`caption` (or `text`) field; scalar integer fields (class labels) are passed through.

    loader = make_train_loader(source, batch_size=64, seed=0, tokenizer=tok, context_length=32,
                               transform=make_image_transform(64))
    it = iter(loader)
    batch = next(it)            # {"image": uint8[b,H,W,3], "tokens": int32[b,L], "shape": ...}
    state = it.get_state()      # JSON-serialisable; save it with the model checkpoint
    it.set_state(state)         # continues with exactly the same next batch

Order: shard (equal, disjoint, strided slices) -> shuffle (a fresh permutation every epoch) ->
repeat -> per-example preprocessing -> batch (drop remainder) -> thread prefetch -> optional
worker processes. Every random choice is a function of (seed, global example index), so results
do not depend on threads, workers or restarts.
"""
from __future__ import annotations

import dataclasses
import gc
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import grain
import numpy as np

from mmfm.data import workers
from mmfm.data.sources import RUNTIME_REASONS
from mmfm.data.transforms import to_uint8_rgb

_STATE_VERSION = 1
TEXT_KEYS = ("caption", "text")


def _text_of(record: Mapping[str, Any]) -> str:
    for key in TEXT_KEYS:
        if key in record:
            value = record[key]
            return value.decode("utf-8") if isinstance(value, bytes) else str(value)
    raise KeyError(f"record has no text field (looked for {TEXT_KEYS}); keys: {sorted(record)}")


def _labels_of(record: Mapping[str, Any], label_keys: Sequence[str] | None) -> dict[str, Any]:
    """Integer labels: the named keys, or every scalar integer field when `label_keys` is None."""
    if label_keys is None:
        return {k: np.int32(v) for k, v in record.items()
                if (isinstance(v, (int, np.integer)) and not isinstance(v, bool))
                or (isinstance(v, np.ndarray) and v.ndim == 0 and v.dtype.kind in "iu")}
    missing = [k for k in label_keys if k not in record]
    if missing:
        raise KeyError(f"label keys {missing} not in record; keys: {sorted(record)}")
    return {k: np.int32(record[k]) for k in label_keys}


def example_rngs(seed: int, index: int) -> tuple[np.random.Generator, np.random.Generator]:
    """(caption rng, image rng) for global example `index`; independent streams."""
    return (np.random.default_rng([seed, index, 0]), np.random.default_rng([seed, index, 1]))


@dataclasses.dataclass(frozen=True)
class Preprocess:
    """Picklable per-example map: record -> {image, tokens, labels...}.

    `position` is the example's place in this shard's stream (grain's index); the global example
    index `position * shard_count + shard_index` seeds the caption and image rngs.
    """
    tokenizer: Any
    context_length: int
    transform: Callable[..., Any] | None = None
    caption_fn: Callable[[Mapping[str, Any], np.random.Generator], str] | None = None
    seed: int = 0
    shard_index: int = 0
    shard_count: int = 1
    label_keys: tuple[str, ...] | None = None

    def __call__(self, position: int, record: Mapping[str, Any]) -> dict[str, np.ndarray]:
        caption_rng, image_rng = example_rngs(
            self.seed, position * self.shard_count + self.shard_index)
        image = record["image"]
        image = self.transform(image, image_rng) if self.transform else to_uint8_rgb(image)
        caption = self.caption_fn(record, caption_rng) if self.caption_fn else _text_of(record)
        out = {"image": image, "tokens": self.tokenizer(caption, self.context_length)[0]}
        out.update(_labels_of(record, self.label_keys))
        if "_skipped" in record:  # from sources.SafeSource: records passed over to get this one
            out["_skipped"] = np.asarray(record["_skipped"], np.int32)
        return out


def _check_int(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


class TrainIterator:
    """Batches from a `TrainLoader`, with JSON-serialisable `get_state`/`set_state`.

    The state is the number of batches already produced (plus the loader settings it is valid
    for). Batches are a random-access function of their index, so resuming rebuilds the grain
    iterator at that index: the state does not depend on threads, worker count or grain's
    internal state format.
    """

    def __init__(self, loader: "TrainLoader", next_batch: int = 0):
        self._loader, self._next, self._it = loader, next_batch, None
        self._runtime_skips = np.zeros(len(RUNTIME_REASONS), np.int64)

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        if self._it is None:  # started lazily, so set_state right after iter() costs nothing
            self._it = iter(self._loader.iter_dataset(self._next))
        batch = dict(next(self._it))
        self._next += 1
        if "_skipped" in batch:
            self._runtime_skips += np.asarray(batch.pop("_skipped")).sum(axis=0)
        # Worker processes hand back shared-memory ndarray subclasses; plain copies keep their
        # lifetime independent of grain (a few MB per batch, negligible next to a train step).
        return {k: v if type(v) is np.ndarray else np.array(v) for k, v in batch.items()}

    def close(self) -> None:
        """Stops prefetch threads and worker processes; iterating again restarts them."""
        if self._it is not None:
            self._it.close()
            self._it = None
            # grain keeps helper iterators in reference cycles; collecting them now, while modules
            # are alive, avoids a burst of ignored errors from their __del__ at interpreter exit.
            gc.collect()

    def __enter__(self) -> "TrainIterator":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def skip_counts(self) -> dict[str, int]:
        """Metrics: `data/skipped/<reason>` from prepare time (train split) plus
        `data/skipped_runtime/<reason>`, records replaced while reading (summed over batches
        produced so far, carried through get_state/set_state)."""
        counts = self._loader.skip_counts()
        counts.update({f"data/skipped_runtime/{r}": int(n)
                       for r, n in zip(RUNTIME_REASONS, self._runtime_skips)})
        return counts

    def get_state(self) -> dict[str, Any]:
        """`{"version", "loader": settings, "next_batch": int, "runtime_skips"}`, plain JSON."""
        return {"version": _STATE_VERSION, "loader": dict(self._loader.fingerprint),
                "next_batch": self._next,
                "runtime_skips": [int(n) for n in self._runtime_skips]}

    def set_state(self, state: Mapping[str, Any], *, strict: bool = True) -> None:
        """Restores a `get_state()` result (also after a json round trip).

        With `strict`, a state saved under other loader settings (seed, batch size, sharding,
        dataset size) is an error; `strict=False` logs a warning and continues at the saved batch
        count, e.g. when resuming on a different number of hosts.
        """
        if (not isinstance(state, Mapping) or state.get("version") != _STATE_VERSION
                or not isinstance(state.get("next_batch"), int) or state["next_batch"] < 0):
            raise ValueError(f"not a TrainIterator state (version {_STATE_VERSION}): {state!r}")
        saved, current = dict(state.get("loader", {})), self._loader.fingerprint
        if saved != current:
            diff = {k: (saved.get(k), current.get(k)) for k in set(saved) | set(current)
                    if saved.get(k) != current.get(k)}
            message = f"iterator state was saved with different loader settings " \
                      f"(saved, current): {diff}"
            if strict:
                raise ValueError(message + "; pass strict=False to continue anyway")
            logging.warning("%s; continuing at batch %d", message, state["next_batch"])
        self.close()
        self._next = state["next_batch"]
        skips = state.get("runtime_skips") or [0] * len(RUNTIME_REASONS)
        self._runtime_skips = np.asarray(skips, np.int64)


class TrainLoader:
    """Infinite (or `num_epochs`) shuffled training batches for one shard (e.g. one host).

    Each shard reads `len(source) // shard_count` examples (a strided slice, so shards are
    disjoint; up to shard_count-1 examples are dropped so every host gets the same number of
    batches). `iter(loader)` starts from the beginning; use the iterator's set_state to resume.
    """

    def __init__(self, source: Any, *, batch_size: int, seed: int, tokenizer: Any,
                 context_length: int, transform: Callable[..., Any] | None = None,
                 caption_fn: Callable[..., str] | None = None, shard_index: int = 0,
                 shard_count: int = 1, worker_count: int = 0, num_epochs: int | None = None,
                 label_keys: Sequence[str] | None = None, num_threads: int = 2,
                 prefetch: int = 4):
        if not hasattr(source, "__len__") or not hasattr(source, "__getitem__"):
            raise TypeError(f"source must support len() and [i], got {type(source).__name__}")
        shard_count = _check_int("shard_count", shard_count, 1)
        shard_index = _check_int("shard_index", shard_index, 0)
        if shard_index >= shard_count:
            raise ValueError(f"shard_index={shard_index} must be < shard_count={shard_count}")
        batch_size = _check_int("batch_size", batch_size, 1)
        seed = _check_int("seed", seed, 0)
        if num_epochs is not None:
            num_epochs = _check_int("num_epochs", num_epochs, 1)
        self.examples_per_shard = len(source) // shard_count
        if self.examples_per_shard < batch_size:
            raise ValueError(f"shard has {self.examples_per_shard} examples ({len(source)} over "
                             f"{shard_count} shards), fewer than batch_size={batch_size}")
        self.batch_size, self.batches_per_epoch = batch_size, self.examples_per_shard // batch_size
        self.fingerprint = {"seed": seed, "batch_size": batch_size, "shard_index": shard_index,
                            "shard_count": shard_count, "num_examples": len(source),
                            "num_epochs": num_epochs}
        preprocess = Preprocess(tokenizer, _check_int("context_length", context_length, 2),
                                transform, caption_fn, seed, shard_index, shard_count,
                                None if label_keys is None else tuple(label_keys))
        ds = grain.MapDataset.source(source)
        ds = ds[shard_index:self.examples_per_shard * shard_count:shard_count]
        ds = ds.seed(seed).shuffle().repeat(num_epochs).map_with_index(preprocess)
        # Batching the random-access dataset makes batch k a pure function of k (see set_state).
        # With num_epochs, batches never straddle the end: the last partial one is dropped.
        self.batches = ds.batch(batch_size, drop_remainder=True)
        self._read = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch)
        self.worker_count = _check_int("worker_count", worker_count, 0)
        self.prepare_skips: dict[str, int] = {}  # set by dataset entries (prepare summary)

    def skip_counts(self) -> dict[str, int]:
        """`data/skipped/<reason>`: records dropped when this dataset was prepared."""
        return {f"data/skipped/{r}": int(n) for r, n in sorted(self.prepare_skips.items())}

    def iter_dataset(self, start: int = 0) -> grain.IterDataset:
        """The grain pipeline from batch `start` on (threads, then optional worker processes)."""
        ds = self.batches[start:].to_iter_dataset(self._read)
        if self.worker_count > 0:
            _ensure_absl_flags_parsed()
            # Workers exit when this process dies, even by SIGKILL (see workers.py).
            ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=self.worker_count),
                                worker_init_fn=workers.worker_init_fn())
        return ds

    def __iter__(self) -> TrainIterator:
        return TrainIterator(self)


def _ensure_absl_flags_parsed() -> None:
    # grain's worker processes read absl flags; outside absl.app.run they are unparsed.
    from absl import flags
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def make_train_loader(source: Any, *, batch_size: int, seed: int, tokenizer: Any,
                      context_length: int, transform: Callable[..., Any] | None = None,
                      caption_fn: Callable[..., str] | None = None, shard_index: int = 0,
                      shard_count: int = 1, worker_count: int = 0,
                      num_epochs: int | None = None, **kwargs) -> TrainLoader:
    """Builds a `TrainLoader` (see there); extra kwargs: label_keys, num_threads, prefetch."""
    return TrainLoader(source, batch_size=batch_size, seed=seed, tokenizer=tokenizer,
                       context_length=context_length, transform=transform, caption_fn=caption_fn,
                       shard_index=shard_index, shard_count=shard_count,
                       worker_count=worker_count, num_epochs=num_epochs, **kwargs)


def load_eval_arrays(source: Any, tokenizer: Any, context_length: int,
                     transform: Callable[..., Any] | None = None, max_examples: int | None = None,
                     label_keys: Sequence[str] | None = None) -> dict[str, Any]:
    """A whole (small) eval split in memory, in source order, no randomness.

    Returns {"image": uint8[n,H,W,3], "tokens": int32[n,L], "caption": list[str], labels: int32[n]}.
    """
    n = len(source) if max_examples is None else min(len(source), max_examples)
    if n <= 0:
        raise ValueError(f"eval source is empty (len {len(source)}, max_examples {max_examples})")
    images, captions, labels = [], [], []
    for i in range(n):
        record = source[i]
        image = record["image"]
        images.append(transform(image, None) if transform else to_uint8_rgb(image))
        captions.append(_text_of(record))
        labels.append(_labels_of(record, label_keys))
    out = {"image": np.stack(images), "tokens": tokenizer(captions, context_length),
           "caption": captions}
    for key in labels[0]:
        out[key] = np.array([row[key] for row in labels], dtype=np.int32)
    return out


# ----------------------------------------------------------------------------- config entry

@dataclasses.dataclass(frozen=True)
class DataInfo:
    """What the trainer and evaluators need to know about the data."""
    name: str
    image_size: int
    context_length: int
    vocab_size: int
    tokenizer_path: str
    num_train: int
    num_eval: int
    examples_per_shard: int
    batches_per_epoch: int
    # Zero-shot tasks: label key -> (class names, prompt templates with one "{}").
    zeroshot: Mapping[str, tuple[tuple[str, ...], tuple[str, ...]]]
