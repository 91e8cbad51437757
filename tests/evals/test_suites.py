"""`mmfm eval --suite`: every benchmark adapter on tfds mock data, the shapes suite on a real run,
and the results CSV in open_clip's layout."""
import csv
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

from mmfm.evals import standalone, suite_report, tasks
from mmfm.evals.shapes_suite import MIN_GROUP
from mmfm.evals.suites import SHAPES_COLUMNS, run_suite

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# open_clip's docs/openclip_results.csv starts with these columns.
OPENCLIP_LEAD = ["name", "pretrained", "params (M)", "FLOPs (B)"]


@pytest.fixture(scope="module")
def tiny_model(tiny_run):
    from mmfm.evals.model_io import EvalModel

    return EvalModel.from_checkpoint(tiny_run[0], batch_size=32)


def _read_csv(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


@pytest.mark.parametrize("suite", ["clip_benchmark", "datacomp"])
def test_benchmark_suite_runs_every_adapter_on_mock_data(tiny_model, tmp_path, suite):
    with tfds.testing.mock_data(num_examples=6):
        result = run_suite(suite, tiny_model, data_dir=str(tmp_path / "tfds"))
    expected = tasks.suite_tasks(suite)
    assert [r["task"] for r in result["rows"]] == [t.name for t in expected]
    for row, task in zip(result["rows"], expected):
        if task.tfds_name is None:  # no TFDS builder: reported with the reason, not dropped
            assert row["status"] == "missing" and row["detail"].startswith(task.reason)
            assert task.reason and task.name in row["detail"]  # where to put it instead
        elif task.derived and row["status"] == "error":
            # Mock annotations are random lists (a CLEVR scene of 40 objects, KITTI types and
            # locations of different lengths): every record skipped, the row says so.
            assert "has a" in row["detail"] and task.name in row["detail"], row
        else:
            assert row["status"] == "ok", row
            assert 0.0 <= row["value"] <= 1.0 and row["examples"] > 0, row
    assert result["missing"] and result["average"] is None
    present = [r["value"] for r in result["rows"] if r["status"] == "ok"]
    assert result["average_of_present"] == pytest.approx(np.mean(present))

    out = tmp_path / "out"
    table = suite_report.write_suite_results(result, str(out), name="tiny", pretrained="step4",
                                             params_m=1.0, flops_b=None)
    assert "not computed" in table and f"{len(result['missing'])} of" in table
    rows = _read_csv(out / f"{suite}_results.csv")
    header = rows[0]
    assert header[:4] == OPENCLIP_LEAD
    assert header[4] == f"Average perf. on {len(expected)} datasets"
    assert header[5:] == [t.column or t.name for t in expected]  # CLIP_benchmark-only: by name
    assert rows[1][:5] == ["tiny", "step4", "1.00", "", ""]  # no average with tasks missing
    for row, cell in zip(result["rows"], rows[1][5:]):
        assert (cell == "") == (row["status"] != "ok"), (row, cell)
        if cell:
            assert float(cell) == pytest.approx(row["value"], abs=5e-5)


def test_unprepared_dataset_is_missing_not_downloaded(tiny_model, tmp_path):
    result = run_suite("clip_benchmark", tiny_model, data_dir=str(tmp_path / "empty"))
    assert all(r["status"] == "missing" for r in result["rows"])
    cifar = next(r for r in result["rows"] if r["task"] == "cifar10")
    assert "not prepared in" in cifar["detail"] and "download_and_prepare" in cifar["detail"]
    assert not (tmp_path / "empty" / "downloads").exists()


def test_csv_rows_append_replace_and_refuse_another_suite(tmp_path):
    def result(values, suite="shapes"):
        rows = [{"task": f"t{i}", "column": f"T{i}", "metric": "top1", "status": "ok", "value": v}
                for i, v in enumerate(values)]
        return {"suite": suite, "rows": rows, "num_tasks": len(rows), "average": float(
            np.mean(values)), "average_of_present": float(np.mean(values)), "missing": [],
            "seconds": 1.0, "metrics": {}}
    path = str(tmp_path / "results.csv")
    suite_report.write_suite_results(result([0.5, 0.25]), str(tmp_path / "a"), name="m1",
                                     pretrained="p", csv_path=path, params_m=10, flops_b=2.5)
    suite_report.write_suite_results(result([1.0, 0.0]), str(tmp_path / "b"), name="m2",
                                     pretrained="p", csv_path=path)
    suite_report.write_suite_results(result([0.75, 0.25]), str(tmp_path / "c"), name="m1",
                                     pretrained="p", csv_path=path, params_m=10, flops_b=2.5)
    rows = _read_csv(path)
    assert rows[0] == OPENCLIP_LEAD + ["Average perf. on 2 datasets", "T0", "T1"]
    assert rows[1:] == [["m2", "p", "", "", "0.5000", "1.0000", "0.0000"],
                        ["m1", "p", "10.00", "2.50", "0.5000", "0.7500", "0.2500"]]
    before = open(path).read()
    with pytest.raises(ValueError, match="results.csv: its columns are not this suite's"):
        suite_report.write_suite_results(result([0.1, 0.2, 0.3]), str(tmp_path / "d"), name="m3",
                                         csv_path=path)
    assert open(path).read() == before


def test_shapes_suite_on_a_run(tiny_run, tiny_model, tmp_path):
    workdir, data_dir, config = tiny_run
    before = sorted(os.listdir(workdir))
    out = str(tmp_path / "suite")
    result = standalone.suite_on_checkpoint("shapes", workdir, out=out)
    assert sorted(os.listdir(workdir)) == before  # read-only on the run
    metrics = result["metrics"]
    assert [r["column"] for r in result["rows"]] == [c for c, _ in SHAPES_COLUMNS]
    assert all(r["status"] == "ok" and 0 <= r["value"] <= 1 for r in result["rows"])
    assert result["average"] == pytest.approx(np.mean([r["value"] for r in result["rows"]]))
    counts = result["counts"]
    for key, g in result["groups"].items():  # per-group counts cover every single-object image
        assert sum(v["count"] for v in g["groups"].values()) == counts["single_object_test"], key
        # The worst of the groups with enough images (all of them when none has MIN_GROUP).
        ranked = [v for v in g["groups"].values() if v["count"] >= MIN_GROUP] or g["groups"].values()
        assert g["worst"] == min(v["accuracy"] for v in ranked), key
    for prefix in ("zeroshot_shape", "zeroshot_color", "probe_shape", "probe_color"):
        assert metrics[f"{prefix}/worst_group"] <= metrics[f"{prefix}/top1"]
    edits = [k for k in metrics if k.startswith("compositional/") and
             k.split("/")[1] not in ("mean", "overall")]
    assert len(edits) == 8
    assert metrics["compositional/mean"] == pytest.approx(np.mean([metrics[k] for k in edits]))
    assert counts["compositional_pairs"] >= 4 * counts["test_images"]  # 3 replaces + add always
    for attribute in ("color", "shape"):
        assert 0 < metrics[f"dense_{attribute}/accuracy"] <= 1
    saved = json.load(open(os.path.join(out, "suite_results.json")))
    assert saved["pretrained"] == "step4" and saved["metrics"] == metrics
    rows = _read_csv(os.path.join(out, "shapes_results.csv"))
    assert rows[0][:5] == OPENCLIP_LEAD + [f"Average perf. on {len(SHAPES_COLUMNS)} datasets"]
    assert float(rows[1][2]) > 0 and float(rows[1][3]) > 0  # params (M), FLOPs (B) measured
    assert "| Compositional |" in open(os.path.join(out, "suite_results.md")).read()


@pytest.mark.parametrize("args, message", [
    (["--checkpoint", "RUN", "--suite", "imagenet"], "--suite 'imagenet' is not a suite"),
    (["--model", "ViT-B-32", "--suite", "shapes"], "--model needs --out"),
])
def test_suite_mistakes_are_one_line(tiny_run, args, message):
    args = [tiny_run[0] if a == "RUN" else a for a in args]
    proc = subprocess.run([sys.executable, "-c", "from mmfm.cli import main; main()", "eval", *args],
                          cwd=ROOT, env=dict(os.environ, JAX_PLATFORMS="cpu"), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode != 0
    assert message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-2000:]


def _random_png(rng) -> bytes:
    """A random 16x16 image as PNG bytes (encoding arrays in TFDS would need TensorFlow)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


class _UserBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """A user's own TFDS dataset (one "test" split) for a task TFDS has no builder for."""
    VERSION = tfds.core.Version("1.0.0")
    FEATURES: dict = {}

    def _info(self):
        image = tfds.features.Image(shape=(16, 16, 3), encoding_format="png")
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(
            {"image": image, **self.FEATURES}))

    def _split_generators(self, dl_manager):
        return {"test": self._generate_examples()}


