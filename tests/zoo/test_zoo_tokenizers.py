"""Tokenizer parity: CLIP BPE vs open_clip's tokenizer, SigLIP SentencePiece vs HF SiglipTokenizer.

Reference ids of 60 varied strings (punctuation, unicode, long, empty, ...) were computed by
tests/zoo/make_parity_fixtures.py with open_clip.tokenize and transformers' SiglipTokenizer.
"""
import json
import os
import pickle

import numpy as np
import pytest

import mmfm.api as mmfm
from mmfm.zoo.tokenizers import ClipTokenizer, SiglipTokenizer, byte_to_unicode

F = os.path.join(os.path.dirname(__file__), "fixtures")


@pytest.fixture(scope="module")
def strings():
    with open(os.path.join(F, "tokenizer_strings.json"), encoding="utf-8") as f:
        texts = json.load(f)
    assert len(texts) >= 50 and "" in texts and any(len(t) > 300 for t in texts)
    return texts


@pytest.fixture(scope="module")
def ref():
    return np.load(os.path.join(F, "tokenizer_ref.npz"))


def _mismatches(ids, want, texts):
    return [(texts[i], ids[i][:10].tolist(), want[i][:10].tolist())
            for i in range(len(texts)) if not np.array_equal(ids[i], want[i])]


def test_clip_bpe_matches_open_clip(strings, ref):
    tok = mmfm.get_tokenizer("ViT-B-32")
    assert isinstance(tok, ClipTokenizer) and tok.vocab_size == 49408
    assert _mismatches(tok(strings, 77), ref["clip_bpe"], strings) == []


def test_siglip_sentencepiece_matches_hf(strings, ref):
    tok = SiglipTokenizer(os.path.join(F, "siglip_tiny_spiece.model"), pad_id=int(ref["siglip_pad_id"]))
    assert tok.eot_id == int(ref["siglip_eos_id"]) and tok.bos_id is None
    assert _mismatches(tok(strings, 64), ref["siglip"], strings) == []


def test_get_tokenizer_by_file_and_pickle_roundtrip(strings, ref):
    tok = mmfm.get_tokenizer(os.path.join(F, "siglip_tiny_spiece.model"))
    again = pickle.loads(pickle.dumps(tok))
    assert np.array_equal(again(strings, 64), ref["siglip"])
    clip = pickle.loads(pickle.dumps(ClipTokenizer()))
    assert np.array_equal(clip(strings[:5], 77), ref["clip_bpe"][:5])


def test_clip_decode_and_byte_map():
    m = byte_to_unicode()
    assert len(set(m.values())) == 256 and m[ord("a")] == "a" and m[ord(" ")] == chr(256 + 32)
    tok = ClipTokenizer()
    assert tok.decode(tok("a Photo of a café!", 77)[0]) == "a photo of a café !"


def test_siglip_architecture_without_file_says_what_to_do():
    with pytest.raises(FileNotFoundError, match="spiece.model"):
        mmfm.get_tokenizer("ViT-B-16-SigLIP")
