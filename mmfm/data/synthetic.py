"""Captioned shapes: the built-in image-text dataset, generated offline with PIL.

Each image shows 1-3 non-overlapping objects on a plain dark background. An object has a shape,
a colour, a size (small/large) and a position (derived from where it sits), and the caption names
every attribute of every object, e.g. "a small red circle at the top left and a large blue square
on the right". Everything is a pure function of (seed, split, example index), so two builds with
the same config produce identical data.

The dataset is a TFDS builder stored as ArrayRecord and built without TensorFlow:

    builder = prepare_captioned_shapes("/data", image_size=32, num_train=200, num_test=50)
    train = builder.as_data_source(split="train")     # random access, train[i] -> dict

Each config (image size, split sizes, seed) gets its own config directory, so different settings
never collide on disk. The matching tokenizer is trained at prepare time and stored beside the data
(`shapes_tokenizer_path`).
"""
from __future__ import annotations

import dataclasses
import io
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from PIL import Image, ImageDraw

from mmfm import fileio
from mmfm.data import quiet
from mmfm.data.tokenizers import train_tokenizer

SHAPES = ("circle", "square", "triangle", "star", "hexagon", "cross")
COLORS = ("red", "green", "blue", "yellow", "purple", "orange", "white", "cyan")
SIZES = ("small", "large")
ATTRIBUTES = ("shape", "color", "size", "position")
_RGB = {
    "red": (230, 30, 30), "green": (30, 200, 40), "blue": (40, 90, 255),
    "yellow": (245, 230, 20), "purple": (170, 50, 230), "orange": (255, 140, 0),
    "white": (245, 245, 245), "cyan": (0, 220, 230),
}
# Object side as a fraction of the image side; the ranges are far apart so size is unambiguous.
# Small objects are >= 15 px at 64 px: below that a hexagon, a circle and a star are a few pixels
# apart (1.0.0 used 0.17-0.21 and 0.33-0.39: shape was barely learnable at patch 16).
_SIZE_FRACTION = {"small": (0.24, 0.28), "large": (0.40, 0.46)}
# Fraction of single-object images per split (the rest is split evenly between 2 and 3 objects).
# Zero-shot shape/colour evaluation uses the single-object test images, hence the larger share.
_SINGLE_FRACTION = {"train": 0.5, "test": 0.6}
_SPLIT_CODE = {"train": 0, "test": 1}

# Zero-shot prompts, written in the captions' own grammar so a caption-trained model (with
# attribute dropping) has seen them. Class names are never preceded by "a", so "orange" is safe.
SHAPE_TEMPLATES = ("a {}", "a small {}", "a large {}")
COLOR_TEMPLATES = ("a small {} shape", "a large {} shape")
ZEROSHOT = {"shape": (SHAPES, SHAPE_TEMPLATES), "color": (COLORS, COLOR_TEMPLATES)}
DEFAULT_CAPTION_DROP = {"color": 0.5, "size": 0.3, "position": 0.3, "shape": 0.1}


# ----------------------------------------------------------------------------- captions

def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def position_phrase(x: float, y: float) -> str:
    """Names the 3x3 grid cell holding the centre (x, y), both in [0, 1]."""
    col = "left" if x < 1 / 3 else "right" if x > 2 / 3 else ""
    row = "top" if y < 1 / 3 else "bottom" if y > 2 / 3 else ""
    if row and col:
        return f"at the {row} {col}"
    if row:
        return f"at the {row}"
    return f"on the {col}" if col else "in the center"


def _check_drop_probs(drop_probs: Mapping[str, float]) -> None:
    for key, p in drop_probs.items():
        if key not in ATTRIBUTES:
            raise ValueError(f"unknown caption attribute {key!r} in drop_probs; "
                             f"valid: {list(ATTRIBUTES)}")
        if not 0.0 <= float(p) <= 1.0:
            raise ValueError(f"drop probability for {key!r} must be in [0, 1], got {p}")


