"""Benchmark task registry: the zero-shot and retrieval tasks of CLIP_benchmark and DataComp.

    from mmfm.evals import tasks
    from mmfm.evals.datasets import load_prompts

    task = tasks.get_task("vtab/eurosat")
    task.column, task.tfds_name, task.split      # "EuroSAT", "eurosat/rgb", "train[80%:]"
    classnames, templates = load_prompts(task.prompts)
    for t in tasks.suite_tasks("datacomp"):      # the 38 tasks, in open_clip's CSV column order
        print(t.name, t.column, t.metric, tasks.available(t))

Names are the benchmarks' own: LAION CLIP_benchmark's (`benchmark/datasets.txt` plus its
retrieval sets) for tasks it has, DataComp's `tasklist.yml` keys for DataComp-only tasks.
`column` is the column of open_clip's `docs/openclip_results.csv` ("" for tasks it does not
report). `metric` is the number that column reports (DataComp's main metric); for tasks only in
CLIP_benchmark it is CLIP_benchmark's default number. `split` is the TFDS split that matches the
benchmark's test set (VTAB splits for `vtab/*`, e.g. EuroSAT's test set is the last 20% of the
only TFDS split).

Tasks with `tfds_name=None` have no TFDS catalog builder (or need labels this project does not
derive yet); `reason` says which. They are listed so suites are complete; a user can still
prepare their data as a TFDS dataset directory of their own (or as a corpus with
`mmfm data prepare`, see `mmfm.evals.datasets`). Class names and templates of zero-shot tasks
with TFDS data live in `mmfm/evals/data/<prompts>.json`.
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Union

__all__ = ["KINDS", "METRICS", "SUITES", "TASKS", "Task", "available", "get_task", "suite_tasks"]

KINDS = ("zeroshot", "retrieval")
METRICS = {
    "top1": "top-1 accuracy",
    "mean_per_class_recall": "top-1 recall averaged over classes (balanced accuracy)",
    "retrieval_recall@1": "mean of image->text and text->image recall@1 (DataComp's mean_recall@1)",
    "retrieval_recall@5": "mean of image->text and text->image recall@5 (CLIP_benchmark's k)",
    "worst_group_top1": "top-1 accuracy of the worst group of `group_key`",
    "worst_group_top5": "top-5 accuracy of the worst group of `group_key`",
    "macro_f1": "F1 score averaged over classes (WILDS iWildCam)",
    "jaccard_score": "Jaccard index of chosen vs. associated images (WinoGAViL, 10-12 candidates)",
}

NO_BUILDER = "no TFDS catalog builder"
OBJECT_CROPS = "object_crops"  # `derived`: every object box is an example (mmfm.evals.object_crops)
BOTH = ("clip_benchmark", "datacomp")
CB = ("clip_benchmark",)
DC = ("datacomp",)


@dataclasses.dataclass(frozen=True)
class Task:
    """One benchmark task: where its data is (TFDS), what is scored and where it is reported."""
    name: str  # the benchmark's task name
    column: str  # open_clip results-CSV column; "" when the CSV has none
    kind: str  # one of KINDS
    metric: str  # one of METRICS: the number the benchmark reports
    tfds_name: Optional[str]  # TFDS catalog builder (with config), None when there is none
    split: str = "test"  # TFDS split evaluated (slicing syntax allowed)
    label_key: str = "label"  # TFDS feature holding the class id (zero-shot)
    group_key: Optional[str] = None  # feature with group labels for worst-group metrics
    reason: str = ""  # why tfds_name is None
    suites: tuple[str, ...] = ()
    prompts: str = ""  # stem of mmfm/evals/data/<prompts>.json (zero-shot tasks with TFDS data)
    note: str = ""  # where this project's setup differs from the benchmark's
    # Rank only the classes that occur in the split: ImageNet-A / -R are labelled with ImageNet's
    # 1000 ids but the benchmarks score them among their own 200 classes (all present in the
    # full splits; with --max_examples, among those the examples have).
    classes_present: bool = False
    # Labels computed from annotations: a key of mmfm.evals.derived_labels, or OBJECT_CROPS.
    derived: str = ""


def _zs(name: str, column: str, tfds_name: Optional[str], prompts: str = "", **kw) -> Task:
    """A zero-shot task scored by top-1 unless `metric` is given."""
    kw.setdefault("metric", "top1")
    if tfds_name is None:
        kw.setdefault("reason", NO_BUILDER)
    return Task(name, column, "zeroshot", tfds_name=tfds_name, prompts=prompts, **kw)


_ALL = [
    # --- DataComp's 38, in open_clip's CSV column order ---
    _zs("imagenet1k", "ImageNet 1k", "imagenet2012", "imagenet2012", split="validation",
        suites=BOTH),
    _zs("vtab/caltech101", "Caltech-101", "caltech101", "caltech101",
        metric="mean_per_class_recall", suites=BOTH),
    # CLIP_benchmark's list names it vtab/cifar10 (same 10k test images); DataComp: cifar10.
    _zs("cifar10", "CIFAR-10", "cifar10", "cifar10", suites=BOTH),
    _zs("vtab/cifar100", "CIFAR-100", "cifar100", "cifar100", suites=BOTH),
    # VTAB's CLEVR test set is TFDS "validation" (TFDS "test" has no objects).
    # Labels derived from the object annotations as VTAB defines them (derived_labels).
    _zs("vtab/clevr_count_all", "CLEVR Counts", "clevr", "clevr_count_all", split="validation",
        derived="clevr_count_all", suites=BOTH),
    _zs("vtab/clevr_closest_object_distance", "CLEVR Distance", "clevr",
        "clevr_closest_object_distance", split="validation",
        derived="clevr_closest_object_distance", suites=BOTH),
    _zs("country211", "Country211", None, suites=BOTH),
    _zs("vtab/dtd", "Describable Textures", "dtd", "dtd", suites=BOTH),
    _zs("vtab/eurosat", "EuroSAT", "eurosat/rgb", "eurosat", split="train[80%:]", suites=BOTH),
    _zs("fgvc_aircraft", "FGVC Aircraft", None, metric="mean_per_class_recall", suites=BOTH),
    _zs("food101", "Food-101", "food101", "food101", split="validation", suites=DC),
    _zs("gtsrb", "GTSRB", None, suites=BOTH),
    _zs("imagenet_sketch", "ImageNet Sketch", "imagenet_sketch", "imagenet2012", suites=BOTH),
    _zs("imagenetv2", "ImageNet v2", "imagenet_v2/matched-frequency", "imagenet2012",
        suites=BOTH),
    _zs("imagenet-a", "ImageNet-A", "imagenet_a", "imagenet2012", classes_present=True,
        suites=BOTH),
    _zs("imagenet-o", "ImageNet-O", None, suites=BOTH),
    _zs("imagenet-r", "ImageNet-R", "imagenet_r", "imagenet2012", classes_present=True,
        suites=BOTH),
    # VTAB pins kitti 3.1.0: later versions changed the devkit mapping that splits the frames.
    _zs("vtab/kitti_closest_vehicle_distance", "KITTI Vehicle Distance", "kitti:3.1.0",
        "kitti_closest_vehicle_distance", derived="kitti_closest_vehicle_distance",
        suites=BOTH),
    _zs("mnist", "MNIST", "mnist", "mnist", suites=BOTH),
    _zs("objectnet", "ObjectNet", None, suites=BOTH),
    _zs("vtab/flowers", "Oxford Flowers-102", "oxford_flowers102", "oxford_flowers102",
        metric="mean_per_class_recall", suites=BOTH),
    _zs("vtab/pets", "Oxford-IIIT Pet", "oxford_iiit_pet", "oxford_iiit_pet",
        metric="mean_per_class_recall", suites=BOTH),
    # One example per (non-difficult) object crop of the VOC 2007 test images.
    _zs("voc2007", "Pascal VOC 2007", "voc/2007", "voc2007", derived=OBJECT_CROPS, suites=BOTH),
    _zs("vtab/pcam", "PatchCamelyon", "patch_camelyon", "patch_camelyon", suites=BOTH),
    _zs("renderedsst2", "Rendered SST2", None, suites=BOTH),
    _zs("vtab/resisc45", "RESISC45", "resisc45", "resisc45", split="train[80%:]", suites=BOTH),
    _zs("cars", "Stanford Cars", "cars196", "cars196", suites=BOTH),
    _zs("stl10", "STL-10", "stl10", "stl10", suites=BOTH),
    _zs("sun397", "SUN397", "sun397", "sun397", suites=BOTH,
        note="the benchmarks score all 108,754 images (no split); TFDS has a fixed test split"),
    _zs("vtab/svhn", "SVHN", "svhn_cropped", "svhn_cropped", suites=BOTH),
    Task("flickr30k", "Flickr", "retrieval", "retrieval_recall@1", None, reason=NO_BUILDER,
         suites=BOTH),
    # Karpathy 5k test split; coco_captions is built TF-free by mmfm.data.catalog.
    Task("mscoco_captions", "MSCOCO", "retrieval", "retrieval_recall@1", "coco_captions",
         suites=BOTH),
    # Pick the images associated with a cue among 10-12 candidates: a retrieval-like task.
    Task("misc/winogavil", "WinoGAViL", "retrieval", "jaccard_score", None, reason=NO_BUILDER,
         suites=DC),
    _zs("wilds/iwildcam", "iWildCam", None, metric="macro_f1", suites=DC),
    _zs("wilds/camelyon17", "Camelyon17", None, suites=DC),
    _zs("wilds/fmow", "FMoW", None, metric="worst_group_top1", group_key="region", suites=DC),
    _zs("fairness/dollar_street", "Dollar Street", None, metric="worst_group_top5",
        group_key="income_ds", suites=DC),
    _zs("fairness/geode", "GeoDE", None, metric="worst_group_top1", group_key="region",
        suites=DC),
    # --- CLIP_benchmark only (not in open_clip's CSV) ---
    _zs("fer2013", "", None, suites=CB),
    _zs("vtab/diabetic_retinopathy", "", "diabetic_retinopathy_detection/btgraham-300",
        "diabetic_retinopathy_detection", suites=CB),
    _zs("vtab/dmlab", "", "dmlab", "dmlab", suites=CB),
    # dSprites has only a train split: VTAB tests on its last 10%, raw (unbinned) labels.
    _zs("vtab/dsprites_label_orientation", "", "dsprites", "dsprites_label_orientation",
        split="train[90%:]", label_key="label_orientation", suites=CB),
    _zs("vtab/dsprites_label_x_position", "", "dsprites", "dsprites_label_x_position",
        split="train[90%:]", label_key="label_x_position", suites=CB),
    # VTAB keeps the first half of smallNORB's test split for validation.
    _zs("vtab/smallnorb_label_azimuth", "", "smallnorb", "smallnorb_label_azimuth",
        split="test[50%:]", label_key="label_azimuth", suites=CB),
    _zs("vtab/smallnorb_label_elevation", "", "smallnorb", "smallnorb_label_elevation",
        split="test[50%:]", label_key="label_elevation", suites=CB),
    Task("flickr8k", "", "retrieval", "retrieval_recall@5", None, reason=NO_BUILDER, suites=CB),
]

TASKS: dict[str, Task] = {t.name: t for t in _ALL}
# Registry order: for datacomp that is open_clip's CSV column order.
SUITES: dict[str, tuple[str, ...]] = {
    suite: tuple(t.name for t in _ALL if suite in t.suites)
    for suite in ("clip_benchmark", "datacomp")}


def get_task(name: str) -> Task:
    """The task called `name` (ValueError listing the valid names otherwise)."""
    if name not in TASKS:
        raise ValueError(f"unknown benchmark task {name!r}; valid: {sorted(TASKS)}")
    return TASKS[name]


def suite_tasks(suite: str) -> list[Task]:
    """The tasks of a suite, in the suite's order."""
    if suite not in SUITES:
        raise ValueError(f"unknown benchmark suite {suite!r}; valid: {sorted(SUITES)}")
    return [TASKS[n] for n in SUITES[suite]]


def available(task: Union[Task, str]) -> bool:
    """Whether the task's data comes from a TFDS catalog builder."""
    task = get_task(task) if isinstance(task, str) else task
    return task.tfds_name is not None
