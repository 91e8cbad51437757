"""Every size in the table builds abstractly; parameter counts equal the closed form."""
import dataclasses

import flax.linen as nn
import jax
import numpy as np
import pytest

from mmfm.models.config import (SIZES, DecoderConfig, ModelConfig, count_params_closed_form,
                                model_config_from_dict, model_config_to_dict, text_config,
                                vit_config)
from mmfm.models.multimodal import TwoTower, init_params


def abstract_params(cfg: ModelConfig):
    return jax.eval_shape(lambda r: nn.meta.unbox(init_params(TwoTower(cfg), r)), jax.random.PRNGKey(0))


def n_params(tree) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


@pytest.mark.parametrize("variant", [f"{s}/16" for s in SIZES] + ["B/14", "B/32", "L/14"])
def test_every_size_builds_with_closed_form_count(variant):
    size = variant.split("/")[0]
    cfg = ModelConfig(image=vit_config(variant, image_size=224),
                      text=text_config(size, vocab_size=1000, context_length=16), embed_dim=256).validate()
    assert n_params(abstract_params(cfg)) == count_params_closed_form(cfg)


def test_classifier_head_adds_embed_times_classes_plus_bias():
    base = ModelConfig(image=vit_config("mu/8", image_size=32), text=text_config("mu"),
                       embed_dim=16).validate()
    head = dataclasses.replace(base, num_classes=7).validate()
    shapes = jax.tree.map(lambda x: x.shape, abstract_params(head))
    assert shapes["classifier"] == {"kernel": (16, 7), "bias": (7,)}
    assert n_params(abstract_params(head)) - n_params(abstract_params(base)) == 16 * 7 + 7
    assert count_params_closed_form(head) == n_params(abstract_params(head))


@pytest.mark.parametrize("variant", [
    dict(pool="map", posemb="sincos2d"),
    dict(pool="mean", patch_bias=False, ln_pre=True),
    dict(pool="cls", cls_posemb=True, head_bias=False),
    dict(pool="none", ln_post=False, scan=True),
    dict(stem="hmlp"),
    dict(stem="conv", patch_bias=False),
])
def test_options_change_count_as_the_closed_form_says(variant):
    cfg = ModelConfig(image=vit_config("mu/8", image_size=32, **variant),
                      text=text_config("mu", mlm_head=True, causal=False, pool="mean"),
                      embed_dim=16, init_bias=-10.0, mae_decoder=DecoderConfig()).validate()
    assert n_params(abstract_params(cfg)) == count_params_closed_form(cfg)


@pytest.mark.parametrize("patch, stem, stages", [
    (16, "hmlp", [(4, 4), (2, 2), (2, 2)]),  # Touvron et al. 2022's 16 px hMLP stem
    (14, "hmlp", [(14, 14)]),
    (8, "hmlp", [(4, 4), (2, 2)]),
    (16, "conv", [(3, 2), (3, 2), (3, 2), (2, 2)]),
    (14, "conv", [(3, 2), (7, 7)]),
])
def test_stem_stages_reduce_a_patch_to_one_token(patch, stem, stages):
    from mmfm.models.stems import stem_stages
    cfg = vit_config(f"mu/{patch}", image_size=patch * 4, stem=stem)
    assert stem_stages(cfg) == stages
    side = patch  # VALID when kernel == stride, SAME (ceil) otherwise
    for k, s in stages:
        side = side // s if k == s else -(-side // s)
    assert side == 1


# Stem parameters written out by hand from the stem definitions (mmfm/models/stems.py docstring):
# hmlp = 4x4 then 2x2 non-overlapping projections with LayerNorm between; conv = 3x3 stride-2
# convolutions until the side is 2, then one 2x2 cell; hidden channels max(16, width / 4); only
# the last stage's bias follows `patch_bias`. Each entry: kernel shapes, then the total count.
def _ln(c):  # LayerNorm scale + bias
    return 2 * c


