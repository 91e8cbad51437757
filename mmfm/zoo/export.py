"""mmfm exports: a directory that fully describes a model for inference.

    OUT/params.safetensors  canonical flat params ('img/encoder/block_0/attn/query_kernel', ...)
    OUT/config.json         {"format": "mmfm-export", "model": model_config_to_dict(...),
                             "preprocess": {...}, "tokenizer": {...}, "zeroshot": {...}, "source": {...}}
    OUT/<tokenizer file>    copied in (none for the shipped CLIP BPE)
    OUT/MODEL_CARD.md       architecture, training, recorded evals, failure modes (zoo/model_card.py)

`export_from_workdir` writes one from a training run's latest checkpoint; `convert_to_export` from an
open_clip / Hugging Face / big_vision source. Both are also `mmfm export` and `mmfm convert`.
"""
from __future__ import annotations

import dataclasses
import json
import tempfile
from typing import Optional, Sequence

import numpy as np

from mmfm import fileio
from mmfm.models.config import ModelConfig, model_config_from_dict, model_config_to_dict
from mmfm.zoo import sources
from mmfm.zoo.pretrained import FORMAT, PARAMS_FILE, QUANTIZED_VERSION, SCALE_SUFFIX, VERSION
from mmfm.zoo.convert import common
from mmfm.zoo.model_card import CARD_FILE, RunRecord, model_card
from mmfm.zoo.registry import GEMMA_VOCAB, Preprocess, TokenizerSpec, get_model_config
from mmfm.zoo.source_tokenizer import TokenizerNotFound



def default_tokenizer(cfg: ModelConfig) -> TokenizerSpec:
    """The tokenizer of a registry architecture without weights (CLIP's shipped BPE for the
    49,408-id CLIP towers, SigLIP's SentencePiece model otherwise). Converted sources never use
    this: their tokenizer comes from their files (mmfm.zoo.source_tokenizer)."""
    if cfg.text.vocab_size == 49408 and cfg.text.pool in ("argmax", "eot"):
        return TokenizerSpec("clip_bpe", None, cfg.text.context_length, True)
    if cfg.text.vocab_size == GEMMA_VOCAB:  # SigLIP 2: Gemma's tokenizer.json, lowercased, <pad> = 0
        return TokenizerSpec("hf", "tokenizer.json", cfg.text.context_length, True, pad_id=0)
    return TokenizerSpec("siglip", "spiece.model", cfg.text.context_length, True, pad_id=1)


TRAINING_ONLY = ("distill_proj/",)  # parameter prefixes no inference path reads


def inference_params(cfg: ModelConfig, flat: dict) -> tuple[ModelConfig, dict]:
    """A run's model config and flat params without the training-only parts: feature
    distillation's projection (`distill_dim`, `distill_proj/...`) is dropped, so the export
    is the plain two-tower model any mmfm (or converter) reads."""
    if not cfg.distill_dim:
        return cfg, flat
    kept = {k: v for k, v in flat.items() if not k.startswith(TRAINING_ONLY)}
    return dataclasses.replace(cfg, distill_dim=0), kept


def save_export(out_dir: str, flat_params: dict, cfg: ModelConfig, *, preprocess: Preprocess,
                tokenizer: TokenizerSpec, tokenizer_files: Sequence[str] = (),
                zeroshot: Optional[dict] = None, source: Optional[dict] = None,
                card: Optional[str] = None, quantization: Optional[dict] = None) -> str:
    """Writes an export directory: locally atomically (a temp dir renamed into place); to a URL
    uploaded file by file, config.json last. `tokenizer_files`: the paths of the files
    `tokenizer.files()` names (copied in under those names). `card`: MODEL_CARD.md's text
    (default: one from the config, params and `source` alone). `quantization`: the entry of an
    int8 export (`mmfm.zoo.quantize`), whose params hold int8 values and `<name>.scale` tensors."""
    from safetensors.numpy import save_file

    flat = common.to_canonical({k: np.asarray(v) for k, v in flat_params.items()})
    common.check_params({k: v for k, v in flat.items()  # an int8 weight keeps its name and shape
                         if not (quantization and k.endswith(SCALE_SUFFIX))}, cfg, "export")
    flat = {k: (v.astype(np.float32) if v.dtype.kind == "V" or str(v.dtype) == "bfloat16" else v)
            for k, v in flat.items()}
    by_name = {fileio.basename(f): f for f in tokenizer_files}
    for name in tokenizer.files():
        if name not in by_name or not fileio.isfile(by_name[name]):
            raise FileNotFoundError(f"tokenizer {tokenizer.kind!r} needs its file {name}; got "
                                    f"{list(tokenizer_files)}")
    meta = {"format": FORMAT, "version": VERSION, "model": model_config_to_dict(cfg),
            "preprocess": dataclasses.asdict(preprocess), "tokenizer": dataclasses.asdict(tokenizer),
            "zeroshot": zeroshot or {}, "source": source or {}}
    if quantization:  # an mmfm that predates int8 exports refuses version 2 instead of misreading it
        meta.update(version=QUANTIZED_VERSION, quantization=quantization)
    if card is None:
        name = (source or {}).get("arch") or fileio.basename(fileio.absolute(out_dir))
        card = model_card(cfg, flat, name=name, source=source)

    def write(tmp: str) -> None:
        save_file({k: np.ascontiguousarray(v) for k, v in flat.items()}, fileio.join(tmp, PARAMS_FILE))
        for name in tokenizer.files():
            fileio.copy(by_name[name], fileio.join(tmp, name))
        with fileio.open(fileio.join(tmp, CARD_FILE), "w") as f:
            f.write(card)
        with fileio.open(fileio.join(tmp, "config.json"), "w") as f:
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
    return fileio.write_dir_atomic(out_dir, write, prefix=".export-")


