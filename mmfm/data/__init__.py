"""Data: the built-in captioned-shapes dataset, tokenizers, transforms and the grain pipeline.

Names are imported lazily so `import mmfm.data.tokenizers` does not pull in TFDS and grain.
"""
import importlib

from mmfm.data import quiet  # noqa: F401 - drops TFDS log lines that do not apply (see quiet.py)

_EXPORTS = {
    "synthetic": ("CaptionedShapes", "CaptionDropper", "COLORS", "COLOR_TEMPLATES",
                  "DEFAULT_CAPTION_DROP", "SHAPES", "SHAPE_TEMPLATES", "ZEROSHOT",
                  "compose_caption", "prepare_captioned_shapes", "shapes_config",
                  "shapes_tokenizer_path"),
    "tokenizers": ("HFTokenizer", "Tokenizer", "load_tokenizer", "train_tokenizer"),
    "transforms": ("Compose", "Decode", "RandomFlip", "RandomResizedCrop", "Resize",
                   "make_image_transform", "make_train_transform"),
    "sources": ("MixtureSource", "SafeSource", "pick_caption"),
    "catalog": ("CATALOG", "open_catalog"),
    "builders": ("prepare", "read_summary"),
    "pipeline": ("DataInfo", "TrainIterator", "TrainLoader", "load_eval_arrays",
                 "make_train_loader"),
    "build": ("DATASETS", "build_data"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name):
    if name in _WHERE:
        return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
