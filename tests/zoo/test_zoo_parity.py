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
]


def _outputs(model, params, ref):
    img = np.asarray(mmfm.encode_image(model, params, ref["images_nhwc"]), np.float32)
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
