"""Per-example image transforms for the input pipeline.

Every transform is a small picklable object called as `transform(image, rng=None) -> image`, so
grain worker processes can run it and randomness comes from the pipeline's per-example rng (derived
from the seed and the example index, hence reproducible and checkpoint-safe). With `rng=None`
random transforms do nothing, which is what evaluation wants.

Images stay uint8 `[H, W, 3]`: normalisation happens on device, where it is cheap and the exact
mean/std travel with the model.

Note for captioned_shapes: captions name positions ("on the left"), so a horizontal flip makes
them wrong. Keep `flip=False` there.
"""
from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

_RESAMPLE = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
             "bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS}


def to_uint8_rgb(image: Any) -> np.ndarray:
    """Returns `image` as a uint8 `[H, W, 3]` array.

    Accepts what readers hand out: decoded arrays (TFDS `data_source` decodes Image features to
    `[H, W, C]` uint8), PIL images, or encoded bytes (PNG/JPEG/...). Gray and RGBA become RGB.
    """
    if isinstance(image, (bytes, bytearray, memoryview)):
        try:
            image = Image.open(io.BytesIO(bytes(image)))
            image.load()
        except Exception as e:  # PIL raises several types for corrupt data
            raise ValueError(f"cannot decode image bytes ({len(image)} bytes): {e}") from e
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.uint8)
    array = np.asarray(image)
    if array.dtype != np.uint8:
        raise ValueError(f"image array must be uint8, got {array.dtype}")
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[-1] not in (1, 3, 4):
        raise ValueError(f"image must be [H, W], [H, W, 1|3|4]; got shape {array.shape}")
    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    return np.ascontiguousarray(array[:, :, :3])


class Decode:
    """Decodes/converts any supported image input to uint8 `[H, W, 3]`."""

    def __call__(self, image: Any, rng: np.random.Generator | None = None) -> np.ndarray:
        del rng
        return to_uint8_rgb(image)

    def __repr__(self) -> str:
        return "Decode()"


class Resize:
    """Resizes the shorter side to `size`, then centre-crops to `size x size`.

    Keeps the aspect ratio; square inputs are simply resized, and inputs already at the target
    size pass through untouched (no resampling blur).
    """

    def __init__(self, size: int, method: str = "bilinear"):
        if not isinstance(size, (int, np.integer)) or size <= 0:
            raise ValueError(f"Resize size must be a positive integer, got {size!r}")
        if method not in _RESAMPLE:
            raise ValueError(f"unknown resize method {method!r}; valid: {sorted(_RESAMPLE)}")
        self.size, self.method = int(size), method

    def __call__(self, image: Any, rng: np.random.Generator | None = None) -> np.ndarray:
        del rng
        array = to_uint8_rgb(image)
        h, w = array.shape[:2]
        if (h, w) == (self.size, self.size):
            return array
        scale = self.size / min(h, w)
        nh, nw = max(self.size, round(h * scale)), max(self.size, round(w * scale))
        resized = Image.fromarray(array).resize((nw, nh), _RESAMPLE[self.method])
        top, left = (nh - self.size) // 2, (nw - self.size) // 2
        return np.asarray(resized)[top:top + self.size, left:left + self.size]

    def __repr__(self) -> str:
        return f"Resize({self.size}, {self.method!r})"


class RandomFlip:
    """Horizontal flip with probability `prob`; a no-op without an rng."""

    def __init__(self, prob: float = 0.5):
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f"RandomFlip prob must be in [0, 1], got {prob}")
        self.prob = float(prob)

    def __call__(self, image: Any, rng: np.random.Generator | None = None) -> np.ndarray:
        array = to_uint8_rgb(image)
        if rng is not None and rng.random() < self.prob:
            array = np.ascontiguousarray(array[:, ::-1])
        return array

    def __repr__(self) -> str:
        return f"RandomFlip({self.prob})"


