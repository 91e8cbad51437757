"""Numerical parity of converted models with their source implementations (no torch needed).

References (tests/zoo/fixtures/*_ref.npz) were computed by tests/zoo/make_parity_fixtures.py with
open_clip, transformers' CLIPModel and SiglipModel on small random models; the big_vision npz holds
the HF SigLIP weights in big_vision's layout, so it must reproduce the HF SigLIP outputs.
"""
import os

import jax
import numpy as np
import pytest

import mmfm.api as mmfm
from mmfm.zoo import sources
from mmfm.zoo.convert import common

F = os.path.join(os.path.dirname(__file__), "fixtures")
# (source, reference name). The open_clip source is open_clip's hub layout; its model has 16-wide
# vision heads and 4 text heads (width // 64 would give 1), QuickGELU and text LayerNorm eps 1e-6,
# all of which only its open_clip_config.json records.
SOURCES = [
    ("openclip_tiny", "openclip_tiny"),
    ("hf_clip_tiny", "hf_clip_tiny"),
    ("hf_siglip_tiny", "hf_siglip_tiny"),
    ("big_vision_siglip_tiny.npz", "hf_siglip_tiny"),
    # SigLIP 2 at fixed resolution: a SiglipModel with Gemma's tokenizer; 36 px at patch 8
    ("hf_siglip2_tiny", "hf_siglip2_tiny"),
    ("big_vision_siglip2_tiny.npz", "hf_siglip2_tiny"),
]


def _outputs(model, params, ref):
    # A big_vision npz records only the patch grid, so it loads at grid * patch pixels (32 for the
    # 36 px SigLIP 2 fixture); the dropped rows and columns never reach the patch convolution.
    size = model.cfg.image.image_size
    img = np.asarray(mmfm.encode_image(model, params, ref["images_nhwc"][:, :size, :size]), np.float32)
    txt = np.asarray(mmfm.encode_text(model, params, ref["tokens"]), np.float32)
    logits = np.exp(np.float32(params["t"][0])) * img @ txt.T
    if "b" in params:
        logits = logits + np.float32(params["b"][0])
    return img, txt, logits


def _load(src, **overrides):
    """(model, params) through the public API: `create_model(path)`."""
    return mmfm.create_model(os.path.join(F, src), overrides=overrides or None)


@pytest.mark.parametrize("src,ref_name", SOURCES, ids=[s[0] for s in SOURCES])
def test_f32_parity(src, ref_name):
    ref = np.load(os.path.join(F, f"{ref_name}_ref.npz"))
    model, params = _load(src)
    img, txt, logits = _outputs(model, params, ref)
    assert np.abs(img - ref["img_emb"]).max() <= 1e-5
    assert np.abs(txt - ref["txt_emb"]).max() <= 1e-5
    assert np.abs(logits - ref["logits"]).max() <= 1e-4


@pytest.mark.parametrize("src,ref_name", SOURCES, ids=[s[0] for s in SOURCES])
def test_bf16_compute_stays_close(src, ref_name, capsys):
    """bf16 compute (f32 params): reported, and bounded by bf16's ~3 significant digits."""
    ref = np.load(os.path.join(F, f"{ref_name}_ref.npz"))
    model, params = _load(src, dtype="bfloat16")
    img, txt, logits = _outputs(model, params, ref)
    d = (np.abs(img - ref["img_emb"]).max(), np.abs(txt - ref["txt_emb"]).max(),
         np.abs(logits - ref["logits"]).max())
    with capsys.disabled():
        print(f"\nbf16 {src}: max|d| img {d[0]:.2e} txt {d[1]:.2e} logits {d[2]:.2e}")
    assert d[0] < 5e-2 and d[1] < 5e-2


