"""Labels derived from object annotations as VTAB defines them (CLEVR counts/distance, KITTI)."""
import json
import pickle

import numpy as np
import pytest
import tensorflow_datasets as tfds

from mmfm.evals import derived_labels as dl
from mmfm.evals.datasets import load_prompts, prompts_path

NAMES = ("clevr_count_all", "clevr_closest_object_distance", "kitti_closest_vehicle_distance")
CAR, VAN, TRUCK, PEDESTRIAN, PERSON_SITTING, CYCLIST, TRAM, MISC = range(8)


def up(x):  # the next float32 above x
    return float(np.nextafter(np.float32(x), np.float32(np.inf)))


def clevr(depths=None, n=None):
    """A CLEVR-like record: n objects, or one object per depth (pixel_coords[:, 2])."""
    depths = np.full(n, 9.2) if depths is None else np.asarray(depths)
    n = len(depths)
    coords = np.stack([np.full(n, 240.0), np.full(n, 160.0), depths], 1).astype(np.float32)
    return {"image": np.zeros((4, 4, 3), np.uint8), "file_name": "CLEVR_val_000000.png",
            "objects": {"pixel_coords": coords, "3d_coords": np.zeros((n, 3), np.float32),
                        "size": np.zeros(n, np.int64), "shape": np.zeros(n, np.int64),
                        "color": np.zeros(n, np.int64), "material": np.zeros(n, np.int64),
                        "rotation": np.zeros(n, np.float32)}}


def kitti(*objects):
    """A KITTI-like record from (type, depth) pairs; x and y of each location are arbitrary."""
    types = np.array([t for t, _ in objects], np.int64)
    loc = np.array([[-3.0, 1.6, z] for _, z in objects], np.float32).reshape(-1, 3)
    return {"image": np.zeros((4, 4, 3), np.uint8), "image/file_name": "000001.png",
            "objects": {"type": types, "location": loc, "alpha": np.zeros(len(types), np.float32)}}


def test_tables_cover_the_three_tasks():
    for table in (dl.DERIVED, dl.NUM_CLASSES, dl.SPLITS, dl.TFDS_NAMES):
        assert tuple(sorted(table)) == tuple(sorted(NAMES))
    assert dl.NUM_CLASSES == {"clevr_count_all": 8, "clevr_closest_object_distance": 6,
                              "kitti_closest_vehicle_distance": 4}
    assert dl.SPLITS == {"clevr_count_all": "validation",
                         "clevr_closest_object_distance": "validation",
                         "kitti_closest_vehicle_distance": "test"}


@pytest.mark.parametrize("n", range(3, 11))
def test_clevr_count_all_is_objects_minus_three(n):
    label = dl.DERIVED["clevr_count_all"](clevr(n=n))
    assert label == n - 3 and type(label) is int


@pytest.mark.parametrize("n", [0, 2, 11])
def test_clevr_count_outside_3_to_10_is_an_error(n):
    with pytest.raises(ValueError, match="objects"):
        dl.clevr_count_all(clevr(n=n))


@pytest.mark.parametrize("depth,label", [
    (1.0, 0), (8.0, 0), (up(8.0), 1), (8.5, 1), (up(8.5), 2), (9.0, 2), (up(9.0), 3),
    (9.5, 3), (up(9.5), 4), (10.0, 4), (up(10.0), 5), (42.0, 5), (100.0, 5)])
def test_clevr_closest_object_distance_buckets(depth, label):
    # A threshold itself belongs to the bucket below it: VTAB takes max{i : t[i] < d}.
    got = dl.clevr_closest_object_distance(clevr([12.0, depth, 11.0]))
    assert got == label and type(got) is int


def test_clevr_distance_uses_the_nearest_object_depth_only():
    # x, y pixel coordinates do not matter; the smallest depth decides.
    record = clevr([10.7, 8.2, 9.9, 13.0])
    record["objects"]["pixel_coords"][:, :2] = [[0, 0], [479, 319], [5, 5], [9, 9]]
    assert dl.clevr_closest_object_distance(record) == 1


@pytest.mark.parametrize("depth", [0.0, -1.0, up(100.0)])
def test_clevr_distance_outside_vtab_buckets_is_an_error(depth):
    with pytest.raises(ValueError, match="outside"):
        dl.clevr_closest_object_distance(clevr([120.0, depth]))


@pytest.mark.parametrize("depth,label", [
    (-99.0, 0), (0.5, 0), (8.0, 0), (up(8.0), 1), (20.0, 1), (up(20.0), 2), (75.0, 2),
    (999.0, 2), (up(999.0), 3)])
def test_kitti_closest_vehicle_distance_buckets(depth, label):
    got = dl.kitti_closest_vehicle_distance(kitti((CAR, depth)))
    assert got == label and type(got) is int


def test_kitti_without_vehicles_is_the_last_class():
    assert dl.kitti_closest_vehicle_distance(kitti()) == 3  # no objects at all
    others = [(t, 4.0) for t in (PEDESTRIAN, PERSON_SITTING, CYCLIST, TRAM, MISC)]
    assert dl.kitti_closest_vehicle_distance(kitti(*others)) == 3  # trams are not vehicles


def test_kitti_nearest_of_several_vehicles_decides():
    # Car, Van and Truck count; the closer pedestrian and tram do not.
    record = kitti((PEDESTRIAN, 3.0), (CAR, 31.0), (TRAM, 2.0), (TRUCK, 14.5), (VAN, 22.0))
    assert dl.kitti_closest_vehicle_distance(record) == 1
    assert dl.kitti_closest_vehicle_distance(kitti((CAR, 31.0), (VAN, 6.0))) == 0
    assert dl.kitti_closest_vehicle_distance(kitti((TRUCK, 25.0), (CAR, 40.0))) == 2


