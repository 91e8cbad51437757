"""Weight files: fetch (local path or URL) with sha256 verification, a cache and an offline mode;
read safetensors / npz only (pickle files are refused); detect the source format and convert.

Environment: `MMFM_CACHE_DIR` (default ~/.cache/mmfm), `MMFM_OFFLINE=1` (never download).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from typing import Optional

import numpy as np

from mmfm import fileio
from mmfm.models.config import ModelConfig, model_config_from_dict
from mmfm.zoo.registry import PretrainedTag, Preprocess, TokenizerSpec

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
HOW_TO_CONVERT = (
    "mmfm never unpickles weights (a pickle can run arbitrary code). Convert it once, where torch "
    "is installed:\n  python -c \"import torch, safetensors.torch as st; "
    "sd = torch.load('{path}', map_location='cpu', weights_only=True); "
    "sd = sd.get('state_dict', sd); "
    "st.save_file({{k: v.contiguous() for k, v in sd.items()}}, '{stem}.safetensors')\"\n"
    "then pass the .safetensors file (and for Hugging Face models keep config.json beside it).")


class WeightsError(ValueError):
    """A weights file that cannot be used (wrong hash, truncated, pickle, unknown layout)."""


class DownloadError(ConnectionError):
    """A weights file could not be downloaded; the message says how to work offline."""


def cache_dir(override: Optional[str] = None) -> str:
    return os.path.abspath(os.path.expanduser(
        override or os.environ.get("MMFM_CACHE_DIR") or os.path.join("~", ".cache", "mmfm")))


def is_offline(override: Optional[bool] = None) -> bool:
    if override is not None:
        return override
    return os.environ.get("MMFM_OFFLINE", "").lower() in ("1", "true", "yes")


def sha256_file(path: str, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with fileio.open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def verify_sha256(path: str, expected: Optional[str]) -> None:
    if not expected:
        return
    actual = sha256_file(path)
    if actual.lower() != expected.lower():
        raise WeightsError(f"sha256 mismatch for {path}: expected {expected.lower()}, got {actual}. "
                           "The file is corrupt, truncated or a different release; delete it and fetch again.")


def refuse_pickle(path: str) -> None:
    """Raises for pickle-based files (by suffix, or a pickle protocol header)."""
    stem, suffix = os.path.splitext(path)
    is_pickle = suffix.lower() in PICKLE_SUFFIXES
    if not is_pickle and fileio.isfile(path) and suffix.lower() not in (".npz", ".safetensors"):
        with fileio.open(path, "rb") as f:
            head = f.read(2)
        is_pickle = len(head) == 2 and head[0] == 0x80 and head[1] <= 5
    if is_pickle:
        raise WeightsError(f"refusing pickle-based weights file {path}. "
                           + HOW_TO_CONVERT.format(path=path, stem=stem))


def is_url(src: str) -> bool:
    return urllib.parse.urlparse(str(src)).scheme in ("http", "https", "file")


def fetch(src: str, *, sha256: Optional[str] = None, cache: Optional[str] = None,
          offline: Optional[bool] = None, subdir: Optional[str] = None) -> str:
    """Local path of `src` (a path or an http(s)/file URL), downloaded into the cache if needed.

    The sha256, when given, is verified for local files, cached files and fresh downloads; a bad
    download is deleted. Offline, a URL must already be cached.
    """
    src = os.fspath(src)
    if not is_url(src):  # a local path, or a storage URL (gs://...) read in place
        if not fileio.exists(src):
            raise FileNotFoundError(f"weights not found: {src}")
        refuse_pickle(src)
        if fileio.isfile(src):
            verify_sha256(src, sha256)
        return src
    name = os.path.basename(urllib.parse.urlparse(src).path) or "download"
    refuse_pickle(name)
    sub = subdir or hashlib.sha256(src.encode()).hexdigest()[:16]
    dest = os.path.join(cache_dir(cache), sub, name)
    if os.path.isfile(dest):
        verify_sha256(dest, sha256)
        return dest
    where = f"the cache directory {cache_dir(cache)} (MMFM_CACHE_DIR)"
    if is_offline(offline):
        raise FileNotFoundError(f"offline mode (MMFM_OFFLINE=1): {src} is not in {where}; put the "
                                f"file at {dest}, or unset MMFM_OFFLINE to download it")
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    part = dest + ".part"
    try:
        with urllib.request.urlopen(src, timeout=60) as r, open(part, "wb") as f:
            shutil.copyfileobj(r, f, 1 << 20)
        verify_sha256(part, sha256)
    except BaseException as e:
        if os.path.exists(part):
            os.remove(part)
        if isinstance(e, (urllib.error.URLError, TimeoutError, ConnectionError)):
            reason = getattr(e, "reason", None) or e
            raise DownloadError(f"cannot download {src} ({type(e).__name__}: {reason}). Without "
                                f"network access, fetch the file elsewhere, put it at {dest} (in "
                                f"{where}) and set MMFM_OFFLINE=1") from e
        raise
    os.replace(part, dest)  # only a complete, verified file ever appears under its real name
    return dest


def tag_cache_dir(tag: PretrainedTag, cache: Optional[str] = None) -> str:
    """Where a pretrained tag's files are cached (`<cache>/<source with / as _>/`)."""
    return os.path.join(cache_dir(cache), tag.source.replace("://", "_").replace("/", "_"))


