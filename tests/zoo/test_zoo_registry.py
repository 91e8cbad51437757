"""Registry: exact open_clip parameter counts (via eval_shape), listing, lookups and overrides."""
import flax.linen as nn
import jax
import numpy as np
import pytest

import mmfm.api as mmfm
from mmfm.models.config import count_params_closed_form
from mmfm.models.multimodal import TwoTower, init_params
from mmfm.zoo import registry

# open_clip's own numbers (total, visual tower) for its configs of the same names: open_clip 3.3.0
# with timm 1.0.31, `sum(p.numel())` of `open_clip.create_model(name, device="meta")` and its `.visual`.
OPEN_CLIP_COUNTS = {
    "ViT-B-32": (151_277_313, 87_849_216),
    "ViT-B-16": (149_620_737, 86_192_640),
    "ViT-L-14": (427_616_513, 303_966_208),
    "ViT-L-14-336": (427_944_193, 304_293_888),
    "ViT-B-32-quickgelu": (151_277_313, 87_849_216),
    "ViT-B-16-quickgelu": (149_620_737, 86_192_640),
    "ViT-L-14-quickgelu": (427_616_513, 303_966_208),
    "ViT-B-16-SigLIP-256": (203_202_050, 92_930_304),
    "ViT-B-16-SigLIP-384": (203_447_810, 93_176_064),
    "ViT-B-16-SigLIP": (203_155_970, 92_884_224),
    "ViT-SO400M-14-SigLIP": (877_360_306, 427_680_704),
    "ViT-SO400M-14-SigLIP-384": (877_960_498, 428_225_600),  # 384 px at patch 14: a 27 x 27 grid
    "ViT-B-16-SigLIP2": (375_187_970, 92_884_224),
    "ViT-B-16-SigLIP2-256": (375_234_050, 92_930_304),
    "ViT-B-16-SigLIP2-384": (375_479_810, 93_176_064),
    "ViT-B-16-SigLIP2-512": (375_823_874, 93_520_128),
    "ViT-B-32-SigLIP2-256": (376_856_066, 94_552_320),
    "ViT-L-16-SigLIP2-256": (881_526_786, 315_956_224),
    "ViT-L-16-SigLIP2-384": (881_854_466, 316_283_904),
    "ViT-L-16-SigLIP2-512": (882_313_218, 316_742_656),
    "ViT-SO400M-14-SigLIP2": (1_135_463_602, 427_680_704),
    "ViT-SO400M-14-SigLIP2-378": (1_136_008_498, 428_225_600),
    "ViT-SO400M-16-SigLIP2-256": (1_135_670_962, 427_888_064),
    "ViT-SO400M-16-SigLIP2-384": (1_136_039_602, 428_256_704),
    "ViT-SO400M-16-SigLIP2-512": (1_136_555_698, 428_772_800),
    "ViT-gopt-16-SigLIP2-256": (1_871_393_906, 1_163_168_256),
    "ViT-gopt-16-SigLIP2-384": (1_871_885_426, 1_163_659_776),
    # open_clip's NaFlex configs are newer than 3.3.0: counted from its main-branch JSON (commit
    # 89fb801, minus image_seq_len, which 3.3.0 does not take) via open_clip.add_model_config
    "ViT-B-16-SigLIP2-naflex": (375_234_050, 92_930_304),
    "ViT-SO400M-16-SigLIP2-naflex": (1_135_670_962, 427_888_064),
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


def test_every_open_clip_name_in_the_registry_has_its_count_asserted():
    named = [n for n in registry.list_models() if not n.startswith("mmfm-")]
    assert sorted(set(named) - set(OPEN_CLIP_COUNTS)) == []


def test_a_patch_that_does_not_divide_the_image_drops_the_remainder_like_timm():
    """So400m/14 at 384 px: a stride-14 convolution sees 27 x 27 patches (378 px), as in timm."""
    cfg = registry.get_model_config("ViT-SO400M-14-SigLIP-384")
    assert (cfg.image.grid, cfg.image.num_patches) == (27, 729)
    with pytest.raises(ValueError, match="only the linear stem drops the remainder"):
        registry.get_model_config("ViT-SO400M-14-SigLIP-384", **{"image.stem": "hmlp"})


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
