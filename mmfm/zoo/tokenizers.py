"""Tokenizers of converted models, behind mmfm's tokenizer contract
(`tok(texts, context_length) -> int32 [n, context_length]`, see mmfm.data.tokenizers).

`ClipTokenizer`: OpenAI CLIP's byte-level BPE as open_clip applies it: ftfy + double HTML
unescape + whitespace collapse + lowercase, the CLIP pre-token regex, BPE with `</w>` word ends;
rows `[SOT] pieces [EOT] 0...`, truncated keeping EOT last. The merges ship with mmfm
(`mmfm/zoo/data/clip_bpe_merges.txt`: the first 48,894 merges of bpe_simple_vocab_16e6, all that
CLIP's 49,408-entry vocabulary uses).

`SiglipTokenizer`: a SentencePiece model (spiece.model) with SigLIP's text canonicalisation
(lowercase, strip ASCII punctuation, collapse whitespace); rows `pieces [EOS] PAD...` with no BOS.
"""
from __future__ import annotations

import html
import os
import re
import string
from typing import Optional, Sequence

import numpy as np

from mmfm import fileio
from mmfm.data.tokenizers import Tokenizer, as_text_list, layout_rows

CLIP_MERGES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "clip_bpe_merges.txt")
CLIP_PATTERN = (r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]"
                r"|[^\s\p{L}\p{N}]+")
_WS = re.compile(r"\s+")


def byte_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable unicode map, in CLIP's vocabulary order.

    Printable latin-1 bytes map to themselves; the rest (control, space, ...) to 256 + n in
    byte order. The dict's insertion order is the order of the first 256 vocabulary entries.
    """
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    mapping = {b: chr(b) for b in keep}
    n = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + n)
            n += 1
    return mapping


def clip_clean(text: str) -> str:
    """open_clip's 'lower' cleaning: ftfy fix, HTML unescape (twice), whitespace, lowercase."""
    import ftfy

    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return _WS.sub(" ", text).strip().lower()