def is_cached(tag: PretrainedTag, cache: Optional[str] = None) -> bool:
    """Whether every file of `tag` is in the cache (usable with MMFM_OFFLINE=1)."""
    return all(os.path.isfile(os.path.join(tag_cache_dir(tag, cache), n)) for n in tag.files)


def _human(n: float, units=("", "K", "M", "G", "T")) -> str:
    for u in units:
        if n < 1000 or u == units[-1]:
            return f"{n:.0f}{u}" if u == "" else f"{n:.1f}{u}"
        n /= 1000
    return str(n)


def zoo_listing(cache: Optional[str] = None) -> tuple[list[dict], list[dict], str]:
    """(architectures, pretrained tags, cache dir) as rows for `mmfm zoo`.

    Sizes come from the config alone (`count_params_closed_form`): parameters, and the float32
    bytes of the weights (a release stored in 16 bits downloads half that).
    """
    from mmfm.models.config import count_params_closed_form
    from mmfm.zoo import registry

    archs, params = [], {}
    for name in registry.list_models():
        try:
            cfg = registry.get_model_config(name)
        except ValueError as e:  # a registry entry that does not validate: say so, list the rest
            archs.append({"arch": name, "params": "-", "image": f"invalid config: {str(e).split(': ', 1)[-1]}", "text": "-",
                          "embed_dim": "-", "tags": []})
            continue
        params[name] = count_params_closed_form(cfg)
        im, tx = cfg.image, cfg.text
        archs.append({
            "arch": name, "params": _human(params[name]),
            "image": f"{im.width}x{im.depth} /{im.patch_size} {im.image_size}px",
            "text": f"{tx.width}x{tx.depth} ctx {tx.context_length}",
            "embed_dim": cfg.embed_dim,
            "tags": [t for a, t in registry.list_pretrained() if a == name]})
    tags = []
    for arch, tag_name in registry.list_pretrained():
        tag = registry.PRETRAINED[(arch, tag_name)]
        source = tag.source if "://" in tag.source else f"hf://{tag.source}"
        tags.append({"arch": arch, "tag": tag_name, "converter": tag.converter, "source": source,
                     "size": _human(4 * params[arch]) + "B" if arch in params else "-", "cached": is_cached(tag, cache),
                     "dir": tag_cache_dir(tag, cache)})
    return archs, tags, cache_dir(cache)


