"""Text tokenizers with one call contract for the pipeline and the model.

    tok(texts, context_length) -> int32 [n, context_length]

Every row is laid out as `[BOS] pieces... [EOT] [PAD]...` with PAD id 0; when a text is too long
its pieces are cut so EOT is still the last real token (text towers pool at EOT). `mask_id` is a
dedicated id for masked language modelling that encoding text never produces.

Two implementations: `Tokenizer` (a SentencePiece model, trained here with `train_tokenizer`) and
`HFTokenizer` (a Hugging Face `tokenizer.json`). Both pickle, so grain worker processes can use
them. `load_tokenizer(path)` picks the right one from the file name.
"""
from __future__ import annotations

import io
import json
import itertools
import os
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import sentencepiece as spm
import tokenizers as hf

from mmfm import fileio

# Fixed SentencePiece ids for trained models: PAD must be 0 (the padding value), the rest follow.
PAD_ID, UNK_ID, BOS_ID, EOT_ID = 0, 1, 2, 3
MASK_PIECE = "<mask>"


def as_text_list(texts: str | Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        return [texts]
    texts = list(texts)
    for t in texts:
        if not isinstance(t, str):
            raise TypeError(f"tokenizer expects str or a sequence of str, got item {t!r}")
    return texts


def layout_rows(pieces: list[list[int]], context_length: int, bos_id: int | None, eot_id: int,
            pad_id: int) -> np.ndarray:
    """Packs piece ids into `[BOS] pieces [EOT] [PAD]...` rows, keeping EOT when truncating."""
    prefix = [] if bos_id is None else [bos_id]
    room = context_length - len(prefix) - 1
    if room < 0:
        raise ValueError(f"context_length={context_length} leaves no room for BOS/EOT")
    out = np.full((len(pieces), context_length), pad_id, dtype=np.int32)
    for row, ids in enumerate(pieces):
        ids = prefix + list(ids[:room]) + [eot_id]
        out[row, :len(ids)] = ids
    return out


class _RowLayout:
    """The shared call contract: `encode` one text -> rows `[BOS] pieces [EOT] [PAD]...`."""

    def __call__(self, texts: str | Sequence[str], context_length: int) -> np.ndarray:
        """Tokenizes to int32 [n, context_length] rows `[BOS] pieces [EOT] [PAD]...`."""
        pieces = [self.encode(t) for t in as_text_list(texts)]
        return layout_rows(pieces, context_length, self.bos_id, self.eot_id, self.pad_id)

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        """Text of one row of ids; special ids (and anything after EOT) are ignored."""
        ids = [int(i) for i in np.asarray(ids).reshape(-1)]
        if self.eot_id in ids:
            ids = ids[:ids.index(self.eot_id)]
        return self._decode_pieces([i for i in ids if i not in self.special_ids])


class Tokenizer(_RowLayout):
    """A SentencePiece model with the mmfm layout.

    Args:
      model_path: a `.model` file written by SentencePiece (e.g. by `train_tokenizer`).
      lowercase: lowercase texts before encoding (models from `train_tokenizer` already case-fold
        in their normaliser, so this is only needed for foreign models).
      mask_piece: the control piece used as `mask_id`; if the model lacks it, a new id just past
        the vocabulary is used (and `vocab_size` grows by one) so it never collides with text.
    """

    def __init__(self, model_path: str, *, lowercase: bool = False, mask_piece: str = MASK_PIECE):
        if not fileio.isfile(model_path):
            raise FileNotFoundError(f"SentencePiece model not found: {model_path}")
        self._init(fileio.read_bytes(model_path), lowercase, mask_piece)
        self.path = os.fspath(model_path)

    def _init(self, proto: bytes, lowercase: bool, mask_piece: str) -> None:
        self._proto, self.lowercase, self._mask_piece = proto, lowercase, mask_piece
        self._sp = spm.SentencePieceProcessor()
        self._sp.load_from_serialized_proto(proto)
        if self._sp.pad_id() < 0 or self._sp.eos_id() < 0:
            raise ValueError("SentencePiece model needs pad and eos pieces "
                             "(train with pad_id/eos_id set)")
        self.pad_id = self._sp.pad_id()
        self.bos_id = self._sp.bos_id() if self._sp.bos_id() >= 0 else None
        self.eot_id = self._sp.eos_id()
        self.unk_id = self._sp.unk_id()
        mask = self._sp.piece_to_id(mask_piece)
        known = mask != self.unk_id and self._sp.is_control(mask)
        self.mask_id = mask if known else self._sp.get_piece_size()
        self.vocab_size = self._sp.get_piece_size() + (0 if known else 1)
        self.special_ids = tuple(i for i in (self.pad_id, self.bos_id, self.eot_id, self.mask_id,
                                             self.unk_id) if i is not None)

    def encode(self, text: str) -> list[int]:
        """Piece ids of one text, without BOS/EOT."""
        return self._sp.encode(text.lower() if self.lowercase else text)

    def _decode_pieces(self, ids: list[int]) -> str:
        return self._sp.decode(ids)

    def __getstate__(self):
        return {"proto": self._proto, "lowercase": self.lowercase,
                "mask_piece": self._mask_piece, "path": self.path}

    def __setstate__(self, state):
        self._init(state["proto"], state["lowercase"], state["mask_piece"])
        self.path = state["path"]

    def __repr__(self) -> str:
        return f"Tokenizer({self.path!r}, vocab_size={self.vocab_size})"


def train_tokenizer(texts: Iterable[str], path: str, *, vocab_size: int = 256,
                    lowercase: bool = True, model_type: str = "bpe") -> Tokenizer:
    """Trains a SentencePiece model on `texts` and saves it (one `.model` file) at `path`.

    `vocab_size` is an upper bound (hard_vocab_limit off) so tiny corpora work. Ids: pad 0, unk 1,
    bos 2, eot 3, mask 4 (a control piece: never produced from text). With `lowercase` the model's
    normaliser case-folds, so the saved file alone reproduces the behaviour.
    """
    def sentences():
        for text in texts:
            if not isinstance(text, str):
                raise TypeError(f"train_tokenizer expects str texts, got {text!r}")
            if text.strip():
                yield text

    # SentencePiece fails with an opaque internal error on an empty corpus: check first.
    stream = sentences()
    first = next(stream, None)
    if first is None:
        raise ValueError("train_tokenizer got no non-empty texts")
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=itertools.chain([first], stream), model_writer=model,
        vocab_size=vocab_size, model_type=model_type, hard_vocab_limit=False,
        character_coverage=1.0, pad_id=PAD_ID, unk_id=UNK_ID, bos_id=BOS_ID, eos_id=EOT_ID,
        control_symbols=[MASK_PIECE], input_sentence_size=1_000_000,
        normalization_rule_name="nmt_nfkc_cf" if lowercase else "nmt_nfkc",
        minloglevel=2, num_threads=1)
    # Write then rename, so a reader (or a concurrent prepare) never sees half a file.
    path = os.fspath(path)
    fileio.write_atomic(path, model.getvalue())
    return Tokenizer(path)


