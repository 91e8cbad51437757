"""Named evaluation datasets: labelled images for classification and captioned images for retrieval.

    data = load_classification("cifar10", "test", data_dir=D)      # ClassificationData
    data = load_retrieval("coco_captions", "test", data_dir=D)      # RetrievalData

Catalog datasets are read with `tfds.data_source` (ArrayRecord, random access, no TensorFlow);
prepare them with `tfds.builder(name, data_dir=D, file_format="array_record").download_and_prepare()`.
`captioned_shapes` is built on demand from the evaluator's own size settings.

Any corpus prepared with `mmfm data prepare` is an evaluation dataset by the name `<format>/<name>`
(`jsonl/mine`, `wds/cc3m`), read from `data_dir/<format>/<name>/1.0.0`: for retrieval every caption
of an image counts; for zero-shot the classes are the split's distinct first captions (template
"{}"), so a corpus captioned with class names ("a photo of a dog") is a zero-shot task as it is.

Class names and prompt templates of catalog datasets live in `mmfm/evals/data/<name>.json`
(`load_prompts`). Images stay undecoded records until encoding (`ImageSource`), so a 50k-image
split is never held in memory as pixels.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable, Optional, Sequence

import numpy as np

from mmfm.data.catalog import coco_captions_builder  # TF-free TFDS builder

__all__ = ["CLASSIFICATION", "RETRIEVAL", "ClassificationData", "ImageSource", "RetrievalData",
           "classification_from_source", "corpus_name", "is_dataset", "load_classification",
           "load_prompts", "load_retrieval", "prompts_path", "retrieval_from_source",
           "shapes_source"]

_DATA = os.path.join(os.path.dirname(__file__), "data")
# name -> {split alias: TFDS split}. "test" means the split used for reporting.
CLASSIFICATION = {
    "cifar10": {"test": "test", "train": "train"},
    "cifar100": {"test": "test", "train": "train"},
    "imagenet2012": {"test": "validation", "validation": "validation", "train": "train"},
    "captioned_shapes": {"test": "test", "train": "train"},
}
# coco_captions: the Karpathy splits (5k val / 5k test images, ~5 captions each).
RETRIEVAL = {
    "coco_captions": {"test": "test", "val": "val", "train": "train", "restval": "restval"},
    "captioned_shapes": {"test": "test", "train": "train"},
}
SHAPES_KEYS = ("image_size", "num_train", "num_test", "seed")
CORPUS_FORMATS = ("jsonl", "wds")
CORPUS_HINT = "or 'jsonl/NAME' / 'wds/NAME' for a corpus prepared with `mmfm data prepare`"


def corpus_name(name: str) -> Optional[tuple[str, str]]:
    """'jsonl/mine' -> ("jsonl", "mine"); None when `name` is not a prepared-corpus name."""
    fmt, sep, dataset = str(name).partition("/")
    return (fmt, dataset) if sep and fmt in CORPUS_FORMATS and dataset else None


def is_dataset(name: str, table: dict) -> bool:
    """A catalog name of `table` or a prepared corpus name."""
    return name in table or corpus_name(name) is not None


@dataclasses.dataclass
class ImageSource:
    """Lazy images: `len`, and `images(indices)` -> list of raw images (arrays, PIL or bytes)."""
    source: Any
    indices: np.ndarray

    def __len__(self) -> int:
        return len(self.indices)

    def images(self, positions: Sequence[int]) -> list:
        return [self.source[int(self.indices[p])]["image"] for p in positions]


@dataclasses.dataclass
class ClassificationData:
    images: ImageSource
    labels: np.ndarray  # int32 [n]
    classnames: tuple[str, ...]
    templates: tuple[str, ...]


@dataclasses.dataclass
class RetrievalData:
    images: ImageSource
    captions: list[str]  # [Nt]
    text_to_image: np.ndarray  # int32 [Nt], index into images


def prompts_path(name: str) -> str:
    return os.path.join(_DATA, f"{name}.json")


def load_prompts(name: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(class names, prompt templates) shipped for a catalog dataset."""
    path = prompts_path(name)
    if not os.path.isfile(path):
        have = sorted(f[:-5] for f in os.listdir(_DATA) if f.endswith(".json"))
        raise FileNotFoundError(f"no class names / templates for dataset {name!r} ({path}); "
                                f"shipped: {have}")
    with open(path) as f:
        meta = json.load(f)
    names, templates = tuple(meta["classnames"]), tuple(meta["templates"])
    bad = [t for t in templates if t.count("{}") != 1]
    if bad:
        raise ValueError(f"{path}: templates need exactly one '{{}}': {bad}")
    return names, templates


