"""Config-level dataset entries beyond captioned shapes: prepared corpora and mixtures.

Every source here yields the same record fields, so any of them can be trained on, evaluated, or
mixed: `image` (uint8 `[H, W, 3]`), `caption` (str, the canonical one, used for evaluation),
`captions` (list of str; training draws one per example) and integer labels where the dataset has
them. `SafeSource` wraps each one so a record that fails to read or decode at training time is
replaced by the next good one and counted, instead of crashing the run.

    config.data.name = "wds"; config.data.dataset = "cc3m"; config.data.dir = "/tfds"
    config.data.name = "mixture"
    config.data.mixture = (dict(name="wds", dataset="cc3m", weight=0.8),
                           dict(name="cifar10", weight=0.2))
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from mmfm import fileio
from mmfm.data.transforms import to_uint8_rgb

RUNTIME_REASONS = ("read_error", "decode_error")
_MAX_TRIES = 16


def as_text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, (bytes, bytearray)) else str(value)


class SafeSource:
    """Random-access source whose items always decode: item i is the first good one of i, i+1, ...

    Each record gains `_skipped`: int32 `[len(RUNTIME_REASONS)]`, how many records were passed
    over (by reason) to produce it; the train iterator sums them into its skip counts.
    """

    def __init__(self, source: Any, adapt: Any = None):
        if len(source) == 0:
            raise ValueError("dataset split is empty")
        self.source, self.adapt = source, adapt

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict[str, Any]:
        skipped = np.zeros(len(RUNTIME_REASONS), np.int32)
        n = len(self.source)
        for attempt in range(_MAX_TRIES):
            try:
                record = self.source[(int(index) + attempt) % n]
            except Exception:  # a damaged file or record: count it and read the next one
                skipped[0] += 1
                continue
            try:
                record = dict(self.adapt(record) if self.adapt else record)
                record["image"] = to_uint8_rgb(record["image"])
            except Exception:
                skipped[1] += 1
                continue
            record["_skipped"] = skipped
            return record
        raise RuntimeError(f"{_MAX_TRIES} consecutive unreadable records from index {index}: "
                           f"the dataset looks broken (skips {dict(zip(RUNTIME_REASONS, skipped))})")


class CachedSource:
    """Random-access source that keeps every record after its first read (`data.in_memory`).

    For small datasets trained for many epochs: reading and decoding a record through TFDS costs
    more CPU than the rest of its preprocessing, and on a small machine that CPU is taken from
    the train step. Filled lazily, so a host caches only the records of its own shard; failed
    reads are not cached. Memory grows to the decoded size of the shard (20k 64 px images:
    250 MB); each grain worker process holds its own copy.
    """

    def __init__(self, source: Any):
        self.source, self._records = source, {}

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> Any:
        index = int(index)
        record = self._records.get(index)
        if record is None:
            record = self._records[index] = self.source[index]
        return record

    def __getstate__(self) -> dict[str, Any]:  # worker processes start with an empty cache
        return {"source": self.source, "_records": {}}


class SubsetSource:
    """The records of `source` at `indices`, in that order (a labelled or size-limited split)."""

    def __init__(self, source: Any, indices: Sequence[int]):
        self.source, self.indices = source, np.asarray(indices, np.int64)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> Any:
        return self.source[int(self.indices[int(index)])]


def first_records(source: Any, max_examples: Any) -> Any:
    """The first `max_examples` records of `source` (all of them when None or 0)."""
    if not max_examples:
        return source
    if int(max_examples) < 0:
        raise ValueError(f"config.data.max_train_examples must be >= 0, got {max_examples}")
    return SubsetSource(source, range(min(len(source), int(max_examples))))


def maybe_cached(source: Any, in_memory: bool) -> Any:
    """`source` wrapped in a CachedSource when the data config asks for `in_memory`."""
    return CachedSource(source) if in_memory else source


class PreparedRecord:
    """Adapter for `mmfm data prepare` datasets: bytes -> str captions."""

    def __call__(self, record: Mapping[str, Any]) -> dict[str, Any]:
        captions = [as_text(c) for c in record["captions"]] or [as_text(record["caption"])]
        return {"image": record["image"], "caption": as_text(record["caption"]),
                "captions": captions}


def pick_caption(record: Mapping[str, Any], rng: np.random.Generator) -> str:
    """Training caption: uniformly one of `captions` (falls back to `caption`)."""
    captions = record.get("captions")
    if captions is None or len(captions) == 0:
        return as_text(record["caption"])
    return as_text(captions[int(rng.integers(len(captions)))])


class MixtureSource:
    """Weighted mixture of sources as one random-access source of `length` records.

    Component k fills round(weight_k * length) slots, spread over the index space by a seeded
    permutation, and cycles through its own records (so a small dataset is repeated and a large
    one subsampled per epoch). The pipeline shards and shuffles the mixture like any source.
    """

    def __init__(self, sources: Sequence[Any], weights: Sequence[float], *, seed: int = 0,
                 length: int | None = None):
        if not sources or len(sources) != len(weights):
            raise ValueError(f"mixture needs one weight per source, got {len(sources)} sources "
                             f"and {len(weights)} weights")
        w = np.asarray(weights, np.float64)
        if (w < 0).any() or w.sum() <= 0:
            raise ValueError(f"mixture weights must be >= 0 with a positive sum, got {weights}")
        self.sources, self.weights = list(sources), w / w.sum()
        length = int(length or sum(len(s) for s in sources))
        counts = np.floor(self.weights * length).astype(np.int64)
        counts[np.argsort(-(self.weights * length - counts))[:length - counts.sum()]] += 1
        slots = np.repeat(np.arange(len(sources), dtype=np.int32), counts)
        self.component = np.random.default_rng([seed, 7]).permutation(slots)
        self.offset = np.zeros(length, np.int64)  # rank of slot i within its component
        for k in range(len(sources)):
            where = np.flatnonzero(self.component == k)
            self.offset[where] = np.arange(len(where))

    def __len__(self) -> int:
        return len(self.component)

    def __getitem__(self, index: int) -> dict[str, Any]:
        k = int(self.component[index])
        source = self.sources[k]
        return source[int(self.offset[index]) % len(source)]


# ----------------------------------------------------------------------------- prepared corpora

def open_prepared(fmt: str, data_dir: str, dataset: str):
    """The ReadOnly TFDS builder of a prepared corpus (`data_dir/<fmt>/<dataset>/1.0.0`)."""
    import tensorflow_datasets as tfds

    from mmfm.data.builders.common import dataset_dir
    if not dataset:
        raise ValueError(f"config.data.dataset is empty: name the prepared {fmt} dataset "
                         f"(`mmfm data prepare --format {fmt} --name NAME --data_dir DIR`)")
    path = dataset_dir(data_dir, fmt, dataset)
    if not fileio.isfile(fileio.join(path, "dataset_info.json")):
        root = fileio.join(os.fspath(data_dir), fmt)
        found = fileio.listdir(root) if fileio.isdir(root) else []
        raise FileNotFoundError(f"prepared {fmt} dataset {dataset!r} not found at {path} "
                                f"(config.data.dataset / config.data.dir); available in {root}: "
                                f"{found}; prepare it with `mmfm data prepare --format {fmt} "
                                f"--name {dataset} --data_dir {data_dir} --src ...`")
    return tfds.builder_from_directory(path)


def prepared_tokenizer_path(data_dir: str, fmt: str, dataset: str) -> str:
    from mmfm.data.builders.common import dataset_dir
    return fileio.join(dataset_dir(data_dir, fmt, dataset), "tokenizer.model")