class _UserFer2013(_UserBuilder, skip_registration=True):
    name = "fer2013"
    FEATURES = {"label": tfds.features.ClassLabel(names=["angry", "happy_face", "sad"])}

    def _generate_examples(self):
        rng = np.random.default_rng(0)
        for i in range(9):
            yield i, {"image": _random_png(rng), "label": i % 3}


def test_a_user_prepared_dataset_fills_a_task_without_builder(tiny_model, tmp_path):
    from mmfm.evals import task_data

    _UserFer2013(data_dir=str(tmp_path), file_format="array_record").download_and_prepare()
    task = tasks.get_task("fer2013")
    assert task.tfds_name is None
    data = task_data.load_task_classification(task, str(tmp_path))
    assert data.classnames == ("angry", "happy face", "sad")
    assert sorted(data.labels.tolist()) == [0, 0, 0, 1, 1, 1, 2, 2, 2]  # TFDS shuffles the order
    assert data.templates == task_data.DEFAULT_TEMPLATES
    result = run_suite("clip_benchmark", tiny_model, data_dir=str(tmp_path))
    row = next(r for r in result["rows"] if r["task"] == "fer2013")
    assert row["status"] == "ok" and row["examples"] == 9 and 0 <= row["value"] <= 1
    assert sum(r["status"] == "ok" for r in result["rows"]) == 1