def test_kitti_bad_records_are_errors():
    with pytest.raises(ValueError, match="outside"):
        dl.kitti_closest_vehicle_distance(kitti((CAR, -100.0)))
    record = kitti((CAR, 5.0), (VAN, 9.0))
    record["objects"]["type"] = record["objects"]["type"][:1]
    with pytest.raises(ValueError, match="types"):
        dl.kitti_closest_vehicle_distance(record)
    with pytest.raises(ValueError, match="objects"):
        dl.kitti_closest_vehicle_distance({"image": np.zeros(1)})


def _n_objects(record, n):
    """The record with every objects field made n entries long (cut, or repeated cyclically).

    Mock data draws each Sequence field's length independently (CLEVR's `size` may hold 40
    entries, KITTI's `type` and `location` differ); real scenes have one entry per object.
    """
    objects = {k: np.asarray(v)[np.arange(n) % len(v)] for k, v in record["objects"].items()}
    return {**record, "objects": objects}


@pytest.fixture(scope="module")
def mock_records(tmp_path_factory):
    """TFDS mock records of each task's builder and split, as random-access sources give them."""
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    out = {}
    with tfds.testing.mock_data(num_examples=8):
        for name in NAMES:
            src = tfds.data_source(dl.TFDS_NAMES[name], split=dl.SPLITS[name],
                                   data_dir=data_dir, download=False)
            out[name] = [src[i] for i in range(len(src))]
    return out


@pytest.mark.parametrize("name", NAMES)
def test_labels_of_mock_records_are_class_ids(name, mock_records):
    records = mock_records[name]
    assert len(records) == 8 and isinstance(records[0]["objects"], dict)
    for i, record in enumerate(records):
        label = dl.DERIVED[name](_n_objects(record, 3 + i))  # 3..10 objects
        assert type(label) is int and 0 <= label < dl.NUM_CLASSES[name], (name, i, label)
        # As the mock gives them (lengths unrelated): a class id or a clear error, never junk.
        try:
            label = dl.DERIVED[name](record)
        except ValueError:
            continue
        assert type(label) is int and 0 <= label < dl.NUM_CLASSES[name], (name, i, label)


def test_mock_kitti_labels_follow_types_and_depths(mock_records):
    for record in mock_records["kitti_closest_vehicle_distance"]:
        record = _n_objects(record, 6)
        obj = record["objects"]
        obj["location"] = obj["location"] * 50.0  # mock depths lie in [0, 1)
        vehicle = obj["type"] < 3
        want = 3 if not vehicle.any() else int(np.digitize(obj["location"][vehicle, 2].min(),
                                                           [8.0, 20.0, 999.0], right=True))
        assert dl.kitti_closest_vehicle_distance(record) == want


class ListSource:
    def __init__(self, records):
        self.records = records

    def __len__(self):
        return len(self.records)

    def __getitem__(self, i):
        return self.records[i]


def test_derived_label_source_adds_label_and_passes_the_rest_through():
    records = [clevr(n=n) for n in (3, 7, 10)]
    src = dl.DerivedLabelSource(ListSource(records), "vtab/clevr_count_all")
    assert len(src) == 3 and src.name == "clevr_count_all"
    for i, n in enumerate((3, 7, 10)):
        out = src[i]
        assert out["label"] == n - 3
        assert set(out) == set(records[i]) | {"label"}
        assert all(out[k] is records[i][k] for k in records[i])  # passed through, not copied
        assert "label" not in records[i]  # the wrapped source's record is left alone
    assert [r["label"] for r in src.__getitems__([2, 0])] == [7, 0]
    assert pickle.loads(pickle.dumps(src))[1]["label"] == 4


def test_derived_label_source_over_mock_tfds(tmp_path):
    name = "clevr_closest_object_distance"  # reads pixel_coords only, whatever the mock lengths
    with tfds.testing.mock_data(num_examples=5):
        raw = tfds.data_source(dl.TFDS_NAMES[name], split=dl.SPLITS[name],
                               data_dir=str(tmp_path), download=False)
        src = dl.DerivedLabelSource(raw, name, label_key="distance")
        assert len(src) == len(raw) == 5
        for i in range(len(src)):
            out, record = src[i], raw[i]
            assert out["distance"] == 0  # mock depths lie in [0, 1): "very close"
            assert set(out) == set(record) | {"distance"}
            assert out["file_name"] == record["file_name"]
            np.testing.assert_array_equal(out["image"], record["image"])
            np.testing.assert_array_equal(out["objects"]["size"], record["objects"]["size"])


def test_unknown_task_is_an_error():
    with pytest.raises(ValueError, match="known"):
        dl.DerivedLabelSource(ListSource([]), "vtab/kitti_count_all")


@pytest.mark.parametrize("name", NAMES)
def test_prompt_files(name):
    classnames, templates = load_prompts(name)
    assert len(classnames) == dl.NUM_CLASSES[name]
    assert all(c.strip() for c in classnames) and len(set(classnames)) == len(classnames)
    assert 2 <= len(templates) <= 4 and all(t.count("{}") == 1 for t in templates)
    with open(prompts_path(name)) as f:
        meta = json.load(f)
    assert set(meta) == {"dataset", "label_key", "note", "classnames", "templates"}
    assert meta["dataset"] == dl.TFDS_NAMES[name].split(":")[0] and meta["label_key"] == "label"
    if name == "clevr_count_all":
        assert classnames == ("three", "four", "five", "six", "seven", "eight", "nine", "ten")
