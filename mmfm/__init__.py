"""mmfm: multimodal (image + text) self-supervised pretraining of foundation models in JAX.

    import mmfm
    model, params, _, preprocess = mmfm.create_model_and_transforms("ViT-B-16", pretrained=PATH)
    tokenizer = mmfm.get_tokenizer("ViT-B-16")
    img = mmfm.encode_image(model, params, images)     # [batch, dim], L2-normalised

Public API only: the zoo (open_clip-style), the losses and the model configs. Everything else is
implementation, importable from its module.
"""
from mmfm.version import __version__
from mmfm import host_memory

host_memory.keep_step_memory()  # before JAX starts its CPU threads; see mmfm/host_memory.py

from mmfm import losses
from mmfm.api import (add_model_config, create_model, create_model_and_transforms, encode_image, encode_text,
                      get_tokenizer, list_models, list_pretrained, load_eval_model, load_model_info,
                      load_run, model_info)
from mmfm.models.config import ModelConfig, TextConfig, VitConfig

__all__ = [
    "add_model_config", "create_model", "create_model_and_transforms", "encode_image", "encode_text", "get_tokenizer",
    "list_models", "list_pretrained", "load_eval_model", "load_model_info", "load_run", "model_info", "losses", "ModelConfig",
    "TextConfig", "VitConfig", "__version__",
]