class ClipTokenizer:
    """CLIP BPE tokenizer: by default the shipped one (49,408 ids; SOT 49406, EOT 49407, pad 0).

    With `vocab_path` (a Hugging Face `vocab.json`) the ids, SOT and EOT come from that file and
    `merges_path` is its `merges.txt` (any vocabulary size): the same algorithm on other files.
    """

    SOT, EOT = "<|startoftext|>", "<|endoftext|>"

    def __init__(self, merges_path: str = CLIP_MERGES, *, num_merges: Optional[int] = 48894,
                 vocab_path: Optional[str] = None, pad_id: int = 0):
        for path in (merges_path, vocab_path):
            if path is not None and not fileio.isfile(path):
                raise FileNotFoundError(f"CLIP BPE file not found: {path}")
        self.path, self.num_merges = os.fspath(merges_path), num_merges
        self.vocab_path, self._pad = vocab_path and os.fspath(vocab_path), pad_id
        self._build()

    def _read_merges(self) -> list[tuple[str, ...]]:
        import gzip

        raw = fileio.read_bytes(self.path)
        lines = (gzip.decompress(raw) if self.path.endswith(".gz") else raw).decode("utf-8").split("\n")
        # As open_clip and transformers read it: skip the version line, at most 48,894 merges.
        limit = self.num_merges if self.num_merges is not None else 49152 - 256 - 2
        merges = [tuple(m.split()) for m in lines[1:limit + 1] if m.strip()]
        if (self.num_merges is not None and len(merges) != self.num_merges) or any(len(m) != 2 for m in merges):
            raise ValueError(f"{self.path}: expected {self.num_merges or 'up to 48894'} BPE merges "
                             "(pairs) after the version line")
        return merges

    def _build(self) -> None:
        import json

        import tokenizers as hf
        from tokenizers import models, pre_tokenizers

        merges = self._read_merges()
        chars = list(byte_to_unicode().values())
        if self.vocab_path is None:
            vocab = chars + [c + "</w>" for c in chars] + ["".join(m) for m in merges]
            self._vocab = {tok: i for i, tok in enumerate(vocab + [self.SOT, self.EOT])}
        else:
            self._vocab = {str(k): int(v) for k, v in json.loads(fileio.read_text(self.vocab_path)).items()}
            missing = [t for t in (self.SOT, self.EOT) if t not in self._vocab]
            if missing:
                raise ValueError(f"{self.vocab_path}: CLIP vocabulary lacks {missing}")
        tok = hf.Tokenizer(models.BPE(vocab=self._vocab, merges=merges, end_of_word_suffix="</w>",
                                      continuing_subword_prefix="", fuse_unk=False))
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(hf.Regex(CLIP_PATTERN), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        self._tok = tok
        self.vocab_size = max(self._vocab.values()) + 1
        self.bos_id, self.eot_id, self.pad_id = self._vocab[self.SOT], self._vocab[self.EOT], self._pad
        self.mask_id, self.unk_id = None, None
        self.special_ids = (self.pad_id, self.bos_id, self.eot_id)
        self._inv = {i: t for t, i in self._vocab.items()}
        self._bytes = {c: b for b, c in byte_to_unicode().items()}

    def encode(self, text: str) -> list[int]:
        """Piece ids of one text (cleaned as open_clip does), without SOT/EOT."""
        cleaned = clip_clean(text)
        return self._tok.encode(cleaned, add_special_tokens=False).ids if cleaned else []

    def __call__(self, texts: str | Sequence[str], context_length: int = 77) -> np.ndarray:
        return layout_rows([self.encode(t) for t in as_text_list(texts)], context_length, self.bos_id,
                       self.eot_id, self.pad_id)

    def decode(self, ids) -> str:
        ids = [int(i) for i in np.asarray(ids).reshape(-1)]
        if self.eot_id in ids:
            ids = ids[:ids.index(self.eot_id)]
        text = "".join(self._inv[i] for i in ids if i not in self.special_ids)
        words = [bytearray(self._bytes[c] for c in w).decode("utf-8", errors="replace")
                 for w in text.split("</w>")]
        return " ".join(w for w in words if w)

    def __getstate__(self):
        return {"path": self.path, "num_merges": self.num_merges, "vocab_path": self.vocab_path,
                "pad": self._pad}

    def __setstate__(self, state):
        self.path, self.num_merges = state["path"], state["num_merges"]
        self.vocab_path, self._pad = state["vocab_path"], state["pad"]
        self._build()

    def __repr__(self) -> str:
        return f"ClipTokenizer(vocab_size={self.vocab_size})"


_PUNCT = str.maketrans("", "", string.punctuation)


def siglip_canonicalize(text: str, lowercase: bool = True) -> str:
    """SigLIP's text canonicalisation: lowercase, drop ASCII punctuation, collapse whitespace."""
    if lowercase:
        text = text.lower()
    return _WS.sub(" ", text.translate(_PUNCT)).strip()


class SiglipTokenizer(Tokenizer):
    """SentencePiece `spiece.model` with SigLIP's canonicalisation; rows `pieces EOS PAD...`.

    pad_id: SigLIP pads with EOS (`</s>`, id 1) in Hugging Face's processor; None keeps the
    model's own pad piece.
    """

    def __init__(self, model_path: str, *, lowercase: bool = True, pad_id: Optional[int] = 1):
        self._pad_override = pad_id
        super().__init__(model_path, lowercase=lowercase)

    def _init(self, proto: bytes, lowercase: bool, mask_piece: str) -> None:
        super()._init(proto, lowercase, mask_piece)
        self.bos_id = None  # SigLIP rows start with the pieces
        if self._pad_override is not None:
            self.pad_id = self._pad_override
        self.special_ids = tuple(sorted({i for i in (self.pad_id, self.eot_id, self.mask_id,
                                                     self.unk_id) if i is not None}))

    def encode(self, text: str) -> list[int]:
        """Piece ids without EOS, as Hugging Face's SiglipTokenizer makes them: canonicalise
        '\u2581' + text, encode it behind the unk piece's text and drop that prefix's pieces (so
        Viterbi ties in long runs resolve exactly as in the reference)."""
        text = siglip_canonicalize("\u2581" + text, self.lowercase)
        unk = self._sp.id_to_piece(self.unk_id)
        return self._sp.encode(unk + text)[len(self._sp.encode(unk)):]

    def __getstate__(self):
        return dict(super().__getstate__(), pad_override=self._pad_override)

    def __setstate__(self, state):
        self._pad_override = state["pad_override"]
        super().__setstate__(state)

    def __repr__(self) -> str:
        return f"SiglipTokenizer({self.path!r}, vocab_size={self.vocab_size})"


TOKENIZER_KINDS = ("clip_bpe", "siglip", "sentencepiece", "hf")


def tokenizer_from_files(kind: str, paths: Sequence[str] = (), *, lowercase: bool = True,
                         pad_id: Optional[int] = None):
    """The tokenizer of a `TokenizerSpec` whose files (`spec.files()`, in that order) are at
    `paths`; no paths for the shipped CLIP BPE. Used by `mmfm.make_tokenizer` and `mmfm.local`,
    so it needs no model or registry code."""
    from mmfm.data.tokenizers import HFTokenizer, load_tokenizer

    if kind == "clip_bpe" and not paths:
        return ClipTokenizer()
    if not paths:
        raise ValueError(f"tokenizer {kind!r} needs its file(s)")
    if kind == "clip_bpe":
        return ClipTokenizer(paths[0], num_merges=None, vocab_path=paths[1], pad_id=pad_id or 0)
    if kind == "siglip":
        return SiglipTokenizer(paths[0], lowercase=lowercase, pad_id=pad_id)
    if kind == "hf":
        return HFTokenizer(paths[0], lowercase=lowercase, pad_id=pad_id)
    if kind == "sentencepiece":
        return load_tokenizer(paths[0], lowercase=lowercase)
    raise ValueError(f"unknown tokenizer kind {kind!r}; valid: {', '.join(TOKENIZER_KINDS)}")
