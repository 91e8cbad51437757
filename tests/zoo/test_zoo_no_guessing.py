"""Conversions never guess: what the weights do not fix (heads, activation, LayerNorm eps, the
tokenizer) comes from the source's own files or is refused with one line naming what to pass; every
tensor's shape is checked against the architecture before anything is reshaped, on every route
(`create_model(PATH)`, `create_model(ARCH, pretrained=PATH)`, `mmfm convert`).

Fixtures: tests/zoo/make_parity_fixtures.py (open_clip's hub layout with 16-wide vision heads and 4
text heads; a Hugging Face CLIP with a 1,514-id CLIP BPE in its tokenizer.json)."""
import json
import os
import pickle
import shutil
import subprocess
import sys

import numpy as np
import pytest

import mmfm
from mmfm.zoo import pretrained, registry
from mmfm.zoo.convert.common import SourceError

F = os.path.join(os.path.dirname(__file__), "fixtures")
OC_DIR = os.path.join(F, "openclip_tiny")
OC_WEIGHTS = os.path.join(OC_DIR, "open_clip_model.safetensors")
HF_CLIP = os.path.join(F, "hf_clip_tiny")


def cli(*args, cwd):
    """The installed console script, from a directory outside the checkout."""
    exe = os.path.join(os.path.dirname(sys.executable), "mmfm")
    return subprocess.run([exe, *args], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, JAX_PLATFORMS="cpu"))


def one_line_refusal(proc, *expect):
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert len(lines) == 1, proc.stderr[-3000:]
    for text in expect:
        assert text in lines[0], lines[0]
    return lines[0]


def outputs(model, params, ref):
    img = np.asarray(mmfm.encode_image(model, params, ref["images_nhwc"]), np.float32)
    txt = np.asarray(mmfm.encode_text(model, params, ref["tokens"]), np.float32)
    return img, txt, np.exp(np.float32(params["t"][0])) * img @ txt.T


def assert_parity(model, params, ref_name):
    ref = np.load(os.path.join(F, f"{ref_name}_ref.npz"))
    img, txt, logits = outputs(model, params, ref)
    assert np.abs(img - ref["img_emb"]).max() <= 1e-5
    assert np.abs(txt - ref["txt_emb"]).max() <= 1e-5
    assert np.abs(logits - ref["logits"]).max() <= 1e-4


@pytest.fixture
def bare_state_dict(tmp_path):
    """The open_clip weights alone, away from their open_clip_config.json."""
    path = tmp_path / "weights" / "model.safetensors"
    path.parent.mkdir()
    shutil.copy(OC_WEIGHTS, path)
    return str(path)


@pytest.fixture
def model_config_json(tmp_path):
    with open(os.path.join(OC_DIR, "open_clip_config.json")) as f:
        model_cfg = json.load(f)["model_cfg"]
    path = tmp_path / "tiny-clip.json"
    path.write_text(json.dumps(model_cfg))
    return str(path)


def test_hub_layout_records_heads_the_width_rule_would_get_wrong():
    model, params, _, pre = mmfm.create_model_and_transforms(OC_DIR)
    assert (model.cfg.image.heads, model.cfg.text.heads) == (2, 4)  # 32 // 64 would give 1 and 1
    assert (model.cfg.image.act, model.cfg.text.ln_eps) == ("quick_gelu", 1e-6)
    assert_parity(model, params, "openclip_tiny")
    # preprocess_cfg of open_clip_config.json travels with the model
    assert (pre.pre.mean, pre.pre.interpolation, pre.pre.resize_mode) == ((0.4, 0.45, 0.5), "bilinear", "squash")


