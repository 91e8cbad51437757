"""The open_clip-style entry points (`import mmfm`):

    model, params, preprocess_train, preprocess_eval = mmfm.create_model_and_transforms(
        "ViT-B-16-SigLIP", pretrained="webli")   # or a tag, a local path / URL, an export dir
    tok = mmfm.get_tokenizer("ViT-B-16-SigLIP")   # or an export dir / tokenizer file
    img = mmfm.encode_image(model, params, np.stack([preprocess_eval(im) for im in images]))
    txt = mmfm.encode_text(model, params, ["a photo of a cat"], tokenizer=tok)

`model` is a flax `TwoTower`; `params` a plain dict of jax arrays (placed with the mesh's shardings
when `mesh` is given). Config changes go through one `overrides` dict (e.g. {"dtype": "bfloat16"}).
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mmfm import fileio
from mmfm.models.config import ModelConfig
from mmfm.models.multimodal import TwoTower
from mmfm.zoo import export as export_lib
from mmfm.zoo import pretrained as pre_lib
from mmfm.zoo import registry, sources
from mmfm.zoo.convert import common
from mmfm.zoo.registry import ARCHITECTURES, add_model_config, list_models, list_pretrained  # noqa: F401
from mmfm.data.preprocess import ImageTransform

__all__ = ["add_model_config", "create_model", "create_model_and_transforms", "encode_image", "encode_text",
           "get_tokenizer", "list_models", "list_pretrained", "load_eval_model", "load_model_info", "load_run",
           "quantize_export", "serialize"]


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """What a loaded model needs besides params: config, preprocessing, tokenizer, zero-shot data."""
    config: ModelConfig
    preprocess: registry.Preprocess
    tokenizer: Optional[registry.TokenizerSpec]  # None: none found (see tokenizer_error)
    base_dir: Optional[str] = None  # where the tokenizer file lives
    zeroshot: dict = dataclasses.field(default_factory=dict)
    tokenizer_error: Optional[str] = None  # why no tokenizer was found (raised when one is asked for)
    quantization: Optional[dict] = None  # an int8 export's config.json entry (mmfm.zoo.quantize)


def _is_source(x: str) -> bool:
    return pre_lib.is_url(x) or fileio.exists(x)  # a download URL, a path or a gs:// URL


_PATH_SUFFIXES = (".safetensors", ".npz", ".json", ".model") + pre_lib.PICKLE_SUFFIXES


def _looks_like_path(x: str) -> bool:
    """A path, not a name: registry names and tags never hold a path separator."""
    return (os.sep in x or (os.altsep or os.sep) in x or x.startswith(("~", "."))
            or x.endswith(_PATH_SUFFIXES))


def _path_not_found(what: str, x: str) -> FileNotFoundError:
    return FileNotFoundError(f"{what} {x!r}: path not found ({fileio.absolute(x)} "
                             "does not exist); a name would have no path separator (`mmfm zoo` "
                             "lists architectures and tags)")


def _fetch_tag(tag: registry.PretrainedTag, cache: Optional[str], offline: Optional[bool]) -> str:
    sub = os.path.basename(pre_lib.tag_cache_dir(tag, cache))
    paths = []
    for name in tag.files:
        url = None if tag.url_base is None else tag.url_base + name
        cached = os.path.join(pre_lib.tag_cache_dir(tag, cache), name)
        if url is None and not os.path.isfile(cached):
            raise FileNotFoundError(f"{tag.arch}/{tag.tag}: {name} ({tag.source}) has no public URL "
                                    f"mmfm can fetch; download it yourself and place it at {cached} "
                                    f"(the cache directory is {pre_lib.cache_dir(cache)}, set by "
                                    f"MMFM_CACHE_DIR)")
        paths.append(pre_lib.fetch(url or cached, sha256=tag.sha256.get(name), cache=cache,
                                   offline=offline, subdir=sub))
    return os.path.dirname(paths[0]) if tag.converter == "hf" else paths[0]


def load_model_info(name: str, pretrained: Optional[str] = None, *, overrides: Optional[dict] = None,
                    sha256: Optional[str] = None, cache_dir: Optional[str] = None,
                    offline: Optional[bool] = None, converter: Optional[str] = None
                    ) -> tuple[ModelInfo, Optional[dict]]:
    """(ModelInfo, canonical flat numpy params or None for a random init)."""
    arch_cfg, tag = None, None
    if name in ARCHITECTURES:
        arch_cfg = registry.get_model_config(name)
    elif pretrained is None and _is_source(name):
        pretrained = name
        name = None
    elif _looks_like_path(name):
        raise _path_not_found("model", name)
    else:
        registry.get_model_config(name)  # raises listing valid names
    flat, src_info, base_dir = None, {}, None
    if pretrained is not None:
        if not _is_source(pretrained):
            if _looks_like_path(pretrained):
                raise _path_not_found("pretrained", pretrained)
            if name is None:
                raise ValueError(f"pretrained={pretrained!r} is neither a file/URL nor usable without "
                                 "an architecture name")
            tag = registry.get_pretrained_tag(name, pretrained)
            arch_cfg = registry.apply_overrides(arch_cfg, tag.overrides)
            path, converter = _fetch_tag(tag, cache_dir, offline), tag.converter
        else:
            path = pre_lib.fetch(pretrained, sha256=sha256, cache=cache_dir, offline=offline)
        converter = converter or sources.detect_converter(path)
        base_dir = path if fileio.isdir(path) else fileio.dirname(path)
        # Sources with a full config (HF config.json, open_clip_config.json, mmfm exports) define
        # the model; for bare state dicts the architecture fixes what shapes cannot tell (heads,
        # activation), and every source's shapes are checked against a named architecture.
        use_arch = arch_cfg if converter in ("openclip", "big_vision") else None
        src_cfg, flat, src_info = sources.convert_source(path, converter, use_arch, arch=name)
        if arch_cfg is not None:  # an int8 export keeps each weight's name and shape
            scales = pre_lib.SCALE_SUFFIX if src_info.get("quantization") else None
            common.check_params({k: v for k, v in flat.items() if not (scales and k.endswith(scales))},
                                arch_cfg, name)
        cfg = src_cfg
    else:
        cfg = arch_cfg
    cfg = registry.apply_overrides(cfg, overrides)
    if tag is not None:  # files of the release (preprocessor_config.json, tokenizer.json) win
        pre = src_info["preprocess"] if "preprocessor_config.json" in tag.files else tag.preprocess
        info = ModelInfo(cfg, pre, src_info.get("tokenizer") or tag.tokenizer, base_dir)
    elif flat is None:
        info = ModelInfo(cfg, sources.default_preprocess(cfg), export_lib.default_tokenizer(cfg))
    else:
        info = ModelInfo(cfg, src_info["preprocess"], src_info.get("tokenizer"),
                         src_info.get("dir", base_dir), src_info.get("zeroshot", {}),
                         tokenizer_error=src_info.get("tokenizer_error"),
                         quantization=src_info.get("quantization"))
    return info, flat


def _place(model: TwoTower, flat: Optional[dict], mesh, rules, seed: int):
    import flax.linen as nn

    from mmfm import sharding as sh
    from mmfm.models.multimodal import init_params
    from mmfm.train.state import param_shardings

    shardings = None
    if mesh is not None:
        shardings = param_shardings(model, mesh, tuple(rules or sh.DEFAULT_RULES))
    if flat is None:
        init = jax.jit(lambda r: nn.meta.unbox(init_params(model, r)), out_shardings=shardings)
        return init(jax.random.PRNGKey(seed))
    cfg = model.cfg
    tree = common.unflatten(common.to_model_layout(flat, cfg))
    dtypes = {"img": cfg.image.param_dtype, "txt": cfg.text.param_dtype}
    tree = {k: jax.tree.map(lambda a, d=dtypes.get(k, "float32"): np.asarray(a, dtype=jnp.dtype(d)), v)
            for k, v in tree.items()}
    return jax.device_put(tree, shardings) if shardings is not None else jax.device_put(tree)


def create_model(name: str, pretrained: Optional[str] = None, *, mesh=None,
                 overrides: Optional[dict] = None, sha256: Optional[str] = None,
                 cache_dir: Optional[str] = None, offline: Optional[bool] = None, seed: int = 0,
                 rules=None) -> tuple[TwoTower, dict]:
    """(model, params): architecture `name` (or a source path as `name`), randomly initialised or
    loaded from `pretrained` (a registry tag, a local file/dir, or a URL)."""
    model, params, _ = _create(name, pretrained, mesh=mesh, overrides=overrides, sha256=sha256,
                               cache_dir=cache_dir, offline=offline, seed=seed, rules=rules)
    return model, params


def _create(name, pretrained, *, mesh, overrides, sha256, cache_dir, offline, seed, rules):
    info, flat = load_model_info(name, pretrained, overrides=overrides, sha256=sha256,
                                 cache_dir=cache_dir, offline=offline)
    model = TwoTower(info.config)
    if info.quantization:  # qwix's wrapped TwoTower on int8 params (one device)
        if mesh is not None:
            raise ValueError("an int8 export loads on one device; mesh is not supported for it")
        from mmfm.zoo.quantize import load_quantized  # imports qwix: only for int8 exports
        model, params = load_quantized(model, flat, info.quantization)
    else:
        params = _place(model, flat, mesh, rules, seed)
    _INFO[id(model)] = info
    return model, params, info


_INFO: dict[int, ModelInfo] = {}


def model_info(model: TwoTower) -> ModelInfo:
    """The ModelInfo of a model made by create_model (preprocess, tokenizer spec, zero-shot data)."""
    if id(model) not in _INFO:
        raise KeyError("model was not created by mmfm.create_model")
    return _INFO[id(model)]


def create_model_and_transforms(name: str, pretrained: Optional[str] = None, **kwargs):
    """(model, params, preprocess_train, preprocess_eval); the transforms map one image to a
    normalised float32 [S, S, 3] array with the weights' own mean/std/size/interpolation."""
    keys = ("mesh", "overrides", "sha256", "cache_dir", "offline", "seed", "rules")
    bad = sorted(set(kwargs) - set(keys))
    if bad:
        raise TypeError(f"unknown argument(s) {bad}; valid: {list(keys)}")
    kw = {k: kwargs.get(k) for k in keys}
    kw["seed"] = kw["seed"] or 0
    model, params, info = _create(name, pretrained, **kw)
    return model, params, ImageTransform(info.preprocess, train=True), ImageTransform(info.preprocess)


