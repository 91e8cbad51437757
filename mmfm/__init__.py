"""mmfm: multimodal (image + text) self-supervised pretraining of foundation models in JAX."""
__version__ = "0.1.0"