def compose_caption(objects: Sequence[Mapping[str, Any]], rng: np.random.Generator | None = None,
                    drop_probs: Mapping[str, float] | None = None) -> str:
    """Builds a caption from an object list (the dataset's `objects` JSON, decoded).

    With `rng=None` this is the full caption stored in the dataset. With an rng, each attribute of
    each object is omitted independently with `drop_probs[attribute]` (keys among shape, color,
    size, position); an omitted shape reads "shape". Why: when every caption names every
    attribute, colour/size/position alone identify the caption and a contrastive model never
    needs to learn shape. Objects keep their order; 2 objects read "A and B", 3 read "A, B and C".
    """
    if not objects:
        raise ValueError("compose_caption needs at least one object")
    drop_probs = dict(drop_probs or {})
    _check_drop_probs(drop_probs)
    if rng is None and any(drop_probs.values()):
        raise ValueError("drop_probs need an rng (np.random.Generator) to draw from")
    phrases = []
    for obj in objects:
        # Always draw one number per attribute so the stream does not depend on the probabilities.
        draws = rng.random(len(ATTRIBUTES)) if rng is not None else np.ones(len(ATTRIBUTES))
        keep = {a: d >= drop_probs.get(a, 0.0) for a, d in zip(ATTRIBUTES, draws)}
        words = [obj[a] for a in ("size", "color") if keep[a]]
        words.append(obj["shape"] if keep["shape"] else "shape")
        phrase = f"{_article(words[0])} {' '.join(words)}"
        if keep["position"]:
            phrase += " " + position_phrase(float(obj["x"]), float(obj["y"]))
        phrases.append(phrase)
    if len(phrases) == 1:
        return phrases[0]
    return ", ".join(phrases[:-1]) + " and " + phrases[-1]


class CaptionDropper:
    """Picklable `caption_fn(record, rng)` for the pipeline: recomposes with attribute drops.

    With `whole_prob`, that share of captions is left whole and only the rest have attributes
    dropped: whole captions teach retrieval on full test captions, dropped ones force the model
    to tell shapes apart (colour, size and position alone no longer identify the caption).
    """

    def __init__(self, drop_probs: Mapping[str, float] | None = None, whole_prob: float = 0.0):
        self.drop_probs = dict(DEFAULT_CAPTION_DROP if drop_probs is None else drop_probs)
        _check_drop_probs(self.drop_probs)
        if not 0.0 <= float(whole_prob) <= 1.0:
            raise ValueError(f"caption_whole (probability of a whole caption) must be in [0, 1], "
                             f"got {whole_prob}")
        self.whole_prob = float(whole_prob)

    def __call__(self, record: Mapping[str, Any], rng: np.random.Generator) -> str:
        raw = record["objects"]
        objects = json.loads(raw.decode() if isinstance(raw, bytes) else raw)
        # No draw when whole_prob is 0, so configs without it keep their caption streams.
        if self.whole_prob and rng.random() < self.whole_prob:
            return compose_caption(objects)
        return compose_caption(objects, rng, self.drop_probs)


# ----------------------------------------------------------------------------- drawing

def _num_objects(rng: np.random.Generator, split: str) -> int:
    single = _SINGLE_FRACTION[split]
    u = rng.random()
    return 1 if u < single else 2 if u < single + (1 - single) / 2 else 3


def _boxes_clear(box, others, gap: int) -> bool:
    x0, y0, x1, y1 = box
    return all(x1 + gap <= b[0] or b[2] + gap <= x0 or y1 + gap <= b[1] or b[3] + gap <= y0
               for b in others)