def distill_teacher(name: str, pretrained: Optional[str], mesh, rules):
    """(model, params on `mesh`, Preprocess, tokenizer) of an export or zoo model: a frozen
    distillation teacher for `mmfm train` (`config.distill`, see mmfm/train/teacher.py)."""
    model, params, info = _create(name, pretrained, mesh=mesh, overrides=None, sha256=None,
                                  cache_dir=None, offline=None, seed=0, rules=rules)
    tokenizer = make_tokenizer(info.tokenizer, info.base_dir, info.tokenizer_error)
    return model, params, info.preprocess, tokenizer


def load_run(path: str, **kwargs):
    """A training run's config, metadata and params, read-only (`mmfm.checkpoint.load_run`)."""
    from mmfm import checkpoint
    return checkpoint.load_run(path, **kwargs)


def load_eval_model(name: str, pretrained: Optional[str] = None, *, batch_size: int = 256):
    """An `EvalModel` (for `mmfm.evals` evaluators) of an architecture + tag, an export or a file."""
    from mmfm.evals.model_io import EvalModel

    model, params, info = _create(name, pretrained, mesh=None, overrides=None, sha256=None,
                                  cache_dir=None, offline=None, seed=0, rules=None)
    zeroshot = {k: (tuple(v[0]), tuple(v[1])) for k, v in (info.zeroshot or {}).items()}
    tokenizer = make_tokenizer(info.tokenizer, info.base_dir, info.tokenizer_error)  # raises if none
    return EvalModel.from_host_params(
        model, params, batch_size=batch_size, preprocess=info.preprocess, tokenizer=tokenizer,
        context_length=int(info.tokenizer.context_length or model.cfg.text.context_length),
        zeroshot=zeroshot)


