"""Pictures for eyes, drawn with PIL only: top retrievals and MAE input / masked / reconstruction.

    rec = mae_reconstruct(model, params, images_bhwc, ratio=0.75, norm_pix=True)
    write_mae_grid("recon.png", rec, mean=MEAN, std=STD)
    write_retrieval_grid("top.png", retrieval_data, image_emb, text_emb, num_queries=4, k=5)

MAE panels (one row per image): input | masked input (removed patches grey) | reconstruction |
reconstruction with the visible patches pasted back (as in the MAE paper's figures). With
`norm_pix` the decoder predicts each patch normalised by its own mean/std, so the picture puts
each predicted patch back on the true patch's mean and std: the colours come from the input, the
structure from the model (the paper's visualisation does the same).
"""
from __future__ import annotations

import io
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image, ImageDraw

from mmfm import fileio
from mmfm import masking
from mmfm.losses.masked import NORM_PIX_EPS
from mmfm.patches import patchify, unpatchify

__all__ = ["grid", "mae_reconstruct", "to_uint8", "write_mae_grid", "write_retrieval_grid"]

_PAD, _GREY, _GOOD, _BAD = 2, (128, 128, 128), (40, 200, 60), (220, 40, 40)


def to_uint8(images_bhwc, mean, std) -> np.ndarray:
    """Undo `(x / 255 - mean) / std`: float `[..., 3]` -> uint8 (clipped)."""
    x = np.asarray(images_bhwc, np.float32) * np.asarray(std, np.float32) + np.asarray(mean, np.float32)
    return np.clip(np.round(x * 255.0), 0, 255).astype(np.uint8)


def grid(rows: Sequence[Sequence[np.ndarray]], *, scale: int = 1, pad: int = _PAD) -> Image.Image:
    """uint8 `[h, w, 3]` tiles -> one PIL image; column c is as wide as its widest tile."""
    ncol = max(len(r) for r in rows)
    widths = [max(r[c].shape[1] for r in rows if c < len(r)) * scale for c in range(ncol)]
    heights = [max(t.shape[0] for t in r) * scale for r in rows]
    canvas = Image.new("RGB", (sum(widths) + pad * (ncol + 1), sum(heights) + pad * (len(rows) + 1)),
                       (20, 20, 20))
    y = pad
    for r, row in enumerate(rows):
        x = pad
        for c, tile in enumerate(row):
            im = Image.fromarray(np.asarray(tile, np.uint8))
            if scale != 1:
                im = im.resize((im.width * scale, im.height * scale), Image.Resampling.NEAREST)
            canvas.paste(im, (x, y))
            x += widths[c] + pad
        y += heights[r] + pad
    return canvas


def mae_decode(mdl, images, keep_idx):
    """The MAE decoder's `[B, N, P*P*3]` prediction for images with only `keep_idx` visible."""
    _, out = mdl.encode_image(images, keep_idx=keep_idx)
    return mdl.mae_decoder(out["tokens"], keep_idx)


def mae_reconstruct(model, params, images_bhwc, *, ratio: float = 0.75, norm_pix: bool = True,
                    seed: int = 0, predict=None) -> dict:
    """Masks random patches and reconstructs them with the model's MAE decoder.

    Args:
      images_bhwc: float32 `[B, H, W, 3]`, normalised with the model's mean/std.
      ratio: fraction of patches removed.
      norm_pix: whether the model was trained with per-patch normalised targets.
      predict: `(images, keep) -> prediction` to run the decoder elsewhere (e.g. an
        `EvalModel`'s mesh); default `model.apply` of `mae_decode` on `params`.

    Returns:
      {"images", "masked", "recon", "pasted": float32 `[B, H, W, 3]` (normalised space),
       "mask": `[B, N]` 1 = removed, "masked_mse": the MAE loss on this batch}.
    """
    images = jnp.asarray(images_bhwc, jnp.float32)
    b = images.shape[0]
    p = model.cfg.image.patch_size
    n = model.cfg.image.num_patches
    keep, mask = masking.patch_mask(jax.random.PRNGKey(seed), b, n, ratio)

    if predict is None:
        predict = lambda x, k: model.apply({"params": params}, x, k, method=mae_decode)
    pred = jnp.asarray(predict(images, keep), jnp.float32)
    target = patchify(images, p)  # [B, N, P*P*3]
    if norm_pix:  # the decoder predicts normalised patches: put them back on the true statistics
        mu = jnp.mean(target, axis=-1, keepdims=True)
        sd = jnp.sqrt(jnp.var(target, axis=-1, keepdims=True) + NORM_PIX_EPS)
        loss_target, recon_p = (target - mu) / sd, pred * sd + mu
    else:
        loss_target, recon_p = target, pred
    per_patch = jnp.mean((pred - loss_target) ** 2, axis=-1)
    masked_mse = jnp.sum(per_patch * mask) / jnp.maximum(jnp.sum(mask), 1.0)
    m = mask[..., None]
    hw = images.shape[1:3]
    return {"images": np.asarray(images),
            "masked": np.asarray(unpatchify(target * (1 - m), p, hw)),
            "recon": np.asarray(unpatchify(recon_p, p, hw)),
            "pasted": np.asarray(unpatchify(recon_p * m + target * (1 - m), p, hw)),
            "mask": np.asarray(mask), "masked_mse": float(masked_mse), "patch_size": p}