def _check_safetensors_size(path: str) -> dict:
    """Reads the header and checks the file holds every byte it declares (truncation)."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise WeightsError(f"{path}: truncated or not a safetensors file ({size} bytes)")
        (n,) = struct.unpack("<Q", raw)
        if n > size - 8:
            raise WeightsError(f"{path}: truncated or not a safetensors file (header claims {n} "
                               f"bytes, file has {size})")
        try:
            header = json.loads(f.read(n))
        except ValueError as e:
            raise WeightsError(f"{path}: corrupt safetensors header ({e})") from None
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + n + end > size:
        raise WeightsError(f"{path}: truncated safetensors file: expected {8 + n + end} bytes, "
                           f"found {size}")
    return header


def read_safetensors(path: str) -> dict[str, np.ndarray]:
    refuse_pickle(path)
    if fileio.is_url(path):
        with fileio.local_file(path) as local:
            return read_safetensors(local)
    _check_safetensors_size(path)
    from safetensors import safe_open

    out = {}
    try:
        with safe_open(path, framework="numpy") as f:
            for k in f.keys():
                out[k] = f.get_tensor(k)
    except (TypeError, ValueError):  # e.g. bfloat16, which plain numpy lacks: go through jax
        with safe_open(path, framework="flax") as f:
            out = {k: np.asarray(f.get_tensor(k)) for k in f.keys()}
    return out


def read_npz(path: str) -> dict[str, np.ndarray]:
    refuse_pickle(path)
    if fileio.is_url(path):
        with fileio.local_file(path) as local:
            return read_npz(local)
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (zipfile.BadZipFile, EOFError, OSError, zipfile.LargeZipFile) as e:
        raise WeightsError(f"{path}: truncated or corrupt npz file ({type(e).__name__}: {e})") from None
    except ValueError as e:
        if "pickle" in str(e):
            raise WeightsError(f"{path}: the npz holds pickled objects, which mmfm refuses") from None
        raise WeightsError(f"{path}: corrupt npz file ({e})") from None


def read_weights(path: str) -> dict[str, np.ndarray]:
    """Tensors of a .safetensors or .npz file."""
    refuse_pickle(path)
    if path.endswith(".safetensors"):
        return read_safetensors(path)
    if path.endswith(".npz"):
        return read_npz(path)
    raise WeightsError(f"{path}: unknown weights format; mmfm reads .safetensors and .npz only")


# ----------------------------------------------------------------------------- mmfm exports

FORMAT, VERSION = "mmfm-export", 1
QUANTIZED_VERSION = 2  # int8 exports (mmfm.zoo.quantize): params hold int8 values and scales
SCALE_SUFFIX = ".scale"  # an int8 export's `<param name>.scale` tensors
PARAMS_FILE = "params.safetensors"


def read_export_config(path: str) -> dict:
    cfg_path = fileio.join(path, "config.json")
    if not fileio.isfile(cfg_path):
        raise FileNotFoundError(f"{path}: not an mmfm export (config.json missing)")
    with fileio.open(cfg_path) as f:
        meta = json.load(f)
    if meta.get("format") != FORMAT:
        raise ValueError(f"{cfg_path}: format is {meta.get('format')!r}, expected {FORMAT!r}")
    if int(meta.get("version", 0)) > QUANTIZED_VERSION:
        raise ValueError(f"{cfg_path}: export version {meta['version']} is newer than this mmfm "
                         f"reads ({QUANTIZED_VERSION}); upgrade mmfm")
    return meta


def load_export(path: str) -> tuple[ModelConfig, dict, dict]:
    """(ModelConfig, canonical flat params, info with preprocess/tokenizer/zeroshot/dir)."""
    meta = read_export_config(path)
    model = dict(meta["model"])
    for tower in ("image", "text", "mae_decoder"):
        if isinstance(model.get(tower), dict):
            model[tower] = dict(model[tower])
    try:
        cfg = model_config_from_dict(model)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}/config.json: bad 'model' entry: {e}") from None
    flat = read_safetensors(fileio.join(path, PARAMS_FILE))
    pre = meta.get("preprocess", {})
    pre = Preprocess(**{k: tuple(v) if isinstance(v, list) else v for k, v in pre.items()})
    info = {"preprocess": pre, "tokenizer": TokenizerSpec(**meta.get("tokenizer", {})),
            "zeroshot": meta.get("zeroshot", {}), "dir": fileio.absolute(path),
            "source": meta.get("source", {}), "quantization": meta.get("quantization")}
    return cfg, flat, info
