"""mmfm: multimodal (image + text) self-supervised pretraining of foundation models in JAX.

    import mmfm
    model, params, _, preprocess = mmfm.create_model_and_transforms("ViT-B-16", pretrained=PATH)
    tokenizer = mmfm.get_tokenizer("ViT-B-16")
    img = mmfm.encode_image(model, params, images)     # [batch, dim], L2-normalised

Public API only: the zoo (open_clip-style), the losses and the model configs. Everything else is
implementation, importable from its module.

The names are imported on first use (PEP 562), so `import mmfm.local` (serialized encoders that
need only jax and numpy) does not pull in flax, optax, orbax or grain through this file.
"""
import importlib
import importlib.util

from mmfm.version import __version__
from mmfm import host_memory

host_memory.keep_step_memory()  # before JAX starts its CPU threads; see mmfm/host_memory.py

_EXPORTS = {
    "mmfm.api": ("add_model_config", "create_model", "create_model_and_transforms", "encode_image",
                 "encode_text", "get_tokenizer", "list_models", "list_pretrained", "load_eval_model",
                 "load_model_info", "load_run", "model_info", "quantize_export", "serialize"),
    "mmfm.models.config": ("ModelConfig", "TextConfig", "VitConfig"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = [
    "add_model_config", "create_model", "create_model_and_transforms", "encode_image", "encode_text", "get_tokenizer",
    "list_models", "list_pretrained", "load_eval_model", "load_model_info", "load_run", "model_info", "losses", "ModelConfig",
    "quantize_export", "serialize", "TextConfig", "VitConfig", "__version__",
]


def __getattr__(name):
    if name in _WHERE:
        value = getattr(importlib.import_module(_WHERE[name]), name)
    elif not name.startswith("__") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        # `import mmfm; mmfm.losses.clip_loss` (and mmfm.api, mmfm.checkpoint ...), as when this
        # file imported them eagerly.
        value = importlib.import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value  # looked up once
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
