"""`mmfm search`: cosine top-k over an index written by `mmfm embed` (mmfm.embed).

    index = load_index("photos.safetensors")
    enc = encoder_for(index)                      # the model recorded in the index
    q = query_embeddings(enc, texts=["a red circle"])          # [Q, D]
    hits = top_k(index.embeddings, q, k=5)        # per query: [(score, row), ...] best first
    draw_grid(index, hits, "hits.png")            # image indexes: one row of k tiles per query

Queries are embedded with the index's own model; a different model is refused, since its
embeddings live in another space and the scores would mean nothing.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw

from mmfm.embed import Encoder, Index, load_encoder, load_image, load_index

__all__ = ["draw_grid", "encoder_for", "format_hits", "load_index", "query_embeddings", "top_k"]

TILE = 128  # grid cell: TILE x TILE image
LABEL_H = 16  # and a label strip below it


def encoder_for(index: Index, model: Optional[str] = None, pretrained: Optional[str] = None,
                *, batch_size: int = 64) -> Encoder:
    """The index's model, or `model` (+ `pretrained`) after checking it is the same one."""
    if model is None:
        model, pretrained = index.model, index.pretrained or None
    enc = load_encoder(model, pretrained, batch_size=batch_size)  # a run is named by its step
    if (enc.model, enc.pretrained) != (index.model, index.pretrained):
        raise ValueError(f"the index was embedded with {index.identity}, not {enc.identity}: "
                         "query it with its own model (leave out --model), or embed again with "
                         "this one")
    return enc


def query_embeddings(enc: Encoder, *, texts: Sequence[str] = (), images: Sequence[str] = ()
                     ) -> np.ndarray:
    """L2-normalised [len(texts) + len(images), D]: texts first, then image files (read with the
    model's eval preprocessing; an unreadable file is an error here, not a skip)."""
    out = []
    if texts:
        out.append(np.asarray(enc.encode_texts(list(texts)), np.float32))
    if images:
        arrays = []
        for p in images:
            try:
                arrays.append(enc.prepare(load_image(p)))
            except ValueError as e:
                raise ValueError(f"--image {p}: cannot read it ({e})") from e
        out.append(np.asarray(enc.encode_images(arrays), np.float32))
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def _normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def top_k(embeddings: np.ndarray, queries: np.ndarray, k: int = 5) -> list[list[tuple[float, int]]]:
    """Cosine similarity of each query [Q, D] against embeddings [N, D]: per query the k best
    (score, row), highest first (ties: lower row first)."""
    if embeddings.shape[0] == 0:
        return [[] for _ in range(len(queries))]
    if queries.shape[-1] != embeddings.shape[-1]:
        raise ValueError(f"query width {queries.shape[-1]} != index width {embeddings.shape[-1]}")
    scores = _normalise(queries) @ _normalise(embeddings).T  # [Q, N]
    k = min(int(k), embeddings.shape[0])
    out = []
    for row in scores:
        best = np.lexsort((np.arange(len(row)), -row))[:k]
        out.append([(float(row[j]), int(j)) for j in best])
    return out


def format_hits(index: Index, labels: Sequence[str], hits) -> str:
    """One block per query: its label, then `rank  score  id` lines."""
    lines = []
    for label, rows in zip(labels, hits):
        lines.append(f"query {label}:")
        lines += [f"  {r:>3}  {score:.4f}  {index.ids[j]}" for r, (score, j) in enumerate(rows, 1)]
    return "\n".join(lines)


def _tile(path: str, size: int) -> Image.Image:
    """The image fitted into size x size (aspect kept, dark padding); grey if unreadable."""
    canvas = Image.new("RGB", (size, size), (24, 24, 24))
    try:
        im = Image.fromarray(load_image(path))
    except ValueError:
        return Image.new("RGB", (size, size), (128, 128, 128))
    scale = size / max(im.size)  # small images (64 px shapes) are scaled up to the tile
    im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))),
                   Image.Resampling.NEAREST if scale > 1 else Image.Resampling.BILINEAR)
    canvas.paste(im, ((size - im.width) // 2, (size - im.height) // 2))
    return canvas


def draw_grid(index: Index, hits, out: str, *, tile: int = TILE) -> tuple[int, int]:
    """Writes a PNG: one row per query, one tile per hit with "score id" below it.

    Size: (k * tile) x (queries * (tile + LABEL_H)), k the longest hit list. Returns (w, h)."""
    if index.kind != "image":
        raise ValueError("--grid draws image hits; this index holds text embeddings")
    cols = max([len(r) for r in hits] + [1])
    w, h = cols * tile, max(1, len(hits)) * (tile + LABEL_H)
    grid = Image.new("RGB", (w, h), (0, 0, 0))
    draw = ImageDraw.Draw(grid)
    for qi, rows in enumerate(hits):
        top = qi * (tile + LABEL_H)
        for c, (score, j) in enumerate(rows):
            grid.paste(_tile(index.keys[j], tile), (c * tile, top))
            label = f"{score:.3f} {index.ids[j]}"
            while len(label) > 6 and draw.textlength(label) > tile - 4:  # keep the end: the name
                label = label[:6] + "~" + label[8:]
            draw.text((c * tile + 2, top + tile + 2), label, fill=(255, 255, 255))
    grid.save(out, format="PNG")
    return w, h

