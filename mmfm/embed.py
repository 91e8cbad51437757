"""`mmfm embed`: a folder of images (or a text file) -> an embeddings index file, resumably.

    enc = load_encoder("runs/demo")                     # run, export, zoo name (+tag), serialized
    summary = embed_images(enc, ["photos/"], "photos.safetensors", batch_size=64)
    summary = embed_texts(enc, "captions.txt", "captions.safetensors")

The index is one safetensors file: `embeddings` float32 [N, D] (L2-normalised), `ids_json` and
`keys_json` and `stamps_json` (uint8 tensors holding JSON lists of N strings: for images the path
relative to its folder, the absolute path and "size:mtime" (a changed file is embedded again); for
texts "LINE: text", the text and ""), and string metadata (format,
kind, model, pretrained, model_name, skipped). It is always replaced atomically, every
`save_every` batches and at the end, so a killed run leaves the last saved file and a rerun with
the same `out` embeds only what is missing. The search side is `mmfm.search`.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import os
import sys
import time
from typing import Callable, Optional, Sequence

import numpy as np
from PIL import Image

from mmfm import fileio
from mmfm.local import META_FILE as LOCAL_MARKER  # a serialized (`mmfm export --format stablehlo`) dir
from mmfm.data.transforms import Resize, to_uint8_rgb
from mmfm.train.metrics import format_eta

FORMAT = "mmfm-embeddings/1"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


# ----------------------------------------------------------------------------- models

class Encoder:
    """A loaded model behind one interface: `prepare` (thread-safe: one image -> uint8 at the
    model's size), `encode_images(list of prepared uint8 [S, S, 3]) -> [B, D]`,
    `encode_texts(list[str]) -> [B, D]`; `model`/`pretrained` name it in index files."""

    def __init__(self, *, model: str, pretrained: str, name: str, prepare: Callable,
                 encode_images: Callable, encode_texts: Callable):
        self.model, self.pretrained, self.name = model, pretrained, name
        self.prepare, self.encode_images, self.encode_texts = prepare, encode_images, encode_texts

    @property
    def identity(self) -> str:
        return self.model + (f" (pretrained {self.pretrained})" if self.pretrained else "")


def _identity(x: Optional[str]) -> str:
    """Absolute path for a path that exists, the text itself for a name or tag."""
    if not x:
        return ""
    return fileio.absolute(x) if fileio.exists(x) else x


def model_identity(model: str, pretrained: Optional[str] = None) -> tuple[str, str]:
    """(model, pretrained) as index files record them: absolute paths, or names as given."""
    return _identity(model), _identity(pretrained)


def load_encoder(model: str, pretrained: Optional[str] = None, *, batch_size: int = 64) -> Encoder:
    """`model`: a training run dir, an export dir (also int8), a zoo architecture with
    `pretrained` tag or file, or a serialized model dir (holding serialized.json)."""
    if fileio.isdir(model) and fileio.isfile(fileio.join(model, LOCAL_MARKER)):
        return _local_encoder(model)
    model_id, pretrained_id = model_identity(model, pretrained)
    from mmfm.checkpoint import is_run_dir

    if is_run_dir(model):  # recorded as its step dir: a run that trains on has new weights
        from mmfm.evals.model_io import EvalModel
        m = EvalModel.from_checkpoint(model, batch_size=batch_size)
        name = f"{fileio.basename(m.run.workdir)} step {m.run.step}"
        model_id = fileio.join(m.run.root, str(m.run.step))
    else:
        from mmfm.api import load_eval_model
        m = load_eval_model(model, pretrained, batch_size=batch_size)
        name = fileio.basename(fileio.absolute(model)) if fileio.exists(model) else model
    # EvalModel re-applies its transform, which leaves an image already at its size untouched.
    return Encoder(model=model_id, pretrained=pretrained_id, name=name,
                   prepare=m.transform.resize_u8, encode_images=m.encode_images,
                   encode_texts=m.encode_texts)


def _local_encoder(path: str) -> Encoder:
    import mmfm.local

    m = mmfm.local.load(path)
    resize = Resize(int(m.image_size), m.interpolation)
    return Encoder(model=fileio.absolute(path), pretrained="", name=str(m.name), prepare=resize,
                   encode_images=lambda ims: np.asarray(m.encode_image(np.stack(ims)), np.float32),
                   encode_texts=lambda texts: np.asarray(m.encode_text(list(texts)), np.float32))


# ----------------------------------------------------------------------------- inputs

def list_images(sources: Sequence[str]) -> list[tuple[str, str]]:
    """(id, absolute path) of every image: a folder is walked recursively (ids relative to it,
    sorted); a text file lists one path a line (relative to the file's folder; ids as written)."""
    out: list[tuple[str, str]] = []
    for src in sources:
        if os.path.isdir(src):
            found = []
            for d, dirs, files in os.walk(src):
                dirs.sort()
                found += [os.path.join(d, f) for f in files if f.lower().endswith(IMAGE_EXTENSIONS)]
            out += [(os.path.relpath(p, src).replace(os.sep, "/"), os.path.abspath(p))
                    for p in sorted(found)]
        elif os.path.isfile(src):
            base = os.path.dirname(os.path.abspath(src))
            with open(src, encoding="utf-8") as f:
                lines = [line.strip() for line in f]
            out += [(p, os.path.abspath(os.path.join(base, os.path.expanduser(p))))
                    for p in lines if p and not p.startswith("#")]
        else:
            raise FileNotFoundError(f"--images {src}: no such folder or list file")
    seen, unique = set(), []
    for item in out:  # the same file listed twice is embedded once
        if item[1] not in seen:
            seen.add(item[1])
            unique.append(item)
    return unique


def read_texts(path: str) -> list[tuple[str, str]]:
    """(id "LINE: text", text) of every non-blank line of `path` (line numbers from 1)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--texts {path}: no such file")
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    return [(f"{i}: {t.strip()}", t.strip()) for i, t in enumerate(lines, 1) if t.strip()]


def load_image(path: str) -> np.ndarray:
    """uint8 [H, W, 3] of an image file; ValueError for anything unreadable."""
    try:
        with Image.open(path) as im:
            im.load()
            return to_uint8_rgb(im)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ValueError(f"{type(e).__name__}: {e}") from e


# ----------------------------------------------------------------------------- index file

@dataclasses.dataclass
class Index:
    """An embeddings file in memory: embeddings [N, D] and N ids / keys, plus what made it."""
    kind: str  # "image" | "text"
    model: str
    pretrained: str
    model_name: str
    embeddings: np.ndarray
    ids: list[str]
    keys: list[str]  # absolute image paths, or the texts
    stamps: list[str] = dataclasses.field(default_factory=list)  # "size:mtime_ns" of image files
    skipped: dict[str, str] = dataclasses.field(default_factory=dict)  # key -> "size:mtime:reason"

    @property
    def identity(self) -> str:
        return self.model + (f" (pretrained {self.pretrained})" if self.pretrained else "")


def _json_tensor(x) -> np.ndarray:
    return np.frombuffer(json.dumps(x).encode("utf-8"), np.uint8)


def save_index(path: str, index: Index) -> None:
    """Writes `index` to `path` atomically (a reader sees the old file or the whole new one)."""
    from safetensors.numpy import save

    emb = np.ascontiguousarray(index.embeddings, np.float32)
    meta = {"format": FORMAT, "kind": index.kind, "model": index.model,
            "pretrained": index.pretrained, "model_name": index.model_name,
            "count": str(len(index.ids)), "skipped": json.dumps(index.skipped)}
    fileio.write_atomic(path, save({"embeddings": emb, "ids_json": _json_tensor(index.ids),
                                    "keys_json": _json_tensor(index.keys),
                                    "stamps_json": _json_tensor(index.stamps)}, metadata=meta))


def load_index(path: str) -> Index:
    """Reads an index written by `save_index`."""
    from safetensors import safe_open

    if not os.path.isfile(path):
        raise FileNotFoundError(f"index {path}: no such file")
    try:
        with safe_open(path, framework="numpy") as f:
            meta = f.metadata() or {}
            if meta.get("format") != FORMAT:
                raise ValueError(f"{path} is not an mmfm embeddings file (format "
                                 f"{meta.get('format')!r}, expected {FORMAT})")
            t = {k: f.get_tensor(k) for k in ("embeddings", "ids_json", "keys_json", "stamps_json")}
    except Exception as e:  # safetensors raises its own error type for a damaged header
        if isinstance(e, ValueError) and "mmfm embeddings" in str(e):
            raise
        raise ValueError(f"{path}: not a readable safetensors file ({e})") from e
    return Index(kind=meta["kind"], model=meta["model"], pretrained=meta.get("pretrained", ""),
                 model_name=meta.get("model_name", ""), embeddings=t["embeddings"],
                 ids=json.loads(t["ids_json"].tobytes()), keys=json.loads(t["keys_json"].tobytes()),
                 stamps=json.loads(t["stamps_json"].tobytes()),
                 skipped=json.loads(meta.get("skipped", "{}")))


def check_existing(out: str, model_id: tuple[str, str], kind: str) -> Optional[Index]:
    """The index already at `out` (None if there is none), after checking that it was made by
    the same model (`model_identity`) and holds the same kind of items; cheap, so callers can
    run it before loading the model."""
    if not os.path.exists(out):
        return None
    index = load_index(out)
    if (index.model, index.pretrained) != tuple(model_id):
        given = model_id[0] + (f" (pretrained {model_id[1]})" if model_id[1] else "")
        raise ValueError(f"{out} holds embeddings of {index.identity}, not {given}: use "
                         "another --out, or delete it to start over")
    if index.kind != kind:
        raise ValueError(f"{out} holds {index.kind} embeddings; these are {kind}s: use another --out")
    return index


# ----------------------------------------------------------------------------- the embed loop

class Progress:
    """`embed 640/2000 images 153.2 items/s eta 0m08s` at most every `every_s` seconds."""

    def __init__(self, total: int, what: str, every_s: float = 2.0, stream=None):
        self.total, self.what, self.every_s = total, what, every_s
        self.stream = stream or sys.stdout
        self.start = self.last = time.perf_counter()
        self.done = 0

    def update(self, n: int, *, force: bool = False) -> None:
        self.done += n
        now = time.perf_counter()
        if not force and now - self.last < self.every_s:
            return
        self.last = now
        rate = self.done / max(now - self.start, 1e-9)
        eta = format_eta((self.total - self.done) / rate) if rate > 0 else "?"
        print(f"embed {self.done}/{self.total} {self.what} {rate:.1f} items/s eta {eta}",
              file=self.stream, flush=True)

    def rate(self) -> float:
        return self.done / max(time.perf_counter() - self.start, 1e-9)


def _file_stamp(path: str) -> str:
    try:
        st = os.stat(path)
        return f"{st.st_size}:{st.st_mtime_ns}"
    except OSError:
        return "missing"


def _run(todo: list, index: Index, out: str, *, kind: str, batch_size: int, save_every: int,
         encode_batch: Callable, stamp: Callable[[str], str]) -> dict:
    """Embeds `todo` [(id, key)] in batches into `index`, saving every `save_every` batches."""
    if not todo:  # nothing new: the file is left as it is
        return {"embedded": 0, "skipped": {}, "items_per_s": 0.0}
    progress = Progress(len(todo), f"{kind}s")
    embs, skipped_now, batches = [index.embeddings], {}, 0

    def flush():  # a new index has a [0, 0] placeholder until its first batch sets D
        parts = [e for e in embs if e.shape[0]]
        if parts:
            index.embeddings = np.concatenate(parts).astype(np.float32)
        embs[:] = [index.embeddings]
        save_index(out, index)

    for start in range(0, len(todo), batch_size):
        chunk = todo[start:start + batch_size]
        ok, vectors, bad = encode_batch(chunk)
        for key, reason in bad.items():
            skipped_now[key] = reason
            index.skipped[key] = f"{_file_stamp(key)}:{reason}"
        if ok:
            embs.append(np.asarray(vectors, np.float32))
            index.ids += [i for i, _ in ok]
            index.keys += [k for _, k in ok]
            index.stamps += [stamp(k) for _, k in ok]
        batches += 1
        progress.update(len(chunk), force=start + batch_size >= len(todo))
        if batches % save_every == 0:
            flush()
    flush()
    return {"embedded": len(todo) - len(skipped_now), "skipped": skipped_now,
            "items_per_s": progress.rate() if todo else 0.0}


def embed_images(enc: Encoder, sources: Sequence[str], out: str, *, batch_size: int = 64,
                 save_every: int = 20, workers: int = 4) -> dict:
    """Embeds the images of `sources` (folders / list files) not yet in `out` into `out`.

    Returns {"total", "already", "embedded", "skipped" {path: reason}, "previously_skipped",
    "items_per_s", "count"}. Unreadable images are skipped, counted and remembered (not retried
    until the file changes)."""
    items = list_images(sources)
    index = check_existing(out, (enc.model, enc.pretrained), "image") or Index(
        "image", enc.model, enc.pretrained, enc.name, np.zeros((0, 0), np.float32), [], [])
    stamps = {k: _file_stamp(k) for _, k in items}  # taken before reading: a later edit re-embeds
    changed = [r for r, (k, st) in enumerate(zip(index.keys, index.stamps))
               if k in stamps and stamps[k] != st]
    _drop_rows(index, changed)
    have = set(index.keys)
    known_bad = {k for k, v in index.skipped.items() if v.startswith(_file_stamp(k) + ":")}
    todo = [(i, k) for i, k in items if k not in have and k not in known_bad]
    previously_bad = len(known_bad & {k for _, k in items})

    with concurrent.futures.ThreadPoolExecutor(max(1, workers)) as pool:
        def prepare(key):
            try:
                return enc.prepare(load_image(key)), None
            except ValueError as e:
                return None, str(e)

        def encode_batch(chunk):
            ok, arrays, bad = [], [], {}
            for (i, key), (arr, err) in zip(chunk, pool.map(prepare, [k for _, k in chunk])):
                if err is None:
                    ok.append((i, key))
                    arrays.append(arr)
                else:
                    bad[key] = err
            return ok, (enc.encode_images(arrays) if arrays else None), bad

        result = _run(todo, index, out, kind="image", batch_size=batch_size,
                      save_every=save_every, encode_batch=encode_batch, stamp=stamps.__getitem__)
    return dict(result, total=len(items), already=len(items) - len(todo) - previously_bad,
                previously_skipped=previously_bad, changed=len(changed), count=len(index.ids))


def _drop_rows(index: Index, rows: Sequence[int]) -> None:
    """Removes rows (files changed since they were embedded) from `index` in place."""
    if not rows:
        return
    keep = np.setdiff1d(np.arange(len(index.ids)), rows)
    index.embeddings = index.embeddings[keep]
    index.ids, index.keys, index.stamps = ([v[i] for i in keep]
                                           for v in (index.ids, index.keys, index.stamps))


def embed_texts(enc: Encoder, path: str, out: str, *, batch_size: int = 64,
                save_every: int = 20) -> dict:
    """Embeds the non-blank lines of `path` not yet in `out` (same result keys as embed_images)."""
    items = read_texts(path)
    index = check_existing(out, (enc.model, enc.pretrained), "text") or Index(
        "text", enc.model, enc.pretrained, enc.name, np.zeros((0, 0), np.float32), [], [])
    have = set(zip(index.ids, index.keys))
    todo = [(i, t) for i, t in items if (i, t) not in have]

    def encode_batch(chunk):
        return chunk, enc.encode_texts([t for _, t in chunk]), {}

    result = _run(todo, index, out, kind="text", batch_size=batch_size, save_every=save_every,
                  encode_batch=encode_batch, stamp=lambda _: "")
    return dict(result, total=len(items), already=len(items) - len(todo), previously_skipped=0,
                changed=0, count=len(index.ids))


def format_summary(summary: dict, out: str) -> str:
    """The closing lines of `mmfm embed`."""
    lines = [f"{out}: {summary['count']} embeddings; this run embedded {summary['embedded']} of "
             f"{summary['total']} ({summary['already']} already there, {summary['changed']} "
             f"changed since, {len(summary['skipped'])} unreadable skipped, "
             f"{summary['previously_skipped']} unreadable before and unchanged)"]
    for key, reason in sorted(summary["skipped"].items())[:10]:
        lines.append(f"  skipped {key}: {reason}")
    if len(summary["skipped"]) > 10:
        lines.append(f"  ... and {len(summary['skipped']) - 10} more")
    return "\n".join(lines)