class RandomResizedCrop:
    """Inception-style crop: a random area fraction in `scale` and aspect ratio in `ratio`
    (log-uniform), resized to `size x size`. Without an rng it is the eval transform: shorter
    side to `size`, centre crop (`Resize`)."""

    def __init__(self, size: int, scale: tuple[float, float] = (0.08, 1.0),
                 ratio: tuple[float, float] = (3 / 4, 4 / 3), method: str = "bilinear"):
        scale, ratio = tuple(float(v) for v in scale), tuple(float(v) for v in ratio)
        if len(scale) != 2 or not 0.0 < scale[0] <= scale[1] <= 1.0:
            raise ValueError(f"crop scale must be (low, high) with 0 < low <= high <= 1, "
                             f"got {scale}")
        if len(ratio) != 2 or not 0.0 < ratio[0] <= ratio[1]:
            raise ValueError(f"crop ratio must be (low, high) with 0 < low <= high, got {ratio}")
        self.resize = Resize(size, method)
        self.size, self.scale, self.ratio, self.method = int(size), scale, ratio, method

    def crop_box(self, h: int, w: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
        """(top, left, height, width); 10 tries, then the largest centred crop within `ratio`."""
        area = h * w
        log_ratio = np.log(self.ratio)
        for _ in range(10):
            target = area * rng.uniform(*self.scale)
            aspect = np.exp(rng.uniform(*log_ratio))
            cw, ch = int(round(np.sqrt(target * aspect))), int(round(np.sqrt(target / aspect)))
            if 0 < cw <= w and 0 < ch <= h:
                return int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1)), ch, cw
        aspect = w / h
        if aspect < self.ratio[0]:
            cw, ch = w, int(round(w / self.ratio[0]))
        elif aspect > self.ratio[1]:
            ch, cw = h, int(round(h * self.ratio[1]))
        else:
            cw, ch = w, h
        return (h - ch) // 2, (w - cw) // 2, ch, cw

    def __call__(self, image: Any, rng: np.random.Generator | None = None) -> np.ndarray:
        array = to_uint8_rgb(image)
        if rng is None:
            return self.resize(array)
        top, left, ch, cw = self.crop_box(*array.shape[:2], rng)
        crop = Image.fromarray(array[top:top + ch, left:left + cw])
        return np.asarray(crop.resize((self.size, self.size), _RESAMPLE[self.method]))

    def __repr__(self) -> str:
        return f"RandomResizedCrop({self.size}, scale={self.scale}, ratio={self.ratio})"


class Compose:
    """Applies transforms in order, handing each the same per-example rng."""

    def __init__(self, transforms: Sequence[Any]):
        for t in transforms:
            if not callable(t):
                raise TypeError(f"Compose expects callables, got {t!r}")
        self.transforms = tuple(transforms)

    def __call__(self, image: Any, rng: np.random.Generator | None = None) -> np.ndarray:
        for t in self.transforms:
            image = t(image, rng)
        return to_uint8_rgb(image)

    def __repr__(self) -> str:
        return f"Compose({list(self.transforms)!r})"


def make_image_transform(image_size: int, *, flip: bool = False,
                         method: str = "bilinear") -> Compose:
    """The standard per-example transform: decode, resize/crop to `image_size`, optional flip."""
    steps: list[Any] = [Decode(), Resize(image_size, method)]
    if flip:
        steps.append(RandomFlip())
    return Compose(steps)


def make_train_transform(image_size: int, *, crop_scale: Sequence[float] = (1.0, 1.0),
                         flip: bool = False, method: str = "bilinear") -> Compose:
    """Training transform: random resized crop (`crop_scale` area range; (1, 1) means the plain
    resize + centre crop of eval) then an optional horizontal flip."""
    crop_scale = tuple(float(v) for v in crop_scale)
    if crop_scale == (1.0, 1.0):
        return make_image_transform(image_size, flip=flip, method=method)
    steps: list[Any] = [RandomResizedCrop(image_size, crop_scale, method=method)]
    if flip:
        steps.append(RandomFlip())
    return Compose(steps)