def _split(table: dict, name: str, split: str, kind: str) -> str:
    if corpus_name(name) is not None:
        return split  # checked against the prepared splits when opened
    if name not in table:
        raise ValueError(f"unknown {kind} dataset {name!r}; available: {sorted(table)} "
                         f"{CORPUS_HINT}")
    if split not in table[name]:
        raise ValueError(f"dataset {name!r} has no split {split!r}; valid: {sorted(table[name])}")
    return table[name][split]


def _take(n: int, max_examples: Optional[int]) -> np.ndarray:
    return np.arange(n if not max_examples else min(n, int(max_examples)))


def shapes_source(split: str, data_dir: Optional[str], shapes: Optional[dict]):
    """Random-access captioned-shapes records of `split`, built on first use under `data_dir`."""
    from mmfm.data import synthetic

    if not data_dir:
        raise ValueError("captioned_shapes evaluation needs data_dir (the evaluator's data_dir or "
                         "config.data.dir)")
    shapes = dict(shapes or {})
    unknown = sorted(set(shapes) - set(SHAPES_KEYS))
    if unknown:
        raise ValueError(f"captioned_shapes settings {unknown} unknown; valid: {list(SHAPES_KEYS)}")
    return synthetic.prepare_captioned_shapes(data_dir, **shapes).as_data_source(split=split)


def _corpus_source(name: str, split: str, data_dir: Optional[str]):
    """Records of a prepared corpus split (captions as str)."""
    from mmfm.data import catalog, sources
    from mmfm.data.builders.common import read_summary

    fmt, dataset = corpus_name(name)
    if not data_dir:
        raise ValueError(f"dataset {name!r} needs data_dir (the evaluator's data_dir or "
                         f"config.data.dir): where `mmfm data prepare --data-dir` wrote it")
    builder = sources.open_prepared(fmt, data_dir, dataset)
    if split not in builder.info.splits:
        why = read_summary(data_dir, fmt, dataset).get("no_test_split")
        raise ValueError(f"dataset {name!r} has no split {split!r}"
                         + (f" ({why})" if why else "")
                         + f"; valid: {sorted(builder.info.splits)}")
    return catalog.AdaptedSource(builder.as_data_source(split=split), sources.PreparedRecord())


def _corpus_classes(name: str, split: str, data_dir: Optional[str],
                    max_examples: Optional[int]) -> ClassificationData:
    """Zero-shot on a corpus: the classes are the split's distinct first captions."""
    src = _corpus_source(name, split, data_dir)
    idx = _take(len(src), max_examples)
    captions = [src[int(i)]["caption"] for i in idx]
    names = tuple(sorted(set(captions)))
    index = {c: k for k, c in enumerate(names)}
    labels = np.array([index[c] for c in captions], np.int32)
    return ClassificationData(ImageSource(src, idx), labels, names, ("{}",))


def _tfds_source(name: str, split: str, tfds_split: str, data_dir: Optional[str]):
    """Random-access records; classification sets go through the data catalog's adapter."""
    import tensorflow_datasets as tfds

    from mmfm.data import catalog

    data_dir = data_dir or None
    if name == "coco_captions":  # Karpathy "test" here; the TF-free builder also reads mock data
        return coco_captions_builder(data_dir).as_data_source(split=tfds_split)
    spec = catalog.CATALOG.get(name)
    if spec is not None and spec.splits.get(split) == tfds_split:
        return catalog.open_catalog(name, data_dir, split)[0]
    return tfds.data_source(name, split=tfds_split, data_dir=data_dir)


