"""Model-side helpers for the notebooks: zero-shot, nearest neighbours, MAE and MLM predictions.

Each function takes a `TwoTower` model and its params (e.g. from `mmfm.create_model_and_transforms`)
and returns numpy arrays or plain Python values; nothing here plots.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mmfm import masking
from mmfm.evals.zeroshot import class_embeddings
from mmfm.losses.masked import NORM_PIX_EPS
from mmfm.patches import patchify, unpatchify


def embed_images(model, params, images: np.ndarray, preprocess: Callable, batch_size: int = 64
                 ) -> np.ndarray:
    """uint8 (or PIL) images -> L2-normalised float32 [n, embed_dim], in fixed-size batches."""
    import mmfm

    out = []
    for i in range(0, len(images), batch_size):
        chunk = np.stack([preprocess(im) for im in images[i:i + batch_size]])
        pad = batch_size - len(chunk)  # one shape for every call: one compile
        if pad and len(images) > batch_size:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, axis=0)])
        emb = np.asarray(mmfm.encode_image(model, params, chunk))
        out.append(emb[:len(chunk) - pad] if pad and len(images) > batch_size else emb)
    return np.concatenate(out)


def embed_texts(model, params, texts: Sequence[str], tokenizer) -> np.ndarray:
    """Strings -> L2-normalised float32 [n, embed_dim]."""
    import mmfm

    return np.asarray(mmfm.encode_text(model, params, list(texts), tokenizer=tokenizer))


def zeroshot_probs(model, params, image_emb: np.ndarray, class_names: Sequence[str],
                   templates: Sequence[str], tokenizer) -> np.ndarray:
    """Class probabilities [n, classes]: softmax of the model's own logit scale times cosine
    similarity to the prompt-ensembled class embeddings (CLIP's zero-shot classifier)."""
    cls = class_embeddings(lambda t: embed_texts(model, params, t, tokenizer), list(class_names),
                           list(templates))
    scale = float(np.exp(np.asarray(params["t"]).reshape(-1)[0]))
    return np.asarray(jax.nn.softmax(scale * jnp.asarray(image_emb) @ jnp.asarray(cls).T, axis=-1))


def top_k(queries: np.ndarray, gallery: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Cosine top-k of normalised queries [q, d] in a normalised gallery [g, d]:
    (scores [q, k] descending, indices [q, k]). Ties break toward the lower index."""
    k = min(k, len(gallery))
    scores, idx = jax.lax.top_k(jnp.asarray(queries) @ jnp.asarray(gallery).T, k)
    return np.asarray(scores), np.asarray(idx)


@dataclasses.dataclass
class EmbeddingIndex:
    """A flat (exact) nearest-neighbour index over normalised embeddings and their payloads.

    The retrieval step of retrieval-augmented use: `search` returns the payloads (e.g. captions or
    image ids) that a downstream model would receive as context.
    """
    embeddings: np.ndarray  # [n, d], L2-normalised
    payloads: list

    def __post_init__(self):
        self.embeddings = np.asarray(self.embeddings, np.float32)
        if self.embeddings.ndim != 2 or len(self.embeddings) != len(self.payloads):
            raise ValueError(f"embeddings {self.embeddings.shape} and {len(self.payloads)} payloads "
                             "must be [n, d] and n long")

    def search(self, queries: np.ndarray, k: int = 5) -> list[list[tuple[float, object, int]]]:
        """queries [q, d] -> per query the k best (score, payload, index), best first."""
        scores, idx = top_k(np.atleast_2d(queries), self.embeddings, k)
        return [[(float(s), self.payloads[i], int(i)) for s, i in zip(srow, irow)]
                for srow, irow in zip(scores, idx)]


def mae_reconstruct(model, params, images: np.ndarray, preprocess: Callable, *, ratio: float = 0.75,
                    seed: int = 0, norm_pix: bool = True) -> dict[str, np.ndarray]:
    """MAE view of uint8 images [n, S, S, 3]: {"original", "masked", "reconstruction", "mask"}.

    Images are float [n, S, S, 3] in 0-1 (masked patches grey); mask [n, patches] has 1 = hidden.
    With `norm_pix` (how the model was trained) the decoder predicts each patch normalised by its own
    mean/std; as in the MAE paper's figures those statistics are taken from the true patch to
    show the prediction, and visible patches are pasted from the input.
    """
    cfg = model.cfg
    if cfg.mae_decoder is None:
        raise ValueError("model has no MAE decoder (model.mae_decoder is None)")
    p, n = cfg.image.patch_size, len(images)
    x = np.stack([preprocess(im) for im in images]).astype(np.float32)
    mean, std = np.asarray(preprocess.pre.mean, np.float32), np.asarray(preprocess.pre.std, np.float32)
    keep, mask = masking.patch_mask(jax.random.PRNGKey(seed), n, cfg.image.num_patches, ratio)
    tokens = jnp.zeros((n, cfg.text.context_length), jnp.int32)
    out = model.apply({"params": params}, jnp.asarray(x), tokens, mae_keep=keep, contrastive=False)
    pred = np.asarray(out["mae/pred"], np.float32)  # [n, patches, P*P*3], normalised-image space
    target = np.asarray(patchify(jnp.asarray(x), p))
    if norm_pix:
        mu = target.mean(-1, keepdims=True)
        sd = np.sqrt(target.var(-1, keepdims=True) + NORM_PIX_EPS)
        pred = pred * sd + mu
    m = np.asarray(mask)[..., None]
    hw = x.shape[1:3]
    to01 = lambda a: np.clip(a * std + mean, 0.0, 1.0)
    recon = np.asarray(unpatchify(jnp.asarray(target * (1 - m) + pred * m), p, hw))
    grey = (0.5 - mean) / std
    masked = np.asarray(unpatchify(jnp.asarray(target * (1 - m) + np.tile(grey, p * p) * m), p, hw))
    return {"original": to01(x), "masked": to01(masked), "reconstruction": to01(recon),
            "mask": np.asarray(mask)}


def _piece(tokenizer, token: int) -> str:
    return tokenizer.decode([int(token)]).strip() or f"<{int(token)}>"


def mlm_fill(model, params, captions: Sequence[str], tokenizer, *, ratio: float = 0.3,
             seed: int = 0, context_length: Optional[int] = None) -> list[dict]:
    """Mask caption tokens (every masked token becomes [MASK]) and let the MLM head fill them in.

    Returns one dict per caption: "masked" text, "predicted" text (masks replaced by the argmax
    tokens), and per masked position "targets" / "predictions" (token strings) and "correct".
    """
    if not model.cfg.text.mlm_head:
        raise ValueError("model has no MLM head (model.text.mlm_head is False)")
    L = context_length or model.cfg.text.context_length
    tokens = jnp.asarray(tokenizer(list(captions), L))
    masked, sel = masking.token_mask(jax.random.PRNGKey(seed), tokens, ratio,
                                     mask_id=tokenizer.mask_id, special_ids=tokenizer.special_ids,
                                     vocab_size=model.cfg.text.vocab_size, random_frac=0.0,
                                     keep_frac=0.0)
    _, out = model.apply({"params": params}, masked, mlm=True, method=model.encode_text)
    pred = np.asarray(jnp.argmax(out["mlm_logits"], -1))
    tokens, masked, sel = np.asarray(tokens), np.asarray(masked), np.asarray(sel) > 0
    special = set(int(i) for i in tokenizer.special_ids)
    results = []
    for row in range(len(captions)):
        shown, filled, targets, preds = [], [], [], []
        for j, t in enumerate(tokens[row]):
            if int(t) in special:
                continue
            if sel[row, j]:
                shown.append("[MASK]")
                filled.append(f"[{_piece(tokenizer, pred[row, j])}]")
                targets.append(_piece(tokenizer, t))
                preds.append(_piece(tokenizer, pred[row, j]))
            else:
                shown.append(_piece(tokenizer, t))
                filled.append(shown[-1])
        results.append({"caption": captions[row], "masked": " ".join(shown),
                        "predicted": " ".join(filled), "targets": targets, "predictions": preds,
                        "correct": [a == b for a, b in zip(targets, preds)]})
    return results
