"""Every object box of a detection dataset as a labelled image: VOC 2007 classification.

    src = tfds.data_source("voc/2007", split="test", data_dir=D, download=False)
    crops = ObjectCropSource(src)          # len = number of non-difficult objects
    crops[k]                               # {"image": uint8 [h, w, 3] crop, "label": class id}

CLIP_benchmark scores Pascal VOC 2007 as 20-way zero-shot classification of object crops: each
annotated box of the test images, cut out, is one example (boxes marked difficult are left out).
TFDS boxes are `[ymin, xmin, ymax, xmax]` fractions of the image. An image whose object fields
disagree in length, and a box with no area, are skipped and counted (`skipped_images`,
`skipped_boxes`): one corrupt annotation never stops an evaluation.
"""
from __future__ import annotations

from typing import Any, Optional

import numpy as np

__all__ = ["ObjectCropSource", "crop_box"]


def crop_box(image: np.ndarray, box) -> Optional[np.ndarray]:
    """The pixels of `box` (`[ymin, xmin, ymax, xmax]` in [0, 1]); None for a box with no area."""
    h, w = image.shape[:2]
    y0, x0, y1, x1 = (float(v) for v in box)
    top, left = int(np.floor(np.clip(y0, 0, 1) * h)), int(np.floor(np.clip(x0, 0, 1) * w))
    bottom, right = int(np.ceil(np.clip(y1, 0, 1) * h)), int(np.ceil(np.clip(x1, 0, 1) * w))
    if bottom <= top or right <= left:
        return None
    return image[top:bottom, left:right]


class ObjectCropSource:
    """Random access to the object crops of `source` (see the module docstring)."""

    def __init__(self, source, *, skip_difficult: bool = True, max_images: Optional[int] = None):
        self.source = source
        self.pairs: list[tuple[int, int]] = []  # (image index, object index)
        self.labels: list[int] = []
        self.skipped_images = self.skipped_boxes = 0
        n = len(source) if max_images is None else min(len(source), int(max_images))
        for i in range(n):
            objects = source[i]["objects"]
            boxes = np.asarray(objects["bbox"], np.float32).reshape(-1, 4)
            labels = np.asarray(objects["label"]).reshape(-1)
            difficult = np.asarray(objects.get("is_difficult", np.zeros(len(labels), bool)))
            if not len(boxes) == len(labels) == len(difficult.reshape(-1)):
                self.skipped_images += 1
                continue
            for j, (box, label, hard) in enumerate(zip(boxes, labels, difficult.reshape(-1))):
                if skip_difficult and bool(hard):
                    continue
                y0, x0, y1, x1 = np.clip(box, 0, 1)
                if y1 <= y0 or x1 <= x0:
                    self.skipped_boxes += 1
                    continue
                self.pairs.append((i, j))
                self.labels.append(int(label))

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, k: int) -> dict[str, Any]:
        i, j = self.pairs[int(k)]
        record = self.source[i]
        box = np.asarray(record["objects"]["bbox"], np.float32).reshape(-1, 4)[j]
        return {"image": crop_box(np.asarray(record["image"]), box), "label": self.labels[int(k)]}
