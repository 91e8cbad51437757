"""Class labels of VTAB tasks that are derived from object annotations (CLEVR, KITTI).

    import tensorflow_datasets as tfds
    from mmfm.evals import derived_labels as dl

    name = "clevr_count_all"                       # a key of DERIVED (VTAB's task name)
    src = tfds.data_source("clevr", split=dl.SPLITS[name], data_dir=D, download=False)
    src = dl.DerivedLabelSource(src, name)         # src[i]["label"] in range(dl.NUM_CLASSES[name])
    classnames, templates = load_prompts(name)     # mmfm/evals/data/<name>.json

TFDS has the images and object annotations of these tasks but no class-label feature; VTAB
(google-research/task_adaptation, `task_adaptation/data/clevr.py` and `kitti.py`) defines the
labels with TensorFlow preprocessing functions. They are reimplemented here with numpy on the
records of TFDS random-access sources, where a `Sequence` feature such as `objects` is a dict of
numpy arrays (`record["objects"]["pixel_coords"]` has shape [n, 3]).

VTAB buckets a distance d with sorted thresholds t as `max{i : t[i] < d}`, so a bucket is the
half-open interval (t[i], t[i+1]]: a distance equal to a threshold falls in the lower bucket.
Where VTAB's formula would give no class or one past the last (a CLEVR scene with fewer than 3
or more than 10 objects, a depth outside (0, 100], object fields of different lengths), the
functions raise ValueError instead of returning an invalid id; real CLEVR and KITTI records
never do.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np

__all__ = ["CLEVR_DISTANCE_THRESHOLDS", "DERIVED", "DerivedLabelSource",
           "KITTI_NO_VEHICLE_DISTANCE", "KITTI_VEHICLE_DISTANCE_THRESHOLDS", "KITTI_VEHICLE_TYPES",
           "NUM_CLASSES", "SPLITS", "TFDS_NAMES", "clevr_closest_object_distance",
           "clevr_count_all", "kitti_closest_vehicle_distance"]

# clevr.py: the count label is the number of objects minus 3 (CLEVR scenes hold 3..10 objects).
CLEVR_MIN_OBJECTS, CLEVR_MAX_OBJECTS = 3, 10
# clevr.py `_closest_object_preprocess_fn`: buckets of the smallest pixel_coords depth.
CLEVR_DISTANCE_THRESHOLDS = (0.0, 8.0, 8.5, 9.0, 9.5, 10.0, 100.0)
# kitti.py `_closest_vehicle_distance_pp`: "type < 3" are Car, Van, Truck (the TFDS ClassLabel
# ids of kitti's `objects/type`); the depth is location[:, 2] in metres. A frame without vehicles
# gets the distance 1000, which lands in the last bucket ("no vehicle").
KITTI_VEHICLE_TYPES = (0, 1, 2)
KITTI_NO_VEHICLE_DISTANCE = 1000.0
KITTI_VEHICLE_DISTANCE_THRESHOLDS = (-100.0, 8.0, 20.0, 999.0)


def _objects(record: Mapping[str, Any]) -> Mapping[str, Any]:
    objects = record.get("objects")
    if not isinstance(objects, Mapping):
        raise ValueError(f"record has no 'objects' dict (keys: {sorted(record)})")
    return objects


def _bucket(value: float, thresholds: tuple[float, ...], num_classes: int, what: str) -> int:
    """VTAB's `max{i : thresholds[i] < value}`, checked to be a class id."""
    label = int(np.searchsorted(np.asarray(thresholds), value, side="left")) - 1
    if not 0 <= label < num_classes:
        raise ValueError(f"{what} {value} is outside VTAB's buckets {thresholds}")
    return label


def clevr_count_all(record: Mapping[str, Any]) -> int:
    """VTAB clevr(task="count_all"): number of objects - 3 (3..10 objects -> 0..7)."""
    n = len(np.asarray(_objects(record)["size"]))  # VTAB counts the entries of objects/size
    if not CLEVR_MIN_OBJECTS <= n <= CLEVR_MAX_OBJECTS:
        raise ValueError(f"CLEVR scene with {n} objects; count_all expects "
                         f"{CLEVR_MIN_OBJECTS}..{CLEVR_MAX_OBJECTS}")
    return n - CLEVR_MIN_OBJECTS