def sample_objects(rng: np.random.Generator, image_size: int, num_objects: int) -> list[dict]:
    """Random object list with non-overlapping boxes (`bbox` = [x0, y0, x1, y1), in pixels)."""
    for _ in range(100):  # a layout that cannot fit is redrawn from scratch
        objects, boxes = [], []
        for _ in range(num_objects):
            size = SIZES[rng.integers(len(SIZES))]
            side = max(4, round(rng.uniform(*_SIZE_FRACTION[size]) * image_size))
            for _ in range(50):
                x0, y0 = rng.integers(1, image_size - side, size=2)
                box = (int(x0), int(y0), int(x0) + side, int(y0) + side)
                if _boxes_clear(box, boxes, gap=2):
                    break
            else:
                break
            boxes.append(box)
            objects.append({
                "shape": SHAPES[rng.integers(len(SHAPES))],
                "color": COLORS[rng.integers(len(COLORS))],
                "size": size,
                "x": round((box[0] + box[2]) / 2 / image_size, 4),
                "y": round((box[1] + box[3]) / 2 / image_size, 4),
                "bbox": list(box),
            })
        if len(objects) == num_objects:
            return objects
    raise RuntimeError(f"could not place {num_objects} objects in a {image_size}px image")


def _draw_object(draw: ImageDraw.ImageDraw, obj: Mapping[str, Any], fill) -> None:
    """Draws inside the inclusive box [x0, x1-1] x [y0, y1-1], never outside it."""
    x0, y0, x1, y1 = obj["bbox"]
    x1, y1 = x1 - 1, y1 - 1
    cx, cy, r = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2
    shape = obj["shape"]
    if shape == "circle":
        draw.ellipse((x0, y0, x1, y1), fill=fill)
    elif shape == "square":
        d = 0.12 * r  # inset a little so the square's area is closer to the other shapes'
        draw.rectangle((x0 + d, y0 + d, x1 - d, y1 - d), fill=fill)
    elif shape == "triangle":
        draw.polygon([(cx, y0), (x1, y1), (x0, y1)], fill=fill)
    elif shape == "star":
        angles = -np.pi / 2 + np.arange(10) * np.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, r, 0.42 * r)
        draw.polygon([(cx + rr * np.cos(a), cy + rr * np.sin(a)) for a, rr in zip(angles, radii)],
                     fill=fill)
    elif shape == "hexagon":
        draw.regular_polygon((cx, cy, r), 6, fill=fill)
    elif shape == "cross":
        t = 0.36 * r
        draw.rectangle((x0, cy - t, x1, cy + t), fill=fill)
        draw.rectangle((cx - t, y0, cx + t, y1), fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}; valid: {list(SHAPES)}")


def render(objects: Sequence[Mapping[str, Any]], image_size: int, background: int,
           rng: np.random.Generator | None = None) -> Image.Image:
    """Draws the objects on a uniform gray background; rng adds a small colour jitter."""
    image = Image.new("RGB", (image_size, image_size), (background,) * 3)
    draw = ImageDraw.Draw(image)
    for obj in objects:
        rgb = np.array(_RGB[obj["color"]])
        if rng is not None:
            rgb = np.clip(rgb + rng.integers(-12, 13, size=3), 0, 255)
        _draw_object(draw, obj, tuple(int(c) for c in rgb))
    return image


def object_mask(objects: Sequence[Mapping[str, Any]], image_size: int) -> np.ndarray:
    """uint8 `[image_size, image_size]`: 0 on the background, i + 1 where object i is drawn.

    Drawn with the same geometry as `render`, so it is the exact pixel footprint of each object
    (the dense probe's per-patch labels come from it).
    """
    mask = Image.new("L", (image_size, image_size), 0)
    draw = ImageDraw.Draw(mask)
    for i, obj in enumerate(objects):
        _draw_object(draw, obj, i + 1)
    return np.asarray(mask, np.uint8)


