"""VOC-style object crops: each non-difficult box is one labelled image, bad boxes counted."""
import numpy as np

from mmfm.evals.object_crops import ObjectCropSource, crop_box


def _record(boxes, labels, difficult):
    image = np.arange(40 * 60 * 3, dtype=np.uint32).reshape(40, 60, 3).astype(np.uint8)
    return {"image": image, "objects": {"bbox": np.asarray(boxes, np.float32).reshape(-1, 4),
                                        "label": np.asarray(labels), "is_difficult":
                                        np.asarray(difficult, bool)}}


def test_crop_box_cuts_the_box_pixels():
    image = np.random.default_rng(0).integers(0, 255, (40, 60, 3), dtype=np.uint8)
    np.testing.assert_array_equal(crop_box(image, [0.25, 0.5, 0.75, 1.0]), image[10:30, 30:60])
    np.testing.assert_array_equal(crop_box(image, [-0.1, 0.0, 0.1, 0.05]), image[0:4, 0:3])
    assert crop_box(image, [0.5, 0.5, 0.5, 0.9]) is None


def test_object_crop_source_expands_boxes_and_counts_what_it_skips():
    source = [
        _record([[0, 0, 0.5, 0.5], [0.5, 0.5, 1, 1]], [3, 7], [False, False]),
        _record([[0.1, 0.1, 0.2, 0.2], [0.2, 0.2, 0.9, 0.9]], [1, 2], [True, False]),  # one hard
        _record([[0.3, 0.3, 0.3, 0.8]], [4], [False]),  # no area
        {"image": np.zeros((4, 4, 3), np.uint8),  # fields of different lengths: corrupt
         "objects": {"bbox": np.zeros((2, 4), np.float32), "label": np.array([1]),
                     "is_difficult": np.array([False, False])}},
    ]
    crops = ObjectCropSource(source)
    assert len(crops) == 3 and crops.labels == [3, 7, 2]
    assert crops.skipped_boxes == 1 and crops.skipped_images == 1
    first = crops[0]
    assert first["label"] == 3
    np.testing.assert_array_equal(first["image"], source[0]["image"][0:20, 0:30])
    np.testing.assert_array_equal(crops[2]["image"], source[1]["image"][8:36, 12:54])
    assert len(ObjectCropSource(source, skip_difficult=False)) == 4
