"""The data of a benchmark task (`mmfm.evals.tasks.Task`): prepared TFDS data, never a download.

    data = load_task_classification(get_task("vtab/eurosat"), data_dir="/data/tfds")
    data = load_task_retrieval(get_task("mscoco_captions"), data_dir="/data/tfds")

A task with a TFDS catalog builder reads `data_dir/<builder>/<config>/<version>` (ArrayRecord, as
`tfds.builder(name, data_dir=D, file_format="array_record").download_and_prepare()` writes it).
A task without one reads a TFDS dataset directory the user prepared under the task's own name,
`data_dir/<task name>/<version>/` (e.g. `data_dir/fer2013/1.0.0`, `data_dir/flickr30k/1.0.0`),
with a ClassLabel `label_key` (class names from the ClassLabel, templates from the task's prompts
file when it has one) or captions. Either way, data that is not there raises `DatasetMissing`,
which a suite reports as missing.
"""
from __future__ import annotations

import logging
from typing import Optional

from mmfm import fileio
from mmfm.data.catalog import coco_captions_builder
from mmfm.evals import datasets as ds
from mmfm.evals.tasks import OBJECT_CROPS

__all__ = ["DEFAULT_TEMPLATES", "DatasetMissing", "load_task_classification",
           "load_task_retrieval", "open_prepared_tfds", "user_prepared_dir"]

log = logging.getLogger("mmfm")
# For a user-prepared dataset without a prompts file of this project.
DEFAULT_TEMPLATES = ("a photo of a {}.", "a photo of the {}.")


class DatasetMissing(FileNotFoundError):
    """A benchmark dataset that is not prepared under the data directory (a suite reports it)."""


def user_prepared_dir(data_dir: Optional[str], task_name: str) -> Optional[str]:
    """`data_dir/<task_name>/<newest version>` when it holds a dataset_info.json, else None."""
    if not data_dir:
        return None
    base = fileio.join(data_dir, task_name)
    if not fileio.isdir(base):
        return None
    versions = [v for v in fileio.listdir(base)
                if fileio.isfile(fileio.join(base, v, "dataset_info.json"))]
    if not versions:
        return None
    newest = max(versions, key=lambda v: tuple(int(p) if p.isdigit() else -1 for p in v.split(".")))
    return fileio.join(base, newest)


def open_prepared_tfds(tfds_name: str, split: str, data_dir: Optional[str]):
    """Random-access records of a TFDS catalog dataset; `DatasetMissing` when it is not prepared.

    Never downloads: benchmark data is prepared beforehand, and a missing dataset is reported as
    missing rather than fetched in the middle of an evaluation.
    """
    import tensorflow_datasets as tfds

    def builder():
        if tfds_name == "coco_captions":  # the TF-free builder (the stock one needs TensorFlow)
            return coco_captions_builder(data_dir or None)
        return tfds.builder(tfds_name, data_dir=data_dir or None)

    try:
        if tfds_name == "coco_captions":
            return builder().as_data_source(split=split)
        return tfds.data_source(tfds_name, split=split, data_dir=data_dir or None, download=False)
    except Exception as e:  # noqa: BLE001 - TFDS raises several types for "not there"
        try:
            prepared = builder().is_prepared()
        except Exception:  # noqa: BLE001 - an unknown name or config is as missing as no files
            prepared = False
        if prepared:
            raise
        where = data_dir or "TFDS's default data dir"
        raise DatasetMissing(
            f"{tfds_name} is not prepared in {where}: run tfds.builder({tfds_name!r}, "
            f"data_dir=..., file_format='array_record').download_and_prepare()") from e


def _source(task, data_dir: Optional[str]):
    """(records, builder info or None) of the task's split."""
    if task.tfds_name is not None:
        return open_prepared_tfds(task.tfds_name, task.split, data_dir), None
    path = user_prepared_dir(data_dir, task.name)
    if path is None:
        raise DatasetMissing(f"{task.reason}; to evaluate it, prepare a TFDS dataset directory at "
                             f"{fileio.join(data_dir or 'DATA_DIR', task.name)}/<version>/")
    import tensorflow_datasets as tfds

    builder = tfds.builder_from_directory(path)
    if task.split not in builder.info.splits:
        raise ValueError(f"{path}: no split {task.split!r} (has {sorted(builder.info.splits)}); "
                         f"the task {task.name} evaluates {task.split!r}")
    return builder.as_data_source(split=task.split), builder.info


def load_task_classification(task, data_dir: Optional[str] = None,
                             max_examples: Optional[int] = None) -> ds.ClassificationData:
    """Labelled images of a zero-shot task (see the module docstring)."""
    src, info = _source(task, data_dir)
    where = f"{task.name} ({task.tfds_name or 'user-prepared'}, split {task.split!r})"
    if info is None:  # catalog data: the project's class names and templates
        names, templates = ds.load_prompts(task.prompts)
        if task.derived == OBJECT_CROPS:  # VOC 2007: every object box is an example
            from mmfm.evals.object_crops import ObjectCropSource

            crops = ObjectCropSource(src)
            if crops.skipped_images or crops.skipped_boxes:
                log.warning("%s: skipped %d image(s) with inconsistent object fields and %d "
                            "box(es) with no area", where, crops.skipped_images, crops.skipped_boxes)
            if not len(crops):
                raise ValueError(f"{where}: none of its {len(src)} images has a usable object box")
            return ds.classification_from_source(crops, where, "label", names, templates,
                                                 max_examples)
        if task.derived:
            return _derived_classification(task, src, where, names, templates, max_examples)
        return ds.classification_from_source(src, where, task.label_key, names, templates,
                                             max_examples, names_from=ds.prompts_path(task.prompts))
    feature = info.features[task.label_key] if task.label_key in info.features else None
    if not hasattr(feature, "names"):
        raise ValueError(f"{where}: needs a ClassLabel feature {task.label_key!r} (features: "
                         f"{sorted(info.features)})")
    names = tuple(n.replace("_", " ") for n in feature.names)
    templates = ds.load_prompts(task.prompts)[1] if task.prompts else DEFAULT_TEMPLATES
    return ds.classification_from_source(src, where, task.label_key, names, templates,
                                         max_examples)


def _derived_classification(task, src, where: str, names, templates,
                            max_examples: Optional[int]) -> ds.ClassificationData:
    """Labels computed from each record's annotations; a record they do not fit is skipped and
    counted (a CLEVR scene outside 3-10 objects cannot be a count class)."""
    import numpy as np

    from mmfm.evals.derived_labels import DerivedLabelSource

    labelled = DerivedLabelSource(src, task.derived)
    n = len(src) if not max_examples else min(len(src), int(max_examples))
    keep, labels = [], []
    for i in range(n):
        try:
            labels.append(labelled[i]["label"])
        except ValueError:
            continue
        keep.append(i)
    if n - len(keep):
        log.warning("%s: %d of %d records have no %s label (annotations out of range): skipped",
                    where, n - len(keep), n, task.derived)
    if not keep:
        raise ValueError(f"{where}: none of its {n} records has a {task.derived} label")
    return ds.ClassificationData(ds.ImageSource(src, np.asarray(keep)),
                                 np.asarray(labels, np.int32), tuple(names), tuple(templates))


def load_task_retrieval(task, data_dir: Optional[str] = None,
                        max_examples: Optional[int] = None) -> ds.RetrievalData:
    """Captioned images of a retrieval task (see the module docstring)."""
    src, _ = _source(task, data_dir)
    return ds.retrieval_from_source(src, f"{task.name} split {task.split!r}", max_examples)