class HFTokenizer(_RowLayout):
    """A Hugging Face `tokenizer.json` behind the same contract.

    Rows are `[BOS] pieces [EOT] [PAD]...` with the special tokens the file's own post-processor
    adds (CLIP's adds `<|startoftext|>` and `<|endoftext|>`; SigLIP 2's Gemma tokenizer only
    `<eos>`), so rows equal what transformers makes with `padding="max_length", truncation=True`.
    A file whose post-processor adds none falls back to the usual names (`<|startoftext|>`/`<s>`/
    `[CLS]`, `<|endoftext|>`/`</s>`/`[SEP]`, `<mask>`/`[MASK]`) or the arguments. Pad id: argument,
    else the file's padding config, else `<pad>`, else 0. `lowercase` adds a Lowercase step in
    front of the file's normaliser (as transformers' SigLIP 2 tokenizer does).
    """

    _BOS = ("<|startoftext|>", "<s>", "[CLS]", "<bos>")
    _EOT = ("<|endoftext|>", "</s>", "[SEP]", "<eos>")
    _PAD = ("<pad>", "[PAD]", "<|pad|>")
    _MASK = ("<mask>", "[MASK]")

    def __init__(self, path: str, *, pad_id: int | None = None, bos_id: int | None = None,
                 eot_id: int | None = None, mask_id: int | None = None, lowercase: bool = False):
        if not fileio.isfile(path):
            raise FileNotFoundError(f"Hugging Face tokenizer file not found: {path}")
        self.path, self.lowercase = os.fspath(path), lowercase
        self._tok = hf.Tokenizer.from_str(fileio.read_text(self.path))
        self._tok.no_padding()
        self._tok.no_truncation()
        if lowercase:
            from tokenizers import normalizers
            steps = [normalizers.Lowercase()] + ([self._tok.normalizer] if self._tok.normalizer else [])
            self._tok.normalizer = normalizers.Sequence(steps)
        padding = self._tok.padding
        self.pad_id = pad_id if pad_id is not None else (
            padding["pad_id"] if padding else self._find(self._PAD, default=0))
        added_bos, added_eot = self._added_specials()
        if bos_id is not None or eot_id is not None or added_eot is None:
            self.bos_id = bos_id if bos_id is not None else self._find(self._BOS)
            self.eot_id = eot_id if eot_id is not None else self._find(self._EOT)
        else:
            self.bos_id, self.eot_id = added_bos, added_eot
        if self.eot_id is None:
            raise ValueError(f"{path}: no end-of-text token found; pass eot_id=")
        self.mask_id = mask_id if mask_id is not None else self._find(self._MASK)
        self.unk_id = None
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
        self.special_ids = tuple(sorted({i for i in (self.pad_id, self.bos_id, self.eot_id,
                                                     self.mask_id) if i is not None}))

    def _added_specials(self) -> tuple[int | None, int | None]:
        """(bos, eot) that the post-processor puts around a text, None where it adds nothing."""
        plain = self._tok.encode("a", add_special_tokens=False).ids
        full = self._tok.encode("a", add_special_tokens=True).ids
        if len(full) == len(plain) or not plain:
            return None, None
        start = next(i for i in range(len(full)) if full[i:i + len(plain)] == plain)
        before, after = full[:start], full[start + len(plain):]
        return (before[-1] if before else None), (after[-1] if after else None)

    def _find(self, names, default=None):
        for name in names:
            i = self._tok.token_to_id(name)
            if i is not None:
                return i
        return default

    def encode(self, text: str) -> list[int]:
        """Piece ids of one text, without the tokenizer's BOS/EOT."""
        return self._tok.encode(text, add_special_tokens=False).ids

    def _decode_pieces(self, ids: list[int]) -> str:
        return self._tok.decode(ids)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_tok"] = self._tok.to_str()
        return state

    def __setstate__(self, state):
        state = dict(state)
        state["_tok"] = hf.Tokenizer.from_str(state["_tok"])
        self.__dict__.update(state)

    def __repr__(self) -> str:
        return f"HFTokenizer({self.path!r}, vocab_size={self.vocab_size})"


