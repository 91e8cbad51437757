"""Benchmark task registry: suites, open_clip columns, TFDS builders, shipped prompts (offline)."""
import json

import pytest
import tensorflow_datasets as tfds

from mmfm.data.catalog import coco_captions_builder
from mmfm.evals import tasks
from mmfm.evals.datasets import load_prompts, prompts_path

# Header of docs/openclip_results.csv in mlfoundations/open_clip.
OPENCLIP_HEADER = (
    "name,pretrained,params (M),FLOPs (B),Average perf. on 38 datasets,ImageNet 1k,Caltech-101,"
    "CIFAR-10,CIFAR-100,CLEVR Counts,CLEVR Distance,Country211,Describable Textures,EuroSAT,"
    "FGVC Aircraft,Food-101,GTSRB,ImageNet Sketch,ImageNet v2,ImageNet-A,ImageNet-O,ImageNet-R,"
    "KITTI Vehicle Distance,MNIST,ObjectNet,Oxford Flowers-102,Oxford-IIIT Pet,Pascal VOC 2007,"
    "PatchCamelyon,Rendered SST2,RESISC45,Stanford Cars,STL-10,SUN397,SVHN,Flickr,MSCOCO,WinoGAViL,"
    "iWildCam,Camelyon17,FMoW,Dollar Street,GeoDE")
TASK_COLUMNS = OPENCLIP_HEADER.split(",")[5:]  # after name .. the 38-task average
IMAGENET_VARIANTS = ("imagenet1k", "imagenetv2", "imagenet_sketch", "imagenet-a", "imagenet-r")
WITH_TFDS = [t for t in tasks.TASKS.values() if t.tfds_name is not None]
WITHOUT_TFDS = [t for t in tasks.TASKS.values() if t.tfds_name is None]


def builder(name, data_dir):
    """The catalog builder, constructed offline (nothing is prepared in `data_dir`)."""
    if name == "coco_captions":  # its stock TFDS code imports TensorFlow
        return coco_captions_builder(str(data_dir))
    return tfds.builder(name, data_dir=str(data_dir))


@pytest.fixture(scope="module")
def catalog():
    return set(tfds.list_builders(with_community_datasets=False))


def test_every_task_is_well_formed():
    assert len(tasks.TASKS) == len({t.name for t in tasks.TASKS.values()})
    for name, t in tasks.TASKS.items():
        assert t.name == name
        assert t.kind in tasks.KINDS, t
        assert t.metric in tasks.METRICS, t
        assert t.suites and set(t.suites) <= set(tasks.SUITES), t
        assert (t.group_key is not None) == t.metric.startswith("worst_group"), t
        if t.kind == "retrieval":
            assert t.metric.startswith("retrieval_") or name == "misc/winogavil", t
        # Prompts ship exactly for the zero-shot tasks whose data TFDS provides.
        assert bool(t.prompts) == (t.kind == "zeroshot" and t.tfds_name is not None), t
        tfds.core.ReadInstruction.from_spec(t.split)  # valid TFDS split syntax


def test_suites_resolve_and_match_task_suites():
    for suite, names in tasks.SUITES.items():
        assert [t.name for t in tasks.suite_tasks(suite)] == list(names)
        assert len(set(names)) == len(names)
        assert all(suite in tasks.get_task(n).suites for n in names)
    for t in tasks.TASKS.values():
        assert all(t.name in tasks.SUITES[s] for s in t.suites)


def test_datacomp_suite_is_the_csv_task_columns_in_order():
    assert len(TASK_COLUMNS) == 38
    datacomp = tasks.suite_tasks("datacomp")
    assert [t.column for t in datacomp] == TASK_COLUMNS
    # Tasks outside open_clip's CSV have no column; columns name one task each.
    columns = [t.column for t in tasks.TASKS.values() if t.column]
    assert sorted(columns) == sorted(TASK_COLUMNS)
    assert all(t.column == "" for t in tasks.TASKS.values() if "datacomp" not in t.suites)


def test_clip_benchmark_suite_names():
    names = set(tasks.SUITES["clip_benchmark"])
    assert {"imagenet1k", "vtab/eurosat", "vtab/dmlab", "vtab/smallnorb_label_azimuth",
            "mscoco_captions", "flickr8k", "flickr30k", "fer2013"} <= names
    assert not names & {"food101", "misc/winogavil", "wilds/fmow", "fairness/geode"}
    assert all(tasks.get_task(n).metric != "retrieval_recall@5" for n in tasks.SUITES["datacomp"])


def test_main_metrics_are_datacomps():
    """tasklist.yml's main_metric (acc1 where it names none) for the tasks that differ."""
    expected = {name: "mean_per_class_recall"
                for name in ("vtab/caltech101", "fgvc_aircraft", "vtab/flowers", "vtab/pets")}
    expected.update({
        "flickr30k": "retrieval_recall@1", "mscoco_captions": "retrieval_recall@1",
        "misc/winogavil": "jaccard_score", "wilds/iwildcam": "macro_f1",
        "wilds/fmow": "worst_group_top1", "fairness/dollar_street": "worst_group_top5",
        "fairness/geode": "worst_group_top1"})
    for t in tasks.suite_tasks("datacomp"):
        assert t.metric == expected.get(t.name, "top1"), t.name
    groups = {"wilds/fmow": "region", "fairness/dollar_street": "income_ds",
              "fairness/geode": "region"}
    assert {t.name: t.group_key for t in tasks.TASKS.values() if t.group_key} == groups