def quantize_export(src: str, out_dir: str, *, pretrained: Optional[str] = None,
                    activations: str = "float") -> str:
    """Writes an int8 export (`mmfm.zoo.quantize`) of a training run, an export, a converted
    source or a zoo architecture (+ `pretrained` tag; without one, its random init, seed 0)."""
    import tempfile

    from mmfm.zoo.quantize import quantize_flat

    from mmfm.checkpoint import is_run_dir

    if is_run_dir(src):  # through a float export: the run's tokenizer, preprocessing, class names
        with tempfile.TemporaryDirectory(prefix="mmfm-quantize-") as tmp:
            f32 = export_lib.export_from_workdir(src, fileio.join(tmp, "f32"))
            return quantize_export(f32, out_dir, activations=activations)
    info, flat = load_model_info(src, pretrained)
    if info.quantization:
        raise ValueError(f"{src} is already an int8 export")
    model = TwoTower(info.config)
    if flat is None:
        flat = common.flatten(jax.tree.map(np.asarray, _place(model, None, None, None, 0)))
    cfg, tensors, entry = quantize_flat(info.config, flat, activations)
    tok = info.tokenizer
    if tok is None:
        raise FileNotFoundError(info.tokenizer_error or f"{src}: no tokenizer found")
    meta = {}
    if fileio.isdir(src) and fileio.isfile(fileio.join(src, "config.json")):
        meta = pre_lib.read_export_config(src) if sources.detect_converter(src) == "mmfm" else {}
    return export_lib.save_export(
        out_dir, tensors, cfg, preprocess=info.preprocess, tokenizer=tok,
        tokenizer_files=[fileio.join(info.base_dir or "", n) for n in tok.files()],
        zeroshot={k: [list(n), list(t)] for k, (n, t) in (info.zeroshot or {}).items()},
        source={"kind": "quantized", "from": fileio.absolute(src) if _is_source(src) else src,
                "pretrained": pretrained, "original": meta.get("source", {})},
        quantization=entry, card=_quantized_card(src, info.config, flat, tensors, entry))