def test_scanned_layout_gives_identical_outputs():
    ref = np.load(os.path.join(F, "hf_siglip_tiny_ref.npz"))
    model, params = _load("hf_siglip_tiny", scan=True)
    assert params["img"]["encoder"]["blocks"]["ln1"]["scale"].shape == (2, 32)
    img, txt, _ = _outputs(model, params, ref)
    assert np.abs(img - ref["img_emb"]).max() <= 1e-5
    assert np.abs(txt - ref["txt_emb"]).max() <= 1e-5
    back = common.to_canonical(common.flatten(jax.device_get(params)))
    _, flat, _ = sources.convert_source(os.path.join(F, "hf_siglip_tiny"))
    assert sorted(back) == sorted(flat)


def test_mesh_placement_shards_params_and_keeps_outputs():
    from mmfm import sharding as sh
    mesh = sh.make_mesh((2, 2, 2))
    ref = np.load(os.path.join(F, "hf_clip_tiny_ref.npz"))
    model, params = mmfm.create_model(os.path.join(F, "hf_clip_tiny"), mesh=mesh)
    kernel = params["img"]["encoder"]["block_0"]["mlp"]["fc1"]["kernel"]  # (embed, mlp)
    assert kernel.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor")
    img, txt, logits = _outputs(model, params, ref)
    assert np.abs(img - ref["img_emb"]).max() <= 1e-5
    assert np.abs(logits - ref["logits"]).max() <= 1e-4


def test_converted_export_roundtrip_via_cli(tmp_path):
    """`mmfm convert --from hf` writes an export that loads by path with its tokenizer/preprocess."""
    import shutil
    from mmfm.cli import convert_main
    src = tmp_path / "siglip"
    shutil.copytree(os.path.join(F, "hf_siglip_tiny"), src)
    convert_main(["--from", "hf", str(src), "--out", str(tmp_path / "exp")])
    model, params, _, pre = mmfm.create_model_and_transforms(str(tmp_path / "exp"))
    ref = np.load(os.path.join(F, "hf_siglip_tiny_ref.npz"))
    img, txt, logits = _outputs(model, params, ref)
    assert np.abs(logits - ref["logits"]).max() <= 1e-4
    assert (pre.pre.mean, pre.pre.resize_mode) == ((0.5, 0.5, 0.5), "squash")
    tok = mmfm.get_tokenizer(str(tmp_path / "exp"))
    assert tok("A photo.", 16).shape == (1, 16)


def test_siglip2_converts_with_its_gemma_tokenizer(tmp_path):
    """`mmfm convert` of a SigLIP 2 directory: parity, and the Gemma tokenizer (tokenizer.json,
    lowercased, sticky EOS, <pad> padding) equal to transformers' Siglip2Tokenizer on 60 strings."""
    import json
    from mmfm.cli import convert_main
    convert_main(["--from", "hf", os.path.join(F, "hf_siglip2_tiny"), "--out", str(tmp_path / "exp")])
    model, params = mmfm.create_model(str(tmp_path / "exp"))
    ref = np.load(os.path.join(F, "hf_siglip2_tiny_ref.npz"))
    img, txt, logits = _outputs(model, params, ref)
    assert np.abs(img - ref["img_emb"]).max() <= 1e-5 and np.abs(logits - ref["logits"]).max() <= 1e-4
    assert model.cfg.image.grid == 4  # 36 px at patch 8: the remainder is dropped, as in transformers
    strings = json.load(open(os.path.join(F, "tokenizer_strings.json"), encoding="utf-8"))
    want = np.load(os.path.join(F, "tokenizer_ref.npz"))["gemma_siglip2"]
    for src in (os.path.join(F, "hf_siglip2_tiny"), str(tmp_path / "exp")):
        np.testing.assert_array_equal(mmfm.get_tokenizer(src)(strings, 64), want)
    tok = mmfm.get_tokenizer(str(tmp_path / "exp"))
    np.testing.assert_array_equal(tok(["A photo of a CAT.", "two dogs", "x" * 300, ""], 16), ref["tokens"])
