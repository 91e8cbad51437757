"""Which tokenizer a converted model uses, decided from the files beside its weights.

Never from the vocabulary size: a `tokenizer.json` is a Hugging Face tokenizer, `vocab.json` +
`merges.txt` a CLIP BPE, `spiece.model` SigLIP's SentencePiece model, `tokenizer.model` a plain
SentencePiece model. Which file wins depends on the model family (a SigLIP directory's
`spiece.model` is what SiglipTokenizer reads; a CLIP directory's `tokenizer.json` is what
AutoTokenizer loads). Only open_clip's native CLIP towers default to the CLIP BPE that ships with
mmfm, as open_clip itself does, and only when the model's vocabulary is that BPE's 49,408 ids.
"""
from __future__ import annotations

import json
from typing import Optional

from mmfm import fileio
from mmfm.models.config import ModelConfig
from mmfm.zoo.registry import CLIP_VOCAB_FILE, TokenizerSpec

SHIPPED_CLIP_VOCAB = 49408
# Candidates per family, in the order their own libraries prefer them.
SEARCH = {
    "clip": ("tokenizer.json", "merges.txt", "spiece.model", "tokenizer.model"),
    "openclip": ("merges.txt", "tokenizer.json", "spiece.model", "tokenizer.model"),
    "siglip": ("spiece.model", "tokenizer.json", "tokenizer.model"),
}


class TokenizerNotFound(FileNotFoundError):
    """No tokenizer file for a model; the message lists the places searched."""


def _config_value(base_dir: str, key: str, default=None):
    """A value from special_tokens_map.json or tokenizer_config.json, if either gives it."""
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        path = fileio.join(base_dir, name)
        if fileio.isfile(path):
            with fileio.open(path, encoding="utf-8") as f:
                value = json.load(f).get(key)
            if value is not None:
                return value
    return default


def _special_token(base_dir: str, key: str) -> Optional[str]:
    """A special token's text (a string or an AddedToken dict), if the configs give it."""
    value = _config_value(base_dir, key)
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _pad_id(base_dir: str, kind: str, file: str) -> Optional[int]:
    pad = _special_token(base_dir, "pad_token")
    if pad is None:
        return None
    if kind == "hf":
        import tokenizers as hf
        return hf.Tokenizer.from_str(fileio.read_text(fileio.join(base_dir, file))).token_to_id(pad)
    if kind == "clip_bpe":
        with fileio.open(fileio.join(base_dir, CLIP_VOCAB_FILE), encoding="utf-8") as f:
            return json.load(f).get(pad)
    return None


def spec_for_file(path: str, family: str, context_length: int) -> TokenizerSpec:
    """The TokenizerSpec of one tokenizer file (chosen by the user or found beside the weights)."""
    name = fileio.basename(path)
    base = fileio.dirname(fileio.absolute(path))
    if name.endswith(".json"):
        kind = "hf"
    elif name.endswith(".txt"):
        if not fileio.isfile(fileio.join(base, CLIP_VOCAB_FILE)):
            raise TokenizerNotFound(f"{path}: a CLIP BPE merges file needs {CLIP_VOCAB_FILE} beside it")
        kind = "clip_bpe"
    elif name.endswith(".model"):
        kind = "siglip" if family == "siglip" or name == "spiece.model" else "sentencepiece"
    else:
        raise ValueError(f"{path}: unknown tokenizer file; valid: tokenizer.json, merges.txt (with "
                         "vocab.json), spiece.model, tokenizer.model")
    pad = _pad_id(base, kind, name)
    if kind == "siglip" and pad is None:
        pad = 1  # SigLIP pads with EOS, as Hugging Face's SiglipTokenizer does
    # A tokenizer.json carries its own normaliser (CLIP's lowercases); tokenizer_config.json's
    # do_lower_case adds lowercasing (SigLIP 2). SentencePiece models get SigLIP's canonicalisation.
    lowercase = bool(_config_value(base, "do_lower_case", False)) if kind == "hf" else True
    return TokenizerSpec(kind, name, context_length, lowercase=lowercase, pad_id=pad)


def find_tokenizer(base_dir: str, cfg: ModelConfig, family: str, *, explicit: Optional[str] = None,
                   hint: str = "") -> tuple[TokenizerSpec, list[str]]:
    """(spec, files to carry into an export) for a model whose source files are in `base_dir`.

    family: 'clip' (Hugging Face CLIP), 'openclip' (native open_clip CLIP) or 'siglip'.
    `hint` is added to the not-found message (e.g. the hub tokenizer a config names).
    """
    ctx = cfg.text.context_length
    if explicit is not None:
        if not fileio.isfile(explicit):
            raise TokenizerNotFound(f"--tokenizer {explicit}: file not found")
        spec = spec_for_file(explicit, family, ctx)
        return spec, _files(spec, fileio.dirname(fileio.absolute(explicit)))
    for name in SEARCH[family]:
        path = fileio.join(base_dir, name)
        if fileio.isfile(path) and (name != "merges.txt" or
                                     fileio.isfile(fileio.join(base_dir, CLIP_VOCAB_FILE))):
            spec = spec_for_file(path, family, ctx)
            return spec, _files(spec, base_dir)
    if family == "openclip" and cfg.text.vocab_size == SHIPPED_CLIP_VOCAB and not hint:
        return TokenizerSpec("clip_bpe", None, ctx, True), []
    looked = ", ".join(n if n != "merges.txt" else f"{CLIP_VOCAB_FILE} + merges.txt" for n in SEARCH[family])
    raise TokenizerNotFound(f"no tokenizer for this model: looked for {looked} in {base_dir}"
                            f"{hint}; pass --tokenizer FILE (API: get_tokenizer(FILE))")


def _files(spec: TokenizerSpec, base_dir: str) -> list[str]:
    return [fileio.join(base_dir, n) for n in spec.files()]
