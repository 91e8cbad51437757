"""Image preprocessing that travels with weights: `Preprocess` and `ImageTransform(pre, train=...)`.

image (PIL, uint8 [H, W, 3|1|4], or encoded bytes) -> float32 [S, S, 3], normalised with the
model's mean/std. Eval: resize the short side + centre crop ('shortest') or resize to a square
('squash'). Train: a random resized crop (area 90-100%, as open_clip's default) then the same resize.
With `max_num_patches` (NaFlex models) the image keeps its aspect ratio and becomes a padded patch
sequence instead (mmfm.data.naflex).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional

import numpy as np
from PIL import Image

from mmfm.data import naflex
from mmfm.data.transforms import Resize, to_uint8_rgb

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
INCEPTION_MEAN = (0.5, 0.5, 0.5)
INCEPTION_STD = (0.5, 0.5, 0.5)


@dataclasses.dataclass(frozen=True)
class Preprocess:
    """Image preprocessing that travels with weights."""
    image_size: int = 224
    mean: tuple[float, float, float] = OPENAI_MEAN
    std: tuple[float, float, float] = OPENAI_STD
    interpolation: str = "bicubic"  # bicubic | bilinear | nearest | lanczos
    resize_mode: str = "shortest"  # shortest: resize short side + centre crop; squash: resize to square
    # NaFlex: resize to the largest grid of `patch_size` patches within this budget, aspect ratio kept
    max_num_patches: Optional[int] = None
    patch_size: Optional[int] = None


_RESAMPLE = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
             "bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS}


class ImageTransform:
    def __init__(self, pre: Preprocess, *, train: bool = False, scale=(0.9, 1.0)):
        if pre.interpolation not in _RESAMPLE:
            raise ValueError(f"preprocess.interpolation {pre.interpolation!r}: valid {sorted(_RESAMPLE)}")
        if pre.resize_mode not in ("shortest", "squash"):
            raise ValueError(f"preprocess.resize_mode {pre.resize_mode!r}: valid shortest, squash")
        if pre.max_num_patches is not None and not pre.patch_size:
            raise ValueError("preprocess.max_num_patches (NaFlex) needs preprocess.patch_size")
        self.pre, self.train, self.scale = pre, train, scale
        self._mean = np.asarray(pre.mean, np.float32)
        self._std = np.asarray(pre.std, np.float32)

    def resize_u8(self, image: Any, rng: Optional[np.random.Generator] = None) -> np.ndarray:
        """uint8 [S, S, 3] (before normalisation)."""
        array = to_uint8_rgb(image)
        size = self.pre.image_size
        if self.train:
            rng = rng if rng is not None else np.random.default_rng()
            h, w = array.shape[:2]
            area = rng.uniform(*self.scale) * h * w
            side = int(min(h, w, round(area ** 0.5)))
            top, left = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
            array = array[top:top + side, left:left + side]
        if self.pre.max_num_patches is not None:  # NaFlex: the aspect ratio is kept
            h, w = naflex.naflex_size(*array.shape[:2], self.pre.patch_size, self.pre.max_num_patches)
            if array.shape[:2] != (h, w):
                array = np.asarray(Image.fromarray(array).resize((w, h), _RESAMPLE[self.pre.interpolation]))
            return array
        if self.pre.resize_mode == "squash":
            if array.shape[:2] != (size, size):
                array = np.asarray(Image.fromarray(array).resize((size, size), _RESAMPLE[self.pre.interpolation]))
            return array
        return Resize(size, self.pre.interpolation)(array)

    def normalize(self, images_u8: np.ndarray) -> np.ndarray:
        """uint8 `[..., 3]` already at the model's size -> float32 with the model's mean/std."""
        return (np.asarray(images_u8).astype(np.float32) / 255.0 - self._mean) / self._std

    def __call__(self, image: Any, rng: Optional[np.random.Generator] = None):
        """float32 [S, S, 3]; for NaFlex models the dict of mmfm.data.naflex.to_patches."""
        x = self.normalize(self.resize_u8(image, rng))
        if self.pre.max_num_patches is not None:
            return naflex.to_patches(x, self.pre.patch_size, self.pre.max_num_patches)
        return x

    def __repr__(self) -> str:
        return f"ImageTransform({self.pre}, train={self.train})"