class _UserGeode(_UserBuilder, skip_registration=True):
    """GeoDE-like: objects photographed in several regions; scored by the worst region."""
    name = "geode"
    FEATURES = {"label": tfds.features.ClassLabel(names=["bag", "car", "dog", "tree"]),
                "region": tfds.features.Text()}

    def _generate_examples(self):
        rng = np.random.default_rng(1)
        for i in range(24):
            yield i, {"image": _random_png(rng), "label": i % 4,
                      "region": ("africa", "europe", "asia")[i % 3]}


def test_worst_group_of_a_grouped_task_is_the_worst_region(tiny_model, tmp_path):
    from mmfm.evals import task_data
    from mmfm.evals.zeroshot import class_embeddings

    # The task is "fairness/geode": its user directory is DATA_DIR/fairness/geode/<version>.
    _UserGeode(data_dir=str(tmp_path / "fairness"), file_format="array_record").download_and_prepare()
    task = tasks.get_task("fairness/geode")
    assert task.metric == "worst_group_top1" and task.group_key == "region"
    result = run_suite("datacomp", tiny_model, data_dir=str(tmp_path))
    row = next(r for r in result["rows"] if r["task"] == task.name)
    assert row["status"] == "ok" and row["examples"] == 24

    # Independent: the per-region top-1 of the same embeddings, by hand.
    data = task_data.load_task_classification(task, str(tmp_path))
    img = tiny_model.encode_image_source(data.images)
    cls = np.asarray(class_embeddings(tiny_model.encode_texts, list(data.classnames),
                                      list(data.templates)))
    pred = np.argmax(img @ cls.T, axis=1)
    regions = np.array([data.images.source[int(i)]["region"] for i in data.images.indices])
    per_region = [np.mean(pred[regions == r] == data.labels[regions == r])
                  for r in np.unique(regions)]
    assert row["value"] == pytest.approx(min(per_region))
    assert result["metrics"][f"{task.name}/top1"] == pytest.approx(np.mean(pred == data.labels))


def test_imagenet_r_ranks_only_its_own_classes(tiny_model, tmp_path):
    """ImageNet-R's labels are ImageNet ids; it is scored among the classes it has, not 1000."""
    from mmfm.evals import task_data
    from mmfm.evals.zeroshot import class_embeddings

    task = tasks.get_task("imagenet-r")
    assert task.classes_present and not tasks.get_task("imagenet1k").classes_present
    with tfds.testing.mock_data(num_examples=40):
        result = run_suite("datacomp", tiny_model, data_dir=str(tmp_path))
        data = task_data.load_task_classification(task, str(tmp_path))
    img = tiny_model.encode_image_source(data.images)
    cls = np.asarray(class_embeddings(tiny_model.encode_texts, list(data.classnames),
                                      list(data.templates)))
    present = np.unique(data.labels)
    assert 1 < len(present) < 1000
    pred = present[np.argmax(img @ cls[present].T, axis=1)]
    assert result["metrics"]["imagenet-r/top1"] == pytest.approx(np.mean(pred == data.labels))


def test_derived_labels_skip_and_count_records_they_do_not_fit(tmp_path, caplog):
    """CLEVR counts: mock scenes hold random numbers of objects; only 3-10 are a count class."""
    from mmfm.evals import task_data
    from mmfm.evals.derived_labels import DERIVED

    task = tasks.get_task("vtab/clevr_count_all")
    with tfds.testing.mock_data(num_examples=40):
        data = task_data.load_task_classification(task, str(tmp_path))
        records = [data.images.source[int(i)] for i in data.images.indices]
    assert 0 < len(data.labels) < 40
    assert list(data.labels) == [DERIVED[task.derived](r) for r in records]
    assert [len(r["objects"]["size"]) - 3 for r in records] == list(data.labels)
    skipped = 40 - len(data.labels)
    assert f"{skipped} of 40 records have no clevr_count_all label" in caplog.text


def test_shapes_suite_on_an_export_appends_to_a_csv(tiny_run, tmp_path):
    """An export (as `mmfm eval --model EXPORT --suite shapes` loads it) adds its row to a CSV."""
    from mmfm.api import load_eval_model
    from mmfm.zoo.export import export_from_workdir

    workdir, data_dir, config = tiny_run
    export = export_from_workdir(workdir, str(tmp_path / "export"))
    shapes = {k: config.data[k] for k in ("image_size", "num_train", "num_test", "seed")}
    csv_path = str(tmp_path / "all.csv")
    m = load_eval_model(export, None, batch_size=32)
    from_export = standalone.evaluate_suite("shapes", m, out_dir=str(tmp_path / "a"), name="exp",
                                            data_dir=data_dir, shapes=shapes, csv_path=csv_path)
    from_run = standalone.suite_on_checkpoint("shapes", workdir, out=str(tmp_path / "b"),
                                              csv_path=csv_path, name="run")
    rows = _read_csv(csv_path)
    assert [r[0] for r in rows[1:]] == ["exp", "run"]
    # The same weights through both paths: the same numbers.
    for a, b in zip(from_export["rows"], from_run["rows"]):
        assert a["value"] == pytest.approx(b["value"], abs=1e-6), a["task"]