def generate_example(seed: int, split: str, index: int, image_size: int,
                     with_image: bool = True) -> dict[str, Any]:
    """One example as a pure function of (seed, split, index)."""
    rng = np.random.default_rng([seed, _SPLIT_CODE[split], index])
    objects = sample_objects(rng, image_size, _num_objects(rng, split))
    example = {
        "caption": compose_caption(objects),
        "objects": json.dumps(objects, separators=(",", ":")),
        "shape": objects[0]["shape"],
        "color": objects[0]["color"],
        "num_objects": len(objects),
    }
    if with_image:
        background = int(rng.integers(0, 41))
        buf = io.BytesIO()
        render(objects, image_size, background, rng).save(buf, format="PNG")
        example["image"] = buf.getvalue()
    return example


# ----------------------------------------------------------------------------- TFDS builder

@dataclasses.dataclass(eq=False)
class CaptionedShapesConfig(tfds.core.BuilderConfig):
    """Size and seed of one captioned-shapes build; `name` encodes them (one directory each)."""
    image_size: int = 64
    num_train: int = 20000
    num_test: int = 1000
    seed: int = 0


def shapes_config(image_size: int = 64, num_train: int = 20000, num_test: int = 1000,
                  seed: int = 0) -> CaptionedShapesConfig:
    """Validated config whose name (e.g. `size64_train20000_test1000_seed0`) encodes every field."""
    for key, value, low in (("image_size", image_size, 24), ("num_train", num_train, 1),
                            ("num_test", num_test, 1), ("seed", seed, 0)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"captioned_shapes {key} must be an integer >= {low}, got {value!r}")
    name = f"size{image_size}_train{num_train}_test{num_test}_seed{seed}"
    return CaptionedShapesConfig(name=name, image_size=int(image_size), num_train=int(num_train),
                                 num_test=int(num_test), seed=int(seed),
                                 description=f"{image_size}px, {num_train} train / {num_test} test "
                                             f"images, seed {seed}")


def _config_from_name(name: str) -> CaptionedShapesConfig:
    try:
        fields = dict(zip(("size", "train", "test", "seed"), name.split("_")))
        values = {k: int(v[len(k):]) for k, v in fields.items() if v.startswith(k)}
        return shapes_config(values["size"], values["train"], values["test"], values["seed"])
    except (KeyError, ValueError) as e:
        raise ValueError(f"bad captioned_shapes config name {name!r}; expected e.g. "
                         f"'size64_train20000_test1000_seed0'") from e


class CaptionedShapes(tfds.core.GeneratorBasedBuilder):
    """TFDS builder `captioned_shapes`; configure with `config=` or image_size/num_train/... kwargs.

    Config names not listed in BUILDER_CONFIGS are parsed, so
    `tfds.data_source("captioned_shapes/size32_train200_test50_seed0", data_dir=...)` also works.
    """

    VERSION = tfds.core.Version("1.1.0")
    RELEASE_NOTES = {"1.0.0": "Initial release.",
                     "1.1.0": "Larger objects (small 24-28%, large 40-46% of the image side)."}
    BUILDER_CONFIGS = [shapes_config()]

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        # TFDS 4.9.10 resolves this through `importlib_resources`, which it does not install;
        # the builder's own file is what TFDS wants (it looks for a checksums file beside it).
        return epath.Path(__file__)

    def __init__(self, *, config: str | CaptionedShapesConfig | None = None, **kwargs):
        sizes = {k: kwargs.pop(k) for k in ("image_size", "num_train", "num_test", "seed")
                 if k in kwargs}
        if sizes and config is not None:
            raise ValueError("pass either config= or image_size/num_train/num_test/seed, not both")
        if sizes:
            config = shapes_config(**sizes)
        elif isinstance(config, str) and config not in self.builder_configs:
            config = _config_from_name(config)
        if isinstance(config, CaptionedShapesConfig):
            expected = shapes_config(config.image_size, config.num_train, config.num_test,
                                     config.seed).name
            if config.name != expected:  # the name is the directory: it must encode the fields
                raise ValueError(f"config name {config.name!r} does not match its fields; "
                                 f"build configs with shapes_config(...) (expected {expected!r})")
            if config.name in self.builder_configs:
                config = config.name  # TFDS refuses a custom config named like a registered one
        kwargs.setdefault("file_format", "array_record")
        super().__init__(config=config, **kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        size = self.builder_config.image_size
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__.split("\n\n")[1],
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(size, size, 3), encoding_format="png"),
                "caption": tfds.features.Text(),
                "objects": tfds.features.Text(),  # JSON list of {shape, color, size, x, y, bbox}
                "shape": tfds.features.ClassLabel(names=SHAPES),  # of the first object
                "color": tfds.features.ClassLabel(names=COLORS),  # of the first object
                "num_objects": tfds.features.Scalar(dtype=np.int32),
            }),
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download
        cfg = self.builder_config
        return {"train": self._generate_examples("train", cfg.num_train),
                "test": self._generate_examples("test", cfg.num_test)}

    def _generate_examples(self, split: str, count: int):
        cfg = self.builder_config
        for index in range(count):
            yield index, generate_example(cfg.seed, split, index, cfg.image_size)


