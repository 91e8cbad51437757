"""Errors that say what is wrong: offline or failed downloads name MMFM_OFFLINE and the cache
directory (not a bare URLError); a mistyped path says "path not found" (not "unknown architecture")."""
import socket

import pytest

import mmfm
from mmfm.zoo import pretrained


def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now: connection refused
    return port


def test_a_failed_download_names_mmfm_offline_and_the_cache(tmp_path):
    url = f"http://127.0.0.1:{closed_port()}/open_clip_model.safetensors"
    with pytest.raises(pretrained.DownloadError) as e:
        pretrained.fetch(url, cache=str(tmp_path))
    msg = str(e.value)
    assert "MMFM_OFFLINE" in msg and str(tmp_path) in msg and "MMFM_CACHE_DIR" in msg, msg
    assert isinstance(e.value, ConnectionError)  # the CLI prints it as one line, exit 2


def test_offline_pretrained_tag_names_mmfm_offline_and_the_cache_path(tmp_path, monkeypatch):
    monkeypatch.setenv("MMFM_OFFLINE", "1")
    with pytest.raises(FileNotFoundError) as e:
        mmfm.create_model_and_transforms("ViT-B-32", pretrained="openai", cache_dir=str(tmp_path))
    msg = str(e.value)
    assert "MMFM_OFFLINE" in msg and str(tmp_path) in msg and "open_clip_model.safetensors" in msg


@pytest.mark.parametrize("name, pre", [("./runs/demo_exprot", None), ("runs/x/params.safetensors", None),
                                       ("ViT-B-32", "weights/opnai.safetensors")])
def test_a_mistyped_path_says_path_not_found(name, pre):
    with pytest.raises(FileNotFoundError, match="path not found"):
        mmfm.create_model_and_transforms(name, pretrained=pre)


def test_a_mistyped_name_still_lists_the_architectures():
    with pytest.raises(ValueError, match="unknown architecture 'ViT-B-3'.*ViT-B-32"):
        mmfm.create_model_and_transforms("ViT-B-3")