def clevr_closest_object_distance(record: Mapping[str, Any]) -> int:
    """VTAB clevr(task="closest_object_distance"): bucket of min(pixel_coords[:, 2])."""
    coords = np.asarray(_objects(record)["pixel_coords"], np.float32).reshape(-1, 3)
    if not len(coords):
        raise ValueError("CLEVR scene without objects has no closest object")
    return _bucket(float(coords[:, 2].min()), CLEVR_DISTANCE_THRESHOLDS,
                   NUM_CLASSES["clevr_closest_object_distance"], "closest object depth")


def kitti_closest_vehicle_distance(record: Mapping[str, Any]) -> int:
    """VTAB kitti(task="closest_vehicle_distance"): bucket of the nearest Car/Van/Truck's depth.

    Classes: 0 (-100, 8] m, 1 (8, 20] m, 2 (20, 999] m, 3 no vehicle (or one beyond 999 m).
    """
    objects = _objects(record)
    types = np.asarray(objects["type"]).reshape(-1)
    location = np.asarray(objects["location"], np.float32).reshape(-1, 3)
    if len(types) != len(location):
        raise ValueError(f"KITTI record with {len(types)} object types but {len(location)} "
                         "locations")
    depth = location[np.isin(types, KITTI_VEHICLE_TYPES), 2]
    dist = float(np.append(depth, KITTI_NO_VEHICLE_DISTANCE).min())  # VTAB's 1000 m sentinel
    return _bucket(dist, KITTI_VEHICLE_DISTANCE_THRESHOLDS,
                   NUM_CLASSES["kitti_closest_vehicle_distance"], "closest vehicle depth")


DERIVED: dict[str, Callable[[Mapping[str, Any]], int]] = {
    "clevr_count_all": clevr_count_all,
    "clevr_closest_object_distance": clevr_closest_object_distance,
    "kitti_closest_vehicle_distance": kitti_closest_vehicle_distance,
}
NUM_CLASSES: dict[str, int] = {  # VTAB's num_classes of each task
    "clevr_count_all": 8,
    "clevr_closest_object_distance": 6,
    "kitti_closest_vehicle_distance": 4,
}
# The TFDS builders VTAB reads: "clevr:3.*.*" (the default 3.1.0 only adds question/answer
# text to 3.0.0) and the pinned "kitti:3.1.0".
# TFDS's default kitti is newer (3.2.0 updated the devkit, whose mapping files define the
# train/validation/test split; 3.3.0 added `occluded` labels); the pin keeps VTAB's test images.
TFDS_NAMES: dict[str, str] = {
    "clevr_count_all": "clevr",
    "clevr_closest_object_distance": "clevr",
    "kitti_closest_vehicle_distance": "kitti:3.1.0",
}
# VTAB's test splits: CLEVR's "test" is TFDS "validation" (TFDS "test" has no object
# annotations); KITTI's "test" is TFDS "test".
SPLITS: dict[str, str] = {
    "clevr_count_all": "validation",
    "clevr_closest_object_distance": "validation",
    "kitti_closest_vehicle_distance": "test",
}


def _task(name: str) -> str:
    short = name.split("/")[-1]  # "vtab/clevr_count_all" is accepted too
    if short not in DERIVED:
        raise ValueError(f"no derived labels for {name!r}; known: {sorted(DERIVED)}")
    return short


class DerivedLabelSource:
    """A random-access source whose records get `label` = DERIVED[name](record).

    The record is shallow-copied (the wrapped source's record is not modified) and every other
    field is passed through as is. Picklable when the wrapped source is.
    """

    def __init__(self, source: Any, name: str, label_key: str = "label"):
        self.source, self.name, self.label_key = source, _task(name), label_key
        self.label_fn = DERIVED[self.name]

    def __len__(self) -> int:
        return len(self.source)

    def _add(self, record: Mapping[str, Any]) -> dict[str, Any]:
        out = dict(record)
        out[self.label_key] = self.label_fn(record)
        return out

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self._add(self.source[index])

    def __getitems__(self, indices) -> list[dict[str, Any]]:
        """Batched read (grain/TFDS style), through the source's own `__getitems__` if any."""
        get = getattr(self.source, "__getitems__", None)
        records = get(indices) if get is not None else [self.source[i] for i in indices]
        return [self._add(r) for r in records]

    def __repr__(self) -> str:
        return f"DerivedLabelSource({self.name!r}, {len(self)} records)"
