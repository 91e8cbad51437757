"""Tests for the SentencePiece and Hugging Face tokenizers behind the mmfm call contract."""
import pickle

import numpy as np
import pytest
import tokenizers as hf

from mmfm.data.tokenizers import HFTokenizer, Tokenizer, load_tokenizer, train_tokenizer

CORPUS = [f"A {size} {color} {shape} on the {side}"
          for size in ("small", "large") for color in ("red", "green", "blue", "orange")
          for shape in ("circle", "square", "star") for side in ("left", "right")] * 5


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return train_tokenizer(iter(CORPUS), tmp_path_factory.mktemp("tok") / "tok.model",
                           vocab_size=128)


def test_layout_and_round_trip(tok):
    texts = ["a small red circle on the left", "a large blue star"]
    ids = tok(texts, 16)
    assert ids.dtype == np.int32 and ids.shape == (2, 16)
    assert tok.pad_id == 0 and len(set(tok.special_ids)) == 5
    for row, text in zip(ids, texts):
        real = row[row != tok.pad_id]
        assert real[0] == tok.bos_id and real[-1] == tok.eot_id
        assert list(row[len(real):]) == [0] * (16 - len(real))  # padding only at the end
        assert not np.isin(real[1:-1], tok.special_ids).any()
        assert tok.decode(row) == text
    assert tok("a red star", 16).shape == (1, 16)
    assert 0 < tok.vocab_size <= 128 and ids.max() < tok.vocab_size


def test_truncation_keeps_eot(tok):
    long = " ".join(CORPUS[:5])
    row = tok(long, 8)[0]
    assert row[0] == tok.bos_id and row[-1] == tok.eot_id
    assert (row != tok.pad_id).all()
    assert tok.decode(row) == tok.decode(tok(long, 256)[0])[:len(tok.decode(row))]


def test_mask_id_is_never_produced(tok):
    assert tok.mask_id not in (tok.pad_id, tok.bos_id, tok.eot_id, tok.unk_id)
    assert tok.mask_id in tok.special_ids
    texts = ["<mask>", "a <mask> circle", "[MASK] <s> </s> <pad>"] + CORPUS[:20]
    assert tok.mask_id not in tok(texts, 32)


def test_lowercase_and_unknown_text(tok):
    np.testing.assert_array_equal(tok("A RED Circle", 12), tok("a red circle", 12))
    row = tok("zebra ☃", 12)[0]  # unseen characters map to unk, never crash
    assert row[0] == tok.bos_id and tok.eot_id in row


def test_save_load_and_pickle_give_the_same_ids(tok):
    texts = CORPUS[:7]
    expected = tok(texts, 20)
    np.testing.assert_array_equal(load_tokenizer(tok.path)(texts, 20), expected)
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(tok))(texts, 20), expected)


def test_bad_input_errors(tok, tmp_path):
    with pytest.raises(ValueError, match="context_length"):
        tok("a red star", 1)
    with pytest.raises(TypeError, match="str"):
        tok(["a", 3], 8)
    with pytest.raises(ValueError, match="no non-empty texts"):
        train_tokenizer(["", "  "], tmp_path / "empty.model")
    with pytest.raises(ValueError, match="tokenizer file type"):
        load_tokenizer(tmp_path / "vocab.txt")
    with pytest.raises(FileNotFoundError):
        Tokenizer(str(tmp_path / "missing.model"))


@pytest.fixture
def hf_path(tmp_path):
    words = ["<pad>", "<|startoftext|>", "<|endoftext|>", "<unk>", "[MASK]",
             "a", "red", "blue", "circle", "star"]
    model = hf.models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>")
    t = hf.Tokenizer(model)
    t.pre_tokenizer = hf.pre_tokenizers.Whitespace()
    t.add_special_tokens(["<pad>", "<|startoftext|>", "<|endoftext|>", "<unk>", "[MASK]"])
    t.post_processor = hf.processors.TemplateProcessing(
        single="<|startoftext|> $A <|endoftext|>",
        special_tokens=[("<|startoftext|>", 1), ("<|endoftext|>", 2)])
    t.decoder = hf.decoders.WordPiece()
    path = tmp_path / "tokenizer.json"
    t.save(str(path))
    return path


def test_hf_tokenizer_same_contract(hf_path):
    tok = load_tokenizer(hf_path)
    assert isinstance(tok, HFTokenizer)
    assert (tok.pad_id, tok.bos_id, tok.eot_id, tok.mask_id) == (0, 1, 2, 4)
    ids = tok(["a red circle", "a blue star a red star a red circle"], 6)
    np.testing.assert_array_equal(ids[0], [1, 5, 6, 8, 2, 0])
    np.testing.assert_array_equal(ids[1], [1, 5, 7, 9, 5, 2])  # truncated, EOT kept last
    assert tok.decode(ids[0]) == "a red circle"
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(tok))("a red circle", 6), ids[:1])
    assert HFTokenizer(str(hf_path), pad_id=3).pad_id == 3