STEM_CASES = [
    # B/16 hMLP (Touvron et al. 2022): 16 -> 4 -> 2 -> 1 cells, 768 wide, 192 hidden.
    ("B/16", "hmlp", True, [(4, 4, 3, 192), (2, 2, 192, 192), (2, 2, 192, 768)],
     (4 * 4 * 3 * 192 + 192) + _ln(192) + (2 * 2 * 192 * 192 + 192) + _ln(192)
     + (2 * 2 * 192 * 768 + 768)),
    # mu/8 hMLP: 8 -> 2 -> 1, width 32, hidden max(16, 8) = 16; no bias on the last stage.
    ("mu/8", "hmlp", False, [(4, 4, 3, 16), (2, 2, 16, 32)],
     (4 * 4 * 3 * 16 + 16) + _ln(16) + 2 * 2 * 16 * 32),
    # mu/14 hMLP: 14 is not a multiple of 4, so one 14x14 cell.
    ("mu/14", "hmlp", True, [(14, 14, 3, 32)], 14 * 14 * 3 * 32 + 32),
    # S/16 conv: 16 -> 8 -> 4 -> 2 by 3x3 stride 2 (96 hidden), then a 2x2 cell to 384.
    ("S/16", "conv", True, [(3, 3, 3, 96), (3, 3, 96, 96), (3, 3, 96, 96), (2, 2, 96, 384)],
     (3 * 3 * 3 * 96 + 96) + _ln(96) + 2 * ((3 * 3 * 96 * 96 + 96) + _ln(96))
     + (2 * 2 * 96 * 384 + 384)),
]


@pytest.mark.parametrize("variant, stem, bias, kernels, total", STEM_CASES,
                         ids=[f"{c[0]}-{c[1]}" for c in STEM_CASES])
def test_stem_parameters_equal_the_hand_written_count(variant, stem, bias, kernels, total):
    patch = variant.split("/")[1]
    cfg = ModelConfig(image=vit_config(variant, image_size=4 * int(patch), stem=stem,
                                       patch_bias=bias),
                      text=text_config("mu"), embed_dim=16).validate()
    params = abstract_params(cfg)
    got = params["img"]["stem"]
    assert [got[f"conv_{i}"]["kernel"].shape for i in range(len(kernels))] == kernels
    assert len([k for k in got if k.startswith("conv_")]) == len(kernels)
    assert n_params(got) == total
    # The model-wide closed form adds the same stem count to everything else.
    linear = dataclasses.replace(cfg, image=dataclasses.replace(cfg.image, stem="linear"))
    p = int(patch)
    linear_stem = p * p * 3 * cfg.image.width + (cfg.image.width if bias else 0)
    assert count_params_closed_form(cfg) - count_params_closed_form(linear) == total - linear_stem


def test_known_published_counts():
    """ViT-B/16 ImageNet backbone: 85.8M without head (ViT paper Table 1 says 86M)."""
    cfg = ModelConfig(image=vit_config("B/16", image_size=224, head=False, cls_posemb=True),
                      text=text_config("mu"), embed_dim=768).validate()
    vis = abstract_params(cfg)["img"]
    # 85,798,656 = timm vit_base_patch16_224 (86,567,656) minus its 1000-class head (769,000).
    assert n_params(vis) == 85_798_656


def test_scan_and_loop_have_equal_counts_and_stacked_layout():
    base = dict(image=vit_config("mu/8", image_size=32), text=text_config("mu"), embed_dim=16)
    loop = abstract_params(ModelConfig(**base))
    scan_cfg = ModelConfig(image=dataclasses.replace(base["image"], scan=True),
                           text=dataclasses.replace(base["text"], scan=True), embed_dim=16)
    scan = abstract_params(scan_cfg)
    assert n_params(loop) == n_params(scan)
    depth = base["image"].depth
    assert scan["img"]["encoder"]["blocks"]["attn"]["query_kernel"].shape[0] == depth
    assert "block_0" in loop["img"]["encoder"]


@pytest.mark.parametrize("bad, key", [
    (dict(image=dict(variant="mu", width=30, heads=4)), "model.image.heads"),
    # a patch that does not divide the image: only the linear stem drops the remainder (as timm)
    (dict(image=dict(variant="mu", image_size=30, patch_size=8, stem="hmlp")), "model.image.patch_size"),
    (dict(image=dict(variant="mu", image_size=4, patch_size=8)), "model.image.patch_size"),
    (dict(text=dict(variant="mu", pool="cls")), "model.text.pool"),
    (dict(image=dict(variant="XL")), "unknown model size"),
    (dict(image=dict(variant="mu", colour=1)), "model.image: unknown key"),
    (dict(embed_dim=16, image=dict(variant="mu", head=False)), "model.image.head"),
])
def test_bad_configs_name_the_key(bad, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        model_config_from_dict(bad)


def test_config_dict_round_trip():
    cfg = model_config_from_dict({"image": {"variant": "S/16", "image_size": 224, "pool": "map"},
                                  "text": {"variant": "S"}, "embed_dim": 384,
                                  "mae_decoder": {"width": 64}, "dtype": "bfloat16"})
    assert cfg.image.width == 384 and cfg.image.dtype == "bfloat16" and cfg.text.dtype == "bfloat16"
    assert model_config_from_dict(model_config_to_dict(cfg)) == cfg