def _quantized_card(src: str, cfg: ModelConfig, flat: dict, tensors: dict, entry: dict) -> str:
    """The source's MODEL_CARD.md (or one made from its config and float params) with a section
    on the quantization: what became int8, and the bytes of the weights before and after."""
    from mmfm.zoo.model_card import CARD_FILE, model_card

    path = fileio.join(src, CARD_FILE) if fileio.isdir(src) else ""
    if path and fileio.isfile(path):
        card = fileio.read_text(path)
    else:
        card = model_card(cfg, common.to_canonical(flat), name=fileio.basename(src.rstrip("/")),
                          source={"kind": "zoo", "arch": src})
    f32 = sum(np.asarray(v).size * 4 for v in flat.values())
    int8 = sum(np.asarray(v).nbytes for v in tensors.values())
    return "\n".join([card.rstrip("\n"), "", "## Quantization", "",
                      f"- {entry['weight_dtype']} weights ({entry['method']}; {entry['library']} "
                      f"{entry['library_version']}), {entry['scale_dtype']} scales, "
                      f"{entry['activations']} activations"
                      + (f" ({entry['activation_method']})" if "activation_method" in entry else "")
                      + f"; {len(entry['layers'])} layers quantized.",
                      f"- Kept in float32: {entry['float_params']}.",
                      f"- Weights: {int8 / 1e6:.2f} MB vs {f32 / 1e6:.2f} MB in float32 "
                      f"({int8 / f32:.2f}x). Check the evals of this export against the float "
                      "model's above before relying on it: they are the float model's.", ""])