def write_mae_grid(path: str, rec: dict, *, mean, std, scale: int = 2) -> str:
    """PNG: one row per image, columns input | masked | reconstruction | visible + reconstruction."""
    p = rec["patch_size"]
    rows = []
    for i in range(rec["images"].shape[0]):
        masked = to_uint8(rec["masked"][i], mean, std)
        # Removed patches in grey rather than the colour of "zero after normalisation".
        hw = masked.shape[:2]
        removed = np.asarray(unpatchify(jnp.asarray(rec["mask"][i][None, :, None]).repeat(p * p, -1),
                                        p, hw))[0, ..., 0] > 0.5
        masked[removed] = _GREY
        rows.append([to_uint8(rec["images"][i], mean, std), masked,
                     to_uint8(rec["recon"][i], mean, std), to_uint8(rec["pasted"][i], mean, std)])
    return _save(grid(rows, scale=scale), path)


def _caption_tile(text: str, h: int, w: int) -> np.ndarray:
    """The query caption drawn into a dark tile, word-wrapped (PIL's built-in font)."""
    im = Image.new("RGB", (w, h), (0, 0, 0))
    draw = ImageDraw.Draw(im)
    lines, line = [], ""
    per_line = max(8, w // 6)
    for word in text.split():
        if len(line) + len(word) + 1 > per_line and line:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    lines.append(line)
    for j, ln in enumerate(lines[: max(1, h // 11)]):
        draw.text((2, 2 + 11 * j), ln, fill=(230, 230, 230))
    return np.asarray(im)


def _frame(tile: np.ndarray, colour) -> np.ndarray:
    out = tile.copy()
    out[:2], out[-2:], out[:, :2], out[:, -2:] = colour, colour, colour, colour
    return out


def write_retrieval_grid(path: str, data, image_emb, text_emb, *, num_queries: int = 4, k: int = 5,
                         tile: int = 96) -> str:
    """PNG: for the first captions of `num_queries` images, the caption then its top-k images.

    Green frame: the caption's own image; red: another image. `data` is a `RetrievalData`.
    """
    t2i = np.asarray(data.text_to_image)
    queries = [int(np.flatnonzero(t2i == i)[0]) for i in range(min(num_queries, len(data.images)))]
    scores = np.asarray(text_emb)[queries] @ np.asarray(image_emb).T  # [q, Ni]
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    needed = sorted(set(top.reshape(-1).tolist()))
    raw = dict(zip(needed, data.images.images(needed)))
    from mmfm.data.transforms import to_uint8_rgb

    def thumb(i):
        return np.asarray(Image.fromarray(to_uint8_rgb(raw[i])).resize((tile, tile)))

    rows = []
    for q, t in enumerate(queries):
        row = [_caption_tile(data.captions[t], tile, 2 * tile)]
        row += [_frame(thumb(int(i)), _GOOD if int(i) == t2i[t] else _BAD) for i in top[q]]
        rows.append(row)
    return _save(grid(rows), path)


def _save(im: Image.Image, path: str) -> str:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    fileio.write_atomic(path, buf.getvalue())
    return path