# ----------------------------------------------------------------------------- prepare

def _builder(data_dir: str, config: Mapping[str, Any]) -> CaptionedShapes:
    unknown = set(config) - {"image_size", "num_train", "num_test", "seed"}
    if unknown:
        raise ValueError(f"unknown captioned_shapes options {sorted(unknown)}; valid: "
                         f"image_size, num_train, num_test, seed")
    return CaptionedShapes(data_dir=os.fspath(data_dir), config=shapes_config(**config))


def shapes_tokenizer_path(data_dir: str, **config) -> str:
    """Where `prepare_captioned_shapes` stores the tokenizer of this config."""
    cfg = shapes_config(**config)
    return fileio.join(os.fspath(data_dir), "captioned_shapes", cfg.name, "tokenizer.model")


def tokenizer_corpus(cfg: CaptionedShapesConfig, variants: int = 2):
    """Train captions, each followed by `variants` attribute-dropped versions, plus the prompts."""
    rng = np.random.default_rng([cfg.seed, 2])
    drops = {a: 0.5 for a in ATTRIBUTES}
    for index in range(cfg.num_train):
        objects = json.loads(generate_example(cfg.seed, "train", index, cfg.image_size,
                                              with_image=False)["objects"])
        yield compose_caption(objects)
        for _ in range(variants):
            yield compose_caption(objects, rng, drops)
    for names, templates in ZEROSHOT.values():
        for name in names:
            yield from (t.format(name) for t in templates)


def prepare_captioned_shapes(data_dir: str, **config) -> CaptionedShapes:
    """Builds the dataset and its tokenizer under `data_dir` unless already there (idempotent).

    A URL `data_dir` is built in a local staging directory and uploaded: TFDS writes ArrayRecord
    files through local file handles only (reading them from a URL works).
    """
    builder = _builder(data_dir, config)
    path = shapes_tokenizer_path(data_dir, **config)
    if fileio.is_url(data_dir):
        info = fileio.join(os.fspath(builder.data_dir), "dataset_info.json")
        if fileio.isfile(info) and fileio.isfile(path):
            return builder
        name = builder.builder_config.name
        with tempfile.TemporaryDirectory(prefix="mmfm-prepare-") as local:
            staged = prepare_captioned_shapes(local, **config)
            version = os.path.basename(os.fspath(staged.data_dir))
            fileio.copytree(os.path.join(local, "captioned_shapes", name),
                            fileio.join(data_dir, "captioned_shapes", name),
                            last=("tokenizer.model", os.path.join(version, "dataset_info.json")))
        return _builder(data_dir, config)  # reads the uploaded dataset_info.json
    quiet.prepare(builder, "captioned_shapes")  # skipped when the version directory is complete
    if not os.path.exists(path):
        train_tokenizer(tokenizer_corpus(builder.builder_config), path)
    return builder