def make_tokenizer(spec: Optional[registry.TokenizerSpec], base_dir: Optional[str] = None,
                   error: Optional[str] = None):
    """The tokenizer a spec describes, reading its files from `base_dir`."""
    from mmfm.zoo.tokenizers import tokenizer_from_files

    if spec is None:
        raise FileNotFoundError(error or "this model has no tokenizer: pass a tokenizer file to "
                                "get_tokenizer")
    if spec.kind == "clip_bpe" and spec.file is None:
        return tokenizer_from_files("clip_bpe")
    paths = [fileio.join(base_dir or "", n) for n in spec.files()]
    missing = [p for p in paths if not fileio.isfile(p)]
    if not spec.file or missing:
        raise FileNotFoundError(f"tokenizer file(s) {missing or [spec.file]} not found: pass the "
                                "tokenizer file to get_tokenizer, or load a converted export directory")
    return tokenizer_from_files(spec.kind, paths, lowercase=spec.lowercase, pad_id=spec.pad_id)


def get_tokenizer(name: str, *, kind: Optional[str] = None):
    """Tokenizer of an architecture, a model directory (export, HF, open_clip hub) or a tokenizer
    file (tokenizer.json, merges.txt with vocab.json beside it, spiece.model, tokenizer.model).

    A `.model` file is read as SigLIP's SentencePiece model unless kind='sentencepiece'.
    """
    from mmfm.zoo.source_tokenizer import spec_for_file

    if name in ARCHITECTURES:
        cfg = registry.get_model_config(name)
        return make_tokenizer(export_lib.default_tokenizer(cfg))
    if fileio.isdir(name):
        info, _ = load_model_info(name)
        return make_tokenizer(info.tokenizer, info.base_dir, info.tokenizer_error)
    if fileio.isfile(name):
        spec = spec_for_file(name, "siglip" if kind is None else "clip", 77)
        if kind is not None:
            spec = dataclasses.replace(spec, kind=kind)
        return make_tokenizer(spec, fileio.dirname(fileio.absolute(name)))
    if _looks_like_path(name):
        raise _path_not_found("tokenizer", name)
    registry.get_model_config(name)  # raises listing valid names
    raise AssertionError


_ENC: dict[Any, Any] = {}


def _encoder(model: TwoTower, method: str):
    key = (id(model), method)
    if key not in _ENC:
        if method == "naflex":
            def run(p, x):
                return model.apply({"params": p}, x["patches"], spatial_shapes=x["spatial_shapes"],
                                   patch_valid=x["patch_valid"], method=model.encode_image)[0]
            _ENC[key] = jax.jit(run)
        else:
            _ENC[key] = jax.jit(lambda p, x: model.apply({"params": p}, x, method=getattr(model, method))[0])
    return _ENC[key]


def _naflex_batch(model: TwoTower, images) -> dict:
    """NaFlex input from a batch dict, a list of preprocessed dicts, or a list of raw images
    (each resized at its own aspect ratio with the model's preprocessing)."""
    from mmfm.data import naflex

    if naflex.is_naflex_input(images):
        return {k: jnp.asarray(v) for k, v in images.items() if k in naflex.NAFLEX_KEYS}
    if not isinstance(images, (list, tuple)):
        raise ValueError("a NaFlex model takes a list of images (any sizes), a list of its "
                         "preprocess outputs, or their batch dict (patches, spatial_shapes, patch_valid)")
    if not all(naflex.is_naflex_input(x) for x in images):
        transform = ImageTransform(model_info(model).preprocess)
        images = [x if naflex.is_naflex_input(x) else transform(x) for x in images]
    return {k: jnp.asarray(v) for k, v in naflex.stack(images).items()}


