"""mmfm exports: a directory that fully describes a model for inference.

    OUT/params.safetensors  canonical flat params ('img/encoder/block_0/attn/query_kernel', ...)
    OUT/config.json         {"format": "mmfm-export", "model": model_config_to_dict(...),
                             "preprocess": {...}, "tokenizer": {...}, "zeroshot": {...}, "source": {...}}
    OUT/<tokenizer file>    copied in (none for the shipped CLIP BPE)

`export_from_workdir` writes one from a training run's latest checkpoint; `convert_to_export` from an
open_clip / Hugging Face / big_vision source. Both are also `mmfm export` and `mmfm convert`.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from typing import Optional

import numpy as np

from mmfm import fileio
from mmfm.fileio import honour_umask
from mmfm.models.config import ModelConfig, model_config_from_dict, model_config_to_dict
from mmfm.zoo import pretrained
from mmfm.zoo.pretrained import FORMAT, PARAMS_FILE, VERSION
from mmfm.zoo.convert import common
from mmfm.zoo.registry import (INCEPTION_MEAN, INCEPTION_STD, Preprocess, TokenizerSpec,
                               get_model_config)



def default_preprocess(cfg: ModelConfig) -> Preprocess:
    """CLIP's preprocessing, or SigLIP's for MAP-pooled towers."""
    if cfg.image.pool == "map":
        return Preprocess(cfg.image.image_size, INCEPTION_MEAN, INCEPTION_STD, "bicubic", "squash")
    return Preprocess(image_size=cfg.image.image_size)


def default_tokenizer(cfg: ModelConfig) -> TokenizerSpec:
    if cfg.text.vocab_size == 49408 and cfg.text.pool in ("argmax", "eot"):
        return TokenizerSpec("clip_bpe", None, cfg.text.context_length, True)
    return TokenizerSpec("siglip", "spiece.model", cfg.text.context_length, True, pad_id=1)


def save_export(out_dir: str, flat_params: dict, cfg: ModelConfig, *, preprocess: Preprocess,
                tokenizer: TokenizerSpec, tokenizer_file: Optional[str] = None,
                zeroshot: Optional[dict] = None, source: Optional[dict] = None) -> str:
    """Writes an export directory: locally atomically (a temp dir renamed into place); to a URL
    uploaded file by file, config.json last."""
    from safetensors.numpy import save_file

    flat = common.to_canonical({k: np.asarray(v) for k, v in flat_params.items()})
    common.check_params(flat, cfg, "export")
    flat = {k: (v.astype(np.float32) if v.dtype.kind == "V" or str(v.dtype) == "bfloat16" else v)
            for k, v in flat.items()}
    if tokenizer.kind != "clip_bpe":
        if not tokenizer_file or not fileio.isfile(tokenizer_file):
            raise FileNotFoundError(f"tokenizer kind {tokenizer.kind!r} needs its file; got "
                                    f"{tokenizer_file!r}")
        tokenizer = dataclasses.replace(tokenizer, file=fileio.basename(tokenizer_file))
    meta = {"format": FORMAT, "version": VERSION, "model": model_config_to_dict(cfg),
            "preprocess": dataclasses.asdict(preprocess), "tokenizer": dataclasses.asdict(tokenizer),
            "zeroshot": zeroshot or {}, "source": source or {}}

    def write(tmp: str) -> None:
        save_file({k: np.ascontiguousarray(v) for k, v in flat.items()}, os.path.join(tmp, PARAMS_FILE))
        if tokenizer.kind != "clip_bpe":
            fileio.copy(tokenizer_file, os.path.join(tmp, tokenizer.file))
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump(meta, f, indent=1)

    out_dir = fileio.absolute(out_dir)
    if fileio.is_url(out_dir):
        # No rename on an object store: written locally, then uploaded with config.json last,
        # which is what readers open first (an export without it is "not an mmfm export").
        with tempfile.TemporaryDirectory(prefix="mmfm-export-") as tmp:
            write(tmp)
            if fileio.exists(out_dir):
                fileio.rmtree(out_dir)
            fileio.copytree(tmp, out_dir, last=("config.json",))
        return out_dir
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=".export-")
    try:
        write(tmp)
        honour_umask(tmp)  # mkdtemp and the safetensors writer make private (0700/0600) entries
        if os.path.exists(out_dir):
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def export_from_workdir(workdir: str, out_dir: str) -> str:
    """Params-only export of the latest checkpoint of a training run (read-only, no data needed)."""
    from mmfm import checkpoint

    run = checkpoint.load_run(workdir)
    cfg = model_config_from_dict(run.model_config)
    pre = run.preprocess
    pre = Preprocess(**{k: tuple(v) if isinstance(v, list) else v for k, v in pre.items()})
    tok_file = run.tokenizer_file
    kind = "hf" if tok_file.endswith(".json") else "sentencepiece"
    tok = TokenizerSpec(kind, fileio.basename(tok_file), int(cfg.text.context_length),
                        run.tokenizer_lowercase)
    zs = {k: [list(n), list(t)] for k, (n, t) in run.zeroshot.items()}
    return save_export(out_dir, common.flatten(run.params), cfg, preprocess=pre, tokenizer=tok,
                       tokenizer_file=tok_file, zeroshot=zs,
                       source={"kind": "mmfm-train", "workdir": run.workdir, "step": run.step})


def convert_to_export(src: str, out_dir: str, *, converter: Optional[str] = None,
                      arch: Optional[str] = None, tokenizer_file: Optional[str] = None,
                      overrides: Optional[dict] = None) -> str:
    """Converts an open_clip / Hugging Face / big_vision source into an mmfm export."""
    cfg = get_model_config(arch, **(overrides or {})) if arch else None
    converter = converter or pretrained.detect_converter(src)
    model_cfg, flat, _ = pretrained.convert_source(src, converter, cfg)
    if cfg is not None:
        common.check_params(flat, cfg, arch)
    tok = default_tokenizer(model_cfg)
    if tok.kind != "clip_bpe" and tokenizer_file is None:
        base = src if fileio.isdir(src) else fileio.dirname(src)
        cand = fileio.join(base, "spiece.model")
        tokenizer_file = cand if fileio.isfile(cand) else None
        if tokenizer_file is None:
            raise FileNotFoundError(f"{src}: the SigLIP tokenizer (spiece.model) was not found beside "
                                    "the weights; pass --tokenizer FILE")
    return save_export(out_dir, flat, model_cfg, preprocess=default_preprocess(model_cfg),
                       tokenizer=tok, tokenizer_file=tokenizer_file,
                       source={"kind": converter, "path": fileio.absolute(src), "arch": arch})