def test_hub_layout_converts_through_the_cli_with_its_tokenizer(tmp_path):
    out = tmp_path / "export"
    p = cli("convert", "--from", "openclip", OC_DIR, "--out", str(out), cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    assert sorted(os.listdir(out)) == ["MODEL_CARD.md", "config.json", "merges.txt",
                                       "params.safetensors", "vocab.json"]
    model, params = mmfm.create_model(str(out))
    assert_parity(model, params, "openclip_tiny")
    strings = json.load(open(os.path.join(F, "tokenizer_strings.json"), encoding="utf-8"))
    ref = np.load(os.path.join(F, "tokenizer_ref.npz"))["small_clip_openclip"]
    np.testing.assert_array_equal(mmfm.get_tokenizer(str(out))(strings, 77), ref)


def test_a_bare_state_dict_is_refused_naming_what_to_pass(bare_state_dict, tmp_path):
    with pytest.raises(pretrained.WeightsError, match=r"bare open_clip state dict.*--arch NAME.*--model_config FILE"):
        mmfm.create_model(bare_state_dict)
    p = cli("convert", "--from", "openclip", bare_state_dict, "--out", str(tmp_path / "x"), cwd=tmp_path)
    one_line_refusal(p, "model.safetensors", "--arch", "--model_config", "open_clip_config.json")
    assert not (tmp_path / "x").exists()


def test_a_bare_state_dict_with_its_model_config_converts(bare_state_dict, model_config_json, tmp_path,
                                                           monkeypatch):
    p = cli("convert", "--from", "openclip", bare_state_dict, "--model_config", model_config_json,
            "--out", str(tmp_path / "exp"), "--tokenizer", os.path.join(OC_DIR, "merges.txt"), cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    assert_parity(*mmfm.create_model(str(tmp_path / "exp")), "openclip_tiny")
    # the API route: register the config as open_clip.add_model_config does, then name it
    monkeypatch.setitem(registry.ARCHITECTURES, "tiny-clip", None)  # removed again after the test
    assert mmfm.add_model_config(model_config_json) == ["tiny-clip"]
    assert_parity(*mmfm.create_model("tiny-clip", pretrained=bare_state_dict), "openclip_tiny")


def test_wrong_architecture_names_the_first_tensor_before_any_reshape(bare_state_dict, tmp_path):
    want = "architecture mismatch (ViT-B-32): tensor visual.conv1.weight has shape (32, 3, 8, 8)"
    with pytest.raises(SourceError, match=want.replace("(", r"\(").replace(")", r"\)")):
        mmfm.create_model("ViT-B-32", pretrained=bare_state_dict)
    p = cli("convert", "--from", "openclip", bare_state_dict, "--arch", "ViT-B-32", "--out",
            str(tmp_path / "x"), cwd=tmp_path)
    one_line_refusal(p, want, "(768, 3, 32, 32)")


def test_an_unsupported_open_clip_option_is_refused_by_name(tmp_path):
    d = tmp_path / "hub"
    shutil.copytree(OC_DIR, d)
    cfg = json.load(open(d / "open_clip_config.json"))
    cfg["model_cfg"]["vision_cfg"]["ls_init_value"] = 0.1
    (d / "open_clip_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"vision_cfg.ls_init_value=0.1 is not supported"):
        mmfm.create_model(str(d))


def test_an_hf_config_that_disagrees_with_its_weights_is_refused_at_load(tmp_path):
    d = tmp_path / "hf"
    shutil.copytree(HF_CLIP, d)
    cfg = json.load(open(d / "config.json"))
    cfg["text_config"]["intermediate_size"] = 128
    (d / "config.json").write_text(json.dumps(cfg))
    want = ("tensor text_model.encoder.layers.0.mlp.fc1.weight has shape (64, 32) in the Hugging "
            "Face clip safetensors but (128, 32)")
    with pytest.raises(SourceError, match=want.replace("(", r"\(").replace(")", r"\)")):
        mmfm.create_model(str(d))
    one_line_refusal(cli("convert", "--from", "hf", str(d), "--out", str(tmp_path / "x"), cwd=tmp_path),
                     "config.json", want)


def test_hf_clip_tokenizer_comes_from_its_tokenizer_json_not_the_vocabulary_size(tmp_path):
    strings = json.load(open(os.path.join(F, "tokenizer_strings.json"), encoding="utf-8"))
    ref = np.load(os.path.join(F, "tokenizer_ref.npz"))["small_clip_hf"]  # transformers' CLIPTokenizer
    np.testing.assert_array_equal(mmfm.get_tokenizer(HF_CLIP)(strings, 77), ref)
    p = cli("convert", "--from", "hf", HF_CLIP, "--out", str(tmp_path / "exp"), cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "tokenizer.json" in os.listdir(tmp_path / "exp")
    np.testing.assert_array_equal(mmfm.get_tokenizer(str(tmp_path / "exp"))(strings, 77), ref)
    assert_parity(*mmfm.create_model(str(tmp_path / "exp")), "hf_clip_tiny")


def test_a_model_without_tokenizer_files_loads_but_names_the_places_searched(tmp_path):
    d = tmp_path / "hf"
    d.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(os.path.join(HF_CLIP, name), d / name)
    assert_parity(*mmfm.create_model(str(d)), "hf_clip_tiny")  # the towers need no tokenizer
    with pytest.raises(FileNotFoundError, match=r"looked for tokenizer.json, vocab.json \+ merges.txt, "
                                                r"spiece.model, tokenizer.model in .*hf"):
        mmfm.get_tokenizer(str(d))
    one_line_refusal(cli("convert", "--from", "hf", str(d), "--out", str(tmp_path / "x"), cwd=tmp_path),
                     "looked for tokenizer.json", "--tokenizer FILE")


@pytest.mark.parametrize("route", ["create_model", "create_model_arch", "convert"])
@pytest.mark.parametrize("bad", ["truncated", "pickle"])
def test_bad_files_are_one_clear_refusal_on_every_route(route, bad, tmp_path):
    path = tmp_path / ("model.safetensors" if bad == "truncated" else "model.bin")
    if bad == "truncated":
        data = open(OC_WEIGHTS, "rb").read()
        path.write_bytes(data[: len(data) // 2])
        want = "truncated"
    else:
        path.write_bytes(pickle.dumps({"w": [1.0]}, protocol=4))
        want = "refusing pickle"
    if route == "convert":
        p = cli("convert", "--from", "openclip", str(path), "--arch", "ViT-B-32", "--out",
                str(tmp_path / "x"), cwd=tmp_path)
        one_line_refusal(p, str(path), want)
        return
    with pytest.raises(pretrained.WeightsError, match=want):
        if route == "create_model":
            mmfm.create_model(str(path))
        else:
            mmfm.create_model("ViT-B-32", pretrained=str(path))


@pytest.mark.parametrize("src", [HF_CLIP, os.path.join(F, "hf_siglip2_tiny"),
                                 os.path.join(F, "big_vision_siglip_tiny.npz")], ids=["hf_clip", "hf_siglip2", "big_vision"])
def test_wrong_architecture_is_one_line_on_every_converter(src, tmp_path):
    with pytest.raises(SourceError, match=r"architecture mismatch \(ViT-B-32\)"):
        mmfm.create_model("ViT-B-32", pretrained=src)
    conv = "big_vision" if src.endswith(".npz") else "hf"
    p = cli("convert", "--from", conv, src, "--arch", "ViT-B-32", "--out", str(tmp_path / "x"), cwd=tmp_path)
    one_line_refusal(p, "architecture mismatch (ViT-B-32)")


@pytest.mark.parametrize("npz,tok,ref_name", [
    ("big_vision_siglip_tiny.npz", "siglip_tiny_spiece.model", "hf_siglip_tiny"),
    ("big_vision_siglip2_tiny.npz", os.path.join("hf_siglip2_tiny", "tokenizer.json"), "hf_siglip2_tiny")])
def test_big_vision_converts_with_the_tokenizer_it_is_given(npz, tok, ref_name, tmp_path):
    """A big_vision npz holds no tokenizer: without one `mmfm convert` names what to pass; with
    --tokenizer the export carries it and reproduces the reference."""
    src = os.path.join(F, npz)
    one_line_refusal(cli("convert", "--from", "big_vision", src, "--out", str(tmp_path / "x"), cwd=tmp_path),
                     "looked for spiece.model", "--tokenizer FILE")
    p = cli("convert", "--from", "big_vision", src, "--tokenizer", os.path.join(F, tok), "--out",
            str(tmp_path / "exp"), cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    model, params = mmfm.create_model(str(tmp_path / "exp"))
    ref = np.load(os.path.join(F, f"{ref_name}_ref.npz"))
    size = model.cfg.image.image_size  # the npz records the 4 x 4 grid only: 32 px
    img = np.asarray(mmfm.encode_image(model, params, ref["images_nhwc"][:, :size, :size]))
    assert np.abs(img - ref["img_emb"]).max() <= 1e-5
    if ref_name == "hf_siglip2_tiny":
        texts = ["A photo of a CAT.", "two dogs", "x" * 300, ""]
        np.testing.assert_array_equal(mmfm.get_tokenizer(str(tmp_path / "exp"))(texts, 16), ref["tokens"])