def encode_image(model: TwoTower, params, images) -> jax.Array:
    """Normalised float images [batch, H, W, 3] (from preprocess_eval) -> L2-normalised [batch, D].

    NaFlex models (SigLIP 2 NaFlex) take a list of images of any sizes (raw, or their
    preprocess_eval outputs), or the batch dict of mmfm.data.naflex.stack."""
    if model.cfg.image.naflex:
        return _encoder(model, "naflex")(params, _naflex_batch(model, images))
    images = jnp.asarray(images, jnp.float32)
    if images.ndim != 4 or images.shape[-1] != model.cfg.image.channels:
        raise ValueError(f"images must be [batch, H, W, {model.cfg.image.channels}], got {images.shape}")
    return _encoder(model, "encode_image")(params, images)


def encode_text(model: TwoTower, params, texts: Sequence[str] | np.ndarray, *, tokenizer=None,
                context_length: Optional[int] = None) -> jax.Array:
    """Strings (with `tokenizer`) or int tokens [batch, L] -> L2-normalised [batch, D]."""
    if isinstance(texts, str) or (isinstance(texts, (list, tuple)) and texts and isinstance(texts[0], str)):
        if tokenizer is None:
            raise ValueError("encode_text got strings: pass tokenizer=mmfm.get_tokenizer(...)")
        texts = tokenizer(list([texts] if isinstance(texts, str) else texts),
                          context_length or model.cfg.text.context_length)
    return _encoder(model, "encode_text")(params, jnp.asarray(texts, jnp.int32))


def serialize(name: Optional[str], pretrained: Optional[str] = None, *, out: str,
              workdir: Optional[str] = None, suite_results: Sequence[str] = ()) -> str:
    """Serialized encoders (`mmfm.zoo.serialize`, run by `mmfm.local.load`) of a zoo model, an
    export directory (also int8) or, with `workdir`, a training run's latest checkpoint; with
    the MODEL_CARD.md of the export (made for the run, from what it recorded)."""
    import logging
    import tempfile

    from mmfm.zoo.model_card import CARD_FILE, model_card
    from mmfm.zoo.serialize import write_serialized

    if workdir is not None:
        with tempfile.TemporaryDirectory(prefix="mmfm-export-") as tmp:
            export = export_lib.export_from_workdir(workdir, os.path.join(tmp, "export"),
                                                    suite_results=suite_results)
            return serialize(export, out=out)
    model, params, info = _create(name, pretrained, mesh=None, overrides=None, sha256=None,
                                  cache_dir=None, offline=None, seed=0, rules=None)
    label = fileio.basename(name.rstrip("/")) if fileio.exists(name) else name
    if pretrained is not None and not fileio.exists(pretrained):
        label += f"/{pretrained}"  # a zoo tag: ViT-B-32/openai
    card_path = fileio.join(info.base_dir or "", CARD_FILE)
    if info.base_dir and fileio.isfile(card_path):
        card = fileio.read_text(card_path)
        label = card.splitlines()[0].removeprefix("# Model card: ") or label
    else:
        card = model_card(model.cfg, common.to_canonical(common.flatten(jax.device_get(params))),
                          name=label, source={"kind": "zoo", "arch": name, "path": pretrained})
    spec, files = info.tokenizer, []
    if spec is not None:
        files = [fileio.join(info.base_dir or "", n) for n in spec.files()]
        if not all(fileio.isfile(f) for f in files):
            spec, files = None, []
    if spec is None:
        logging.getLogger("mmfm").warning("%s: no tokenizer found; the text encoder takes token ids "
                                          "only", label)
    return write_serialized(model, params, info.preprocess, spec, files, out, name=label, card=card)
