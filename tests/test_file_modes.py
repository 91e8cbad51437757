"""Files mmfm writes honour the umask, like files `open()` creates (params.safetensors and trained
tokenizers were 0600 whatever the umask)."""
import os
import stat

import pytest

import mmfm
from mmfm.data.tokenizers import train_tokenizer
from mmfm.zoo.convert import common
from mmfm.zoo.export import save_export
from mmfm.zoo.registry import TokenizerSpec
from mmfm.zoo.sources import default_preprocess


@pytest.fixture(params=[0o022, 0o027])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_export_and_tokenizer_files_honour_the_umask(tmp_path, umask):
    model, params = mmfm.create_model("mmfm-mu-8")
    cfg = model.cfg
    tok = train_tokenizer([f"a red circle number {i}" for i in range(200)], str(tmp_path / "t.model"),
                          vocab_size=60)
    assert mode(tok.path if hasattr(tok, "path") else tmp_path / "t.model") == 0o666 & ~umask
    out = save_export(str(tmp_path / "exp"), common.flatten(params), cfg,
                      preprocess=default_preprocess(cfg),
                      tokenizer=TokenizerSpec("sentencepiece", "t.model", cfg.text.context_length),
                      tokenizer_files=[str(tmp_path / "t.model")])
    assert mode(out) == 0o777 & ~umask
    for name in os.listdir(out):
        assert mode(os.path.join(out, name)) == 0o666 & ~umask, name
