"""TFDS catalog datasets by name, adapted to the pipeline's record fields.

    source, info = open_catalog("cifar10", data_dir="/tfds", split="train")
    source[0] -> {"image": uint8[32,32,3], "label": int, "caption": "a photo of a airplane.",
                  "captions": [one prompt per template]}
    info.zeroshot -> {"label": (class names from the dataset's features, templates)}

Classification sets get captions from prompt templates and their class names (so they can be
trained on contrastively, mixed with image-text corpora and used for zero-shot and probes);
coco_captions keeps every caption of an image (retrieval with several captions per image).
Data must already be prepared in `data_dir` (the usual TFDS layout): nothing is downloaded.
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from mmfm import fileio
from mmfm.data.sources import as_text

TEMPLATES = ("a photo of a {}.", "a blurry photo of a {}.", "a photo of the {}.",
             "a close-up photo of a {}.", "a low resolution photo of a {}.")


@dataclasses.dataclass(frozen=True)
class CatalogSpec:
    tfds_name: str
    splits: Mapping[str, str]  # mmfm split ("train"/"test") -> TFDS split
    label_keys: tuple[str, ...] = ()  # ClassLabel features: zero-shot and probe tasks
    captions_key: str | None = None  # a Sequence({"text"}) feature holding several captions


CATALOG = {
    "cifar10": CatalogSpec("cifar10", {"train": "train", "test": "test"}, ("label",)),
    "cifar100": CatalogSpec("cifar100", {"train": "train", "test": "test"},
                            ("label", "coarse_label")),
    "imagenet2012": CatalogSpec("imagenet2012", {"train": "train", "test": "validation"},
                                ("label",)),
    # Karpathy splits: "test" is the 5k-image test split published retrieval numbers use.
    "coco_captions": CatalogSpec("coco_captions", {"train": "train", "test": "test"},
                                 captions_key="captions"),
}


@dataclasses.dataclass(frozen=True)
class CatalogInfo:
    name: str
    zeroshot: Mapping[str, tuple[tuple[str, ...], tuple[str, ...]]]
    num_examples: Mapping[str, int]


class CatalogRecord:
    """Picklable adapter: a TFDS record -> {image, caption, captions, labels}."""

    def __init__(self, spec: CatalogSpec, class_names: Mapping[str, tuple[str, ...]],
                 templates: tuple[str, ...] = TEMPLATES):
        self.spec, self.class_names, self.templates = spec, dict(class_names), tuple(templates)

    def __call__(self, record: Mapping[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {"image": record["image"]}
        for key in self.spec.label_keys:
            out[key] = np.int32(record[key])
        if self.spec.captions_key:
            texts = record[self.spec.captions_key]["text"]
            captions = [as_text(t) for t in np.asarray(texts).reshape(-1)]
        else:  # the first label names the image
            name = self.class_names[self.spec.label_keys[0]][int(record[self.spec.label_keys[0]])]
            captions = [t.format(name) for t in self.templates]
        if not captions:
            raise ValueError("record has no captions")
        out["caption"], out["captions"] = captions[0], captions
        return out


def _readable_name(name: str) -> str:
    return name.replace("_", " ")


def _builder(spec: CatalogSpec, data_dir: str | None):
    """The TFDS builder; builders whose code needs TensorFlow are read from their directory."""
    import tensorflow_datasets as tfds
    if spec.tfds_name == "coco_captions":
        return coco_captions_builder(data_dir)
    try:
        return tfds.builder(spec.tfds_name, data_dir=data_dir)
    except ModuleNotFoundError as e:  # e.g. coco_captions' feature code imports tensorflow
        root = fileio.join(os.fspath(data_dir or ""), spec.tfds_name)
        infos = fileio.find(root, "dataset_info.json")
        if not infos:
            raise FileNotFoundError(f"catalog dataset {spec.tfds_name!r}: its TFDS builder needs "
                                    f"{e.name}, and no prepared copy was found under {root} "
                                    f"(config.data.dir)") from e
        return tfds.builder_from_directory(fileio.dirname(infos[-1]))


def open_catalog(name: str, data_dir: str | None, split: str,
                 templates: tuple[str, ...] = TEMPLATES):
    """(adapted random-access source, CatalogInfo) for a catalog dataset's "train"/"test" split."""
    if name not in CATALOG:
        raise ValueError(f"unknown catalog dataset {name!r}; available: {sorted(CATALOG)}")
    spec = CATALOG[name]
    if split not in spec.splits:
        raise ValueError(f"{name} has splits {sorted(spec.splits)}, not {split!r}")
    builder = _builder(spec, data_dir)
    features = builder.info.features
    class_names = {k: tuple(_readable_name(n) for n in features[k].names)
                   for k in spec.label_keys}
    try:
        source = builder.as_data_source(split=spec.splits[split])
    except Exception as e:
        raise FileNotFoundError(f"catalog dataset {name!r} split {spec.splits[split]!r} is not "
                                f"prepared under config.data.dir={data_dir!r} (nothing is "
                                f"downloaded here): {e}") from e
    info = CatalogInfo(name, {k: (v, tuple(templates)) for k, v in class_names.items()},
                       {s: int(builder.info.splits[t].num_examples)
                        for s, t in spec.splits.items() if t in builder.info.splits})
    return AdaptedSource(source, CatalogRecord(spec, class_names, templates)), info


class AdaptedSource:
    """source[i] -> adapter(source[i]); picklable when both are."""

    def __init__(self, source: Any, adapt: Any):
        self.source, self.adapt = source, adapt

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.adapt(self.source[index])


def coco_captions_builder(data_dir: str | None = None):
    """The TFDS coco_captions builder without its one TensorFlow dependency.

    TFDS's `Coco._info` declares `'image/id': tf.int64`, so the stock builder cannot even be
    constructed without TensorFlow. This subclass declares the same features with numpy dtypes,
    so it reads a coco_captions/2014 directory prepared by TFDS (and `tfds.testing.mock_data`).
    """
    return _coco_class()(data_dir=data_dir, file_format="array_record")


_COCO_CLS = None


def _coco_class():
    global _COCO_CLS
    if _COCO_CLS is not None:
        return _COCO_CLS
    import tensorflow_datasets as tfds
    from tensorflow_datasets.object_detection import coco_captions

    class CocoCaptions(coco_captions.CocoCaptions, skip_registration=True):
        name = "coco_captions"

        def _info(self):
            features = {
                "image": tfds.features.Image(encoding_format="jpeg"),
                "image/filename": tfds.features.Text(),
                "image/id": np.int64,
                "objects": tfds.features.Sequence({
                    "id": np.int64, "area": np.int64, "bbox": tfds.features.BBoxFeature(),
                    "label": tfds.features.ClassLabel(num_classes=80), "is_crowd": np.bool_}),
                "captions": tfds.features.Sequence({"text": np.str_, "id": np.int64}),
            }
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(features),
                                         homepage="http://cocodataset.org/#home")

    _COCO_CLS = CocoCaptions
    return CocoCaptions
