"""Weight sources: sha256, truncation, pickle refusal, architecture mismatch, cache and offline."""
import dataclasses
import hashlib
import os
import pickle
import shutil

import numpy as np
import pytest

import mmfm.api as mmfm
from mmfm.zoo import pretrained, registry
from mmfm.zoo.convert import hf

F = os.path.join(os.path.dirname(__file__), "fixtures")
OPENCLIP_DIR = os.path.join(F, "openclip_tiny")  # open_clip's hub layout
OPENCLIP = os.path.join(OPENCLIP_DIR, "open_clip_model.safetensors")
BV = os.path.join(F, "big_vision_siglip_tiny.npz")


def _sha(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_wrong_sha256_is_refused_right_one_accepted():
    with pytest.raises(pretrained.WeightsError, match=r"sha256 mismatch for .*openclip_tiny.*expected 0+"):
        mmfm.create_model(OPENCLIP, sha256="0" * 64)
    assert pretrained.fetch(OPENCLIP, sha256=_sha(OPENCLIP)) == OPENCLIP


@pytest.mark.parametrize("src", [OPENCLIP, BV], ids=["safetensors", "npz"])
def test_truncated_file_is_refused(src, tmp_path):
    cut = tmp_path / os.path.basename(src)
    data = open(src, "rb").read()
    cut.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(pretrained.WeightsError, match="truncated"):
        mmfm.create_model(str(cut))


@pytest.mark.parametrize("name", ["pytorch_model.bin", "model.pt", "weights.pth", "blob"])
def test_pickle_file_is_refused_with_conversion_hint(name, tmp_path):
    path = tmp_path / name
    path.write_bytes(pickle.dumps({"w": [1.0]}, protocol=4))
    with pytest.raises(pretrained.WeightsError, match=r"(?s)refusing pickle.*safetensors.torch"):
        mmfm.create_model(str(path))


def test_hf_dir_with_only_pytorch_bin_is_refused(tmp_path):
    shutil.copy(os.path.join(F, "hf_clip_tiny", "config.json"), tmp_path / "config.json")
    (tmp_path / "pytorch_model.bin").write_bytes(pickle.dumps({}))
    with pytest.raises(pretrained.WeightsError, match="refusing pickle"):
        mmfm.create_model(str(tmp_path))


def test_architecture_mismatch_names_first_parameter_and_shapes():
    with pytest.raises(ValueError, match=r"architecture mismatch \(ViT-B-16-SigLIP\): parameter "
                                         r"img/embedding/bias has shape \(32,\) in the weights but "
                                         r"\(768,\) in the model"):
        mmfm.create_model("ViT-B-16-SigLIP", pretrained=BV)


def test_url_download_cache_and_offline(tmp_path):
    url = "file://" + OPENCLIP
    cache = str(tmp_path / "cache")
    with pytest.raises(FileNotFoundError, match="offline mode"):
        pretrained.fetch(url, cache=cache, offline=True)
    with pytest.raises(pretrained.WeightsError, match="sha256 mismatch"):
        pretrained.fetch(url, cache=cache, sha256="f" * 64, offline=False)
    assert not any(files for _, _, files in os.walk(cache))  # a bad download leaves nothing
    path = pretrained.fetch(url, cache=cache, sha256=_sha(OPENCLIP), offline=False)
    assert path.startswith(cache) and _sha(path) == _sha(OPENCLIP)
    assert pretrained.fetch(url, cache=cache, offline=True) == path  # cached: offline works


def test_pretrained_tag_fetches_into_cache_then_works_offline(tmp_path, monkeypatch):
    """A tag resolves by its source names; here its URL base points at a local folder."""
    tag = registry.PretrainedTag(
        "mmfm-mu-8", "fixture", "openclip", "test/openclip-tiny", ("open_clip_model.safetensors",),
        "file://" + OPENCLIP_DIR + "/", sha256={"open_clip_model.safetensors": _sha(OPENCLIP)})
    monkeypatch.setitem(registry.PRETRAINED, ("mmfm-mu-8", "fixture"), tag)
    monkeypatch.setitem(registry.ARCHITECTURES, "mmfm-mu-8", lambda: _openclip_tiny_cfg())
    cache = str(tmp_path / "c")
    model, params = mmfm.create_model("mmfm-mu-8", pretrained="fixture", cache_dir=cache)
    ref = np.load(os.path.join(F, "openclip_tiny_ref.npz"))
    img = np.asarray(mmfm.encode_image(model, params, ref["images_nhwc"]))
    assert np.abs(img - ref["img_emb"]).max() <= 1e-5
    mmfm.create_model("mmfm-mu-8", pretrained="fixture", cache_dir=cache, offline=True)
    assert ("mmfm-mu-8", "fixture") in mmfm.list_pretrained()


def test_siglip2_tag_reads_preprocessing_and_tokenizer_from_its_files(tmp_path, monkeypatch):
    """A SigLIP 2 tag fetches the release's files (here from a local folder) and takes the
    preprocessing and Gemma tokenizer from preprocessor_config.json and tokenizer.json."""
    import json
    src = os.path.join(F, "hf_siglip2_tiny")
    tag = dataclasses.replace(registry.PRETRAINED[("ViT-B-16-SigLIP2", "webli")], url_base="file://" + src + "/",
                              arch="mmfm-mu-8", tag="fixture2")
    monkeypatch.setitem(registry.PRETRAINED, ("mmfm-mu-8", "fixture2"), tag)
    with open(os.path.join(src, "config.json")) as f:
        cfg = hf.infer_config(json.load(f))
    monkeypatch.setitem(registry.ARCHITECTURES, "mmfm-mu-8", lambda: cfg)
    model, params, _, pre = mmfm.create_model_and_transforms("mmfm-mu-8", pretrained="fixture2",
                                                             cache_dir=str(tmp_path / "c"))
    assert (pre.pre.image_size, pre.pre.interpolation) == (36, "bicubic")  # SiglipImageProcessor's
    ref = np.load(os.path.join(F, "hf_siglip2_tiny_ref.npz"))
    img = np.asarray(mmfm.encode_image(model, params, ref["images_nhwc"]))
    assert np.abs(img - ref["img_emb"]).max() <= 1e-5
    tok = mmfm.load_eval_model("mmfm-mu-8", "fixture2").tokenizer
    np.testing.assert_array_equal(tok(["A photo of a CAT."], 16), ref["tokens"][:1])


def _openclip_tiny_cfg():
    from mmfm.zoo.convert.openclip_config import model_config_from_openclip, read_json
    return model_config_from_openclip(read_json(os.path.join(OPENCLIP_DIR, "open_clip_config.json"), ""))


def test_unknown_tag_lists_valid_tags():
    with pytest.raises(ValueError, match=r"unknown pretrained tag for ViT-B-16-SigLIP 'webly'.*webli"):
        mmfm.create_model("ViT-B-16-SigLIP", pretrained="webly")