def iter_texts(path: str) -> Iterator[str]:
    """Captions from a text file (one per line), a jsonl file (caption/captions fields) or a
    prepared dataset directory (its train split's captions)."""
    if fileio.isdir(path):
        import tensorflow_datasets as tfds
        source = tfds.builder_from_directory(path).as_data_source(split="train")
        for i in range(len(source)):
            for c in source[i]["captions"]:
                yield c.decode("utf-8") if isinstance(c, bytes) else str(c)
        return
    if not fileio.isfile(path):
        raise FileNotFoundError(f"--input not found: {path}")
    with fileio.open(path, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            if path.endswith(".jsonl"):
                try:
                    obj = json.loads(line)
                except ValueError as e:
                    raise ValueError(f"{path}:{lineno}: not JSON: {e}") from e
                captions = obj.get("captions") or [obj.get("caption")]
                yield from (c for c in captions if isinstance(c, str))
            else:
                yield line


def load_tokenizer(path: str, **kwargs) -> Tokenizer | HFTokenizer:
    """Loads a SentencePiece `.model` or a Hugging Face `.json` tokenizer file."""
    path = os.fspath(path)
    if path.endswith(".json"):
        return HFTokenizer(path, **kwargs)
    if path.endswith(".model"):
        return Tokenizer(path, **kwargs)
    raise ValueError(f"unknown tokenizer file type {path!r}: expected a SentencePiece '.model' or "
                     f"a Hugging Face 'tokenizer.json'")