def load_classification(name: str, split: str = "test", *, data_dir: Optional[str] = None,
                        max_examples: Optional[int] = None, label_key: Optional[str] = None,
                        shapes: Optional[dict] = None) -> ClassificationData:
    """Labelled images of a named dataset.

    For captioned_shapes, `label_key` is an attribute ("shape" or "color", default "shape") and only
    single-object images are kept (the label describes the only object); class names and templates
    come from `mmfm.data.synthetic.ZEROSHOT`. `shapes` holds its size settings (image_size, ...).
    """
    tfds_split = _split(CLASSIFICATION, name, split, "classification")
    if corpus_name(name) is not None:
        return _corpus_classes(name, split, data_dir, max_examples)
    if name == "captioned_shapes":
        from mmfm.data.synthetic import ZEROSHOT

        key = label_key or "shape"
        if key not in ZEROSHOT:
            raise ValueError(f"captioned_shapes label_key {key!r}; valid: {sorted(ZEROSHOT)}")
        src = shapes_source(tfds_split, data_dir, shapes)
        idx = _take(len(src), max_examples)
        rows = [src[int(i)] for i in idx]
        keep = np.array([int(r["num_objects"]) == 1 for r in rows])
        labels = np.array([int(r[key]) for r in rows], np.int32)[keep]
        names, templates = ZEROSHOT[key]
        return ClassificationData(ImageSource(src, idx[keep]), labels, tuple(names), tuple(templates))
    names, templates = load_prompts(name)
    return classification_from_source(_tfds_source(name, split, tfds_split, data_dir),
                                      f"{name}/{split}", label_key or "label", names, templates,
                                      max_examples, names_from=prompts_path(name))


def classification_from_source(src, where: str, label_key: str, classnames: Sequence[str],
                               templates: Sequence[str], max_examples: Optional[int] = None, *,
                               names_from: str = "the class names") -> ClassificationData:
    """Labelled images of any random-access source whose records hold `label_key` class ids."""
    idx = _take(len(src), max_examples)
    labels = np.array([int(src[int(i)][label_key]) for i in idx], np.int32)
    if labels.size and labels.max() >= len(classnames):
        raise ValueError(f"{where}: label {labels.max()} but {names_from} lists "
                         f"{len(classnames)} classes")
    return ClassificationData(ImageSource(src, idx), labels, tuple(classnames), tuple(templates))


def _texts(value) -> list[str]:
    values = np.asarray(value).reshape(-1).tolist()
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values]


def load_retrieval(name: str, split: str = "test", *, data_dir: Optional[str] = None,
                   max_examples: Optional[int] = None, shapes: Optional[dict] = None,
                   caption_fn: Optional[Callable[[dict], list[str]]] = None) -> RetrievalData:
    """Images with one or more captions each (COCO: `captions/text`; captioned_shapes: `caption`)."""
    tfds_split = _split(RETRIEVAL, name, split, "retrieval")
    if corpus_name(name) is not None:
        src = _corpus_source(name, split, data_dir)
    elif name == "captioned_shapes":
        src = shapes_source(tfds_split, data_dir, shapes)
    else:
        src = _tfds_source(name, split, tfds_split, data_dir)
    return retrieval_from_source(src, f"{name}/{split}", max_examples, caption_fn)


def retrieval_from_source(src, where: str, max_examples: Optional[int] = None,
                          caption_fn: Optional[Callable[[dict], list[str]]] = None) -> RetrievalData:
    """Captioned images of any random-access source (`captions/text`, `captions` or `caption`)."""
    idx = _take(len(src), max_examples)
    captions, t2i = [], []
    for j, i in enumerate(idx):
        record = src[int(i)]
        if caption_fn is not None:
            texts = caption_fn(record)
        elif "captions" in record and isinstance(record["captions"], list):  # prepared corpus
            texts = list(record["captions"])
        elif "captions" in record:
            texts = _texts(record["captions"]["text"])
        else:
            texts = _texts(record["caption"])
        if not texts:
            raise ValueError(f"{where} example {int(i)} has no caption")
        captions += texts
        t2i += [j] * len(texts)
    return RetrievalData(ImageSource(src, idx), captions, np.asarray(t2i, np.int32))
