"""Registry: exact open_clip parameter counts (via eval_shape), listing, lookups and overrides."""
import flax.linen as nn
import jax
import numpy as np
import pytest

import mmfm.api as mmfm
from mmfm.models.config import count_params_closed_form
from mmfm.models.multimodal import TwoTower, init_params
from mmfm.zoo import registry

# open_clip's own numbers (total, visual tower) for its configs of the same names.
OPEN_CLIP_COUNTS = {
    "ViT-B-32": (151_277_313, 87_849_216),
    "ViT-B-16": (149_620_737, 86_192_640),
    "ViT-L-14": (427_616_513, 303_966_208),
    "ViT-B-16-SigLIP": (203_155_970, 92_884_224),
    "ViT-SO400M-14-SigLIP": (877_360_306, 427_680_704),
}


def _shapes(cfg):
    model = TwoTower(cfg)
    return jax.eval_shape(lambda r: nn.meta.unbox(init_params(model, r)), jax.random.PRNGKey(0))


@pytest.mark.parametrize("name", sorted(OPEN_CLIP_COUNTS))
def test_parameter_counts_equal_open_clip(name):
    cfg = registry.get_model_config(name)
    shapes = _shapes(cfg)
    size = lambda tree: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))
    total, visual = OPEN_CLIP_COUNTS[name]
    assert size(shapes) == total
    assert size(shapes["img"]) == visual
    assert count_params_closed_form(cfg) == total


def test_quickgelu_variants_share_shapes():
    a, b = registry.get_model_config("ViT-B-32"), registry.get_model_config("ViT-B-32-quickgelu")
    assert (a.image.act, b.image.act, b.text.act) == ("gelu", "quick_gelu", "quick_gelu")
    assert count_params_closed_form(a) == count_params_closed_form(b)


def test_listing_and_every_tag_points_to_a_registered_architecture():
    models = mmfm.list_models()
    assert {"ViT-B-32", "ViT-B-16", "ViT-L-14", "ViT-B-16-SigLIP", "ViT-SO400M-14-SigLIP"} <= set(models)
    tags = mmfm.list_pretrained()
    assert ("ViT-B-16-SigLIP", "webli") in tags and ("ViT-B-32", "openai") in tags
    for arch, tag in tags:
        t = registry.get_pretrained_tag(arch, tag)
        assert arch in models and t.converter in ("openclip", "hf", "big_vision", "mmfm")
        assert t.preprocess.image_size == registry.get_model_config(arch).image.image_size
        assert t.tokenizer.context_length == registry.get_model_config(arch).text.context_length


def test_failed_lookups_list_valid_names():
    with pytest.raises(ValueError, match=r"Did you mean ViT-B-32.*Valid: .*ViT-B-16-SigLIP"):
        registry.get_model_config("ViT-B-33")
    with pytest.raises(ValueError, match=r"unknown pretrained tag for ViT-B-32 'opnai'.*openai"):
        registry.get_pretrained_tag("ViT-B-32", "opnai")
    with pytest.raises(ValueError, match=r"no pretrained tags for 'mmfm-mu-8'"):
        registry.get_pretrained_tag("mmfm-mu-8", "x")


def test_overrides_one_dict_and_bad_keys_named():
    cfg = registry.get_model_config("mmfm-mu-8", **{"dtype": "bfloat16", "image.pool": "mean",
                                                    "embed_dim": 16})
    assert (cfg.image.dtype, cfg.text.dtype, cfg.image.pool, cfg.embed_dim) == (
        "bfloat16", "bfloat16", "mean", 16)
    with pytest.raises(ValueError, match=r"unknown override key\(s\) \['image.poool'\]"):
        registry.get_model_config("mmfm-mu-8", **{"image.poool": "mean"})