def _read_json(path: str) -> Optional[dict]:
    if not fileio.isfile(path):
        return None
    with fileio.open(path) as f:
        return json.load(f)


def run_record(run, suite_results: Sequence[str] = ()) -> RunRecord:
    """What the card needs from a loaded run (`checkpoint.Run`): its run_info.json, its
    eval_results.json when that eval is of the exported step, and the suite results in
    `suite_results` (files or directories) and in the workdir's subdirectories. Reads only."""
    from mmfm.evals.runner import RESULTS_FILE
    from mmfm.evals.suite_report import RESULTS_JSON

    ev = _read_json(fileio.join(run.workdir, RESULTS_FILE))
    if ev is not None and ev.get("step") != run.step:
        ev = None  # an eval of another step (e.g. an older export's) says nothing of this one
    paths = [p if p.endswith(".json") else fileio.join(p, RESULTS_JSON) for p in suite_results]
    for p in paths:
        if not fileio.isfile(p):
            raise FileNotFoundError(f"--suite_results: {p} not found (mmfm eval --suite writes "
                                    f"OUT/{RESULTS_JSON})")
    paths += [fileio.join(run.workdir, d, RESULTS_JSON) for d in sorted(fileio.listdir(run.workdir))
              if fileio.isfile(fileio.join(run.workdir, d, RESULTS_JSON))]
    suites = [_read_json(p) for p in dict.fromkeys(fileio.absolute(p) for p in paths)]
    return RunRecord(config=run.config, step=run.step,
                     run_info=_read_json(fileio.join(run.workdir, "run_info.json")) or {},
                     eval_results=ev, suites=suites)


def export_from_workdir(workdir: str, out_dir: str, *, suite_results: Sequence[str] = ()) -> str:
    """Params-only export of the latest checkpoint of a training run (read-only, no data needed),
    with a MODEL_CARD.md from what the run recorded (plus the `suite_results` files/dirs given)."""
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
    cfg, flat = inference_params(cfg, common.flatten(run.params))
    card = model_card(cfg, common.to_canonical(flat), name=fileio.basename(run.workdir),
                      run=run_record(run, suite_results))
    return save_export(out_dir, flat, cfg, preprocess=pre, tokenizer=tok,
                       tokenizer_files=[tok_file], zeroshot=zs, card=card,
                       source={"kind": "mmfm-train", "workdir": run.workdir, "step": run.step})


def convert_to_export(src: str, out_dir: str, *, converter: Optional[str] = None,
                      arch: Optional[str] = None, model_config: Optional[str] = None,
                      tokenizer_file: Optional[str] = None, overrides: Optional[dict] = None) -> str:
    """Converts an open_clip / Hugging Face / big_vision source into an mmfm export.

    `arch` (a registry name) or `model_config` (an open_clip model config JSON) supplies what a
    bare state dict does not record; `tokenizer_file` overrides the tokenizer found beside it."""
    from mmfm.zoo.convert.openclip_config import model_config_from_openclip, read_json

    if arch and model_config:
        raise ValueError("pass --arch or --model_config, not both")
    cfg, name = None, arch
    if arch:
        cfg = get_model_config(arch, **(overrides or {}))
    elif model_config:
        if not fileio.isfile(model_config):
            raise FileNotFoundError(f"--model_config {model_config}: file not found")
        cfg, name = model_config_from_openclip(read_json(model_config, "an open_clip model config"),
                                               where=model_config), model_config
    converter = converter or sources.detect_converter(src)
    model_cfg, flat, info = sources.convert_source(src, converter, cfg, arch=name,
                                                   tokenizer=tokenizer_file)
    if cfg is not None:
        common.check_params(flat, cfg, name)
    if "tokenizer_error" in info:
        raise TokenizerNotFound(info["tokenizer_error"])
    return save_export(out_dir, flat, model_cfg, preprocess=info["preprocess"],
                       tokenizer=info["tokenizer"], tokenizer_files=info["tokenizer_files"],
                       source={"kind": converter, "path": fileio.absolute(src), "arch": name})