def test_splits_are_the_benchmarks_test_sets():
    expected = {"imagenet1k": "validation", "food101": "validation",
                "vtab/eurosat": "train[80%:]", "vtab/resisc45": "train[80%:]",
                "vtab/dsprites_label_orientation": "train[90%:]",
                "vtab/dsprites_label_x_position": "train[90%:]",
                "vtab/smallnorb_label_azimuth": "test[50%:]",
                "vtab/smallnorb_label_elevation": "test[50%:]",
                "vtab/clevr_count_all": "validation",
                "vtab/clevr_closest_object_distance": "validation"}
    for t in tasks.TASKS.values():
        assert t.split == expected.get(t.name, "test"), t.name


def test_docstring_example():
    task = tasks.get_task("vtab/eurosat")
    assert (task.column, task.tfds_name, task.split) == ("EuroSAT", "eurosat/rgb", "train[80%:]")
    classnames, templates = load_prompts(task.prompts)
    assert len(classnames) == 10 and "a satellite photo of {}." in templates
    assert tasks.get_task("mscoco_captions").tfds_name == "coco_captions"


@pytest.mark.parametrize("task", WITH_TFDS, ids=lambda t: t.name)
def test_tfds_builder_label_key_and_prompts(task, tmp_path):
    features = builder(task.tfds_name, tmp_path).info.features
    if task.kind == "retrieval":
        assert "captions" in features
        return
    if task.derived == tasks.OBJECT_CROPS:  # one example per object: the objects' ClassLabel
        label = features["objects"]["label"]
        assert len(load_prompts(task.prompts)[0]) == label.num_classes
        assert json.load(open(prompts_path(task.prompts)))["label_ids"] == label.names
        return
    if task.derived:  # labels computed from annotations: no ClassLabel, a class count instead
        from mmfm.evals.derived_labels import NUM_CLASSES
        assert len(load_prompts(task.prompts)[0]) == NUM_CLASSES[task.derived], task.name
        return
    label = features[task.label_key]
    assert isinstance(label, tfds.features.ClassLabel), (task.name, task.label_key)
    if task.name in IMAGENET_VARIANTS:
        assert label.num_classes == 1000 and task.prompts == "imagenet2012"
    classnames, templates = load_prompts(task.prompts)
    assert len(classnames) == label.num_classes, task.name
    assert all(c.strip() for c in classnames) and len(set(classnames)) == len(classnames)
    assert 2 <= len(templates) and all(t.count("{}") == 1 for t in templates)
    with open(prompts_path(task.prompts)) as f:
        meta = json.load(f)
    assert meta["label_key"] == task.label_key
    if "label_ids" in meta:
        assert len(meta["label_ids"]) == label.num_classes
        # Unprepared catalogs may only know placeholder ids (stl10: "0".."9").
        if label.names != [str(i) for i in range(label.num_classes)]:
            assert meta["label_ids"] == label.names, task.name


def test_tasks_without_tfds_say_why(catalog):
    for t in WITHOUT_TFDS:
        assert t.reason, t.name
        assert not tasks.available(t) and not tasks.available(t.name)
        if t.reason == tasks.NO_BUILDER:  # the claim: no catalog builder under its name
            short = t.name.split("/")[-1].replace("-", "_")
            assert short not in catalog and short.replace("_", "") not in catalog, t.name
    for t in WITH_TFDS:
        assert t.reason == "" and tasks.available(t)
    assert tasks.get_task("voc2007").derived == tasks.OBJECT_CROPS and "voc" in catalog
    for name in ("vtab/clevr_count_all", "vtab/clevr_closest_object_distance",
                 "vtab/kitti_closest_vehicle_distance"):
        task = tasks.get_task(name)
        assert task.derived and task.tfds_name.split(":")[0] in catalog, name


@pytest.mark.parametrize("name", ["dollar_street", "geode", "fer2013", "gtsrb", "country211",
                                  "fgvc_aircraft", "flickr30k", "objectnet", "imagenet_o",
                                  "winogavil", "iwildcam", "fmow", "camelyon17"])
def test_claimed_missing_builders_are_missing(name, tmp_path):
    with pytest.raises(tfds.core.DatasetNotFoundError):
        tfds.builder(name, data_dir=str(tmp_path))


def test_get_task_and_suite_tasks_errors_name_the_input():
    with pytest.raises(ValueError, match=r"'imagenet_1k'.*imagenet1k"):
        tasks.get_task("imagenet_1k")
    with pytest.raises(ValueError, match=r"'vtab'.*clip_benchmark.*datacomp"):
        tasks.suite_tasks("vtab")
    with pytest.raises(ValueError, match="'nope'"):
        tasks.available("nope")
