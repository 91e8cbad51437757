"""PIL pictures (MAE grid, retrieval grid) and the demo eval's few-shot additions."""
import json
import os

import numpy as np
from PIL import Image

from mmfm.evals import pictures
from mmfm.evals.datasets import ImageSource, RetrievalData

MEAN, STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


def test_to_uint8_inverts_the_normalisation():
    u8 = np.random.default_rng(0).integers(0, 256, (2, 5, 5, 3), dtype=np.uint8)
    x = (u8.astype(np.float32) / 255.0 - np.asarray(MEAN, np.float32)) / np.asarray(STD, np.float32)
    np.testing.assert_array_equal(pictures.to_uint8(x, MEAN, STD), u8)


def test_mae_reconstruction_grid(tmp_path):
    import flax.linen as nn
    import jax

    from mmfm.losses import mae_loss
    from mmfm.models.config import DecoderConfig, ModelConfig, text_config, vit_config
    from mmfm.models.multimodal import TwoTower, init_params

    cfg = ModelConfig(image=vit_config("mu/8", image_size=32), text=text_config("mu"),
                      embed_dim=16, mae_decoder=DecoderConfig()).validate()
    model = TwoTower(cfg)
    params = nn.meta.unbox(init_params(model, jax.random.PRNGKey(0)))
    rng = np.random.default_rng(1)
    u8 = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    images = (u8 / 255.0 - np.asarray(MEAN)) / np.asarray(STD)
    images = images.astype(np.float32)
    rec = pictures.mae_reconstruct(model, params, images, ratio=0.75, norm_pix=True)
    p, n = cfg.image.patch_size, cfg.image.num_patches
    mask = rec["mask"]
    assert mask.shape == (3, n) and mask.sum(1).tolist() == [n * 3 // 4] * 3

    # Reference: the training forward pass on the kept patches, scored by losses.mae_loss.
    keep = np.stack([np.flatnonzero(m == 0) for m in mask])
    pred = model.apply({"params": params}, images, np.zeros((3, cfg.text.context_length), np.int32),
                       mae_keep=keep, contrastive=False)["mae/pred"]
    ref = float(mae_loss(pred, images, mask, p, norm_pix=True))
    np.testing.assert_allclose(rec["masked_mse"], ref, rtol=1e-4)

    def patches(x):  # numpy patchify: row-major grid, (row, col, channel) inside a patch
        b, h, w, c = x.shape
        return x.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, n, -1)

    # The picture puts each predicted (normalised) patch back on its true patch's mean and std.
    t = patches(images.astype(np.float64))
    mu, sd = t.mean(-1, keepdims=True), np.sqrt(t.var(-1, keepdims=True) + 1e-6)
    recon = np.asarray(pred, np.float64) * sd + mu
    np.testing.assert_allclose(patches(rec["recon"]), recon, atol=1e-4)

    # Visible patches are pasted back exactly; removed ones are the reconstruction.
    vis = mask[..., None] == 0
    np.testing.assert_allclose(patches(rec["pasted"]) * vis, t * vis, atol=1e-5)
    np.testing.assert_allclose(patches(rec["pasted"]) * ~vis, patches(rec["recon"]) * ~vis, atol=1e-5)

    path = pictures.write_mae_grid(str(tmp_path / "mae.png"), rec, mean=MEAN, std=STD, scale=2)
    im = np.asarray(Image.open(path).convert("RGB"))
    pad = 2
    assert im.shape == (3 * (64 + pad) + pad, 4 * (64 + pad) + pad, 3)
    # Cell (0, 0) is the input itself, upscaled 2x.
    cell = im[pad:pad + 64:2, pad:pad + 64:2]
    np.testing.assert_array_equal(cell, u8[0])
    # A removed patch shows grey in the masked column.
    k = int(np.flatnonzero(rec["mask"][0])[0])
    r, c = divmod(k, 32 // p)
    x0 = pad + 64 + pad + 2 * c * p
    assert tuple(im[pad + 2 * r * p + 1, x0 + 1]) == (128, 128, 128)


def test_retrieval_grid_marks_the_true_image(tmp_path):
    rng = np.random.default_rng(0)
    records = [{"image": rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)} for _ in range(6)]
    data = RetrievalData(ImageSource(records, np.arange(6)),
                         captions=[f"caption {i}" for i in range(6)] + ["extra 0"],
                         text_to_image=np.array([0, 1, 2, 3, 4, 5, 0], np.int32))
    img = np.eye(6, 8, dtype=np.float32)
    txt = np.eye(6, 8, dtype=np.float32)[data.text_to_image]
    txt[1] = img[2]  # caption 1's best match is image 2: a red frame first, then its own image
    path = pictures.write_retrieval_grid(str(tmp_path / "r.png"), data, img, txt, num_queries=2,
                                         k=3, tile=24)
    im = np.asarray(Image.open(path).convert("RGB"))
    pad = 2
    first_thumb_x = pad + 48 + pad  # after the double-width caption tile
    assert tuple(im[pad, first_thumb_x]) == (40, 200, 60)  # query 0: its image ranks first
    assert tuple(im[pad + 24 + pad, first_thumb_x]) == (220, 40, 40)  # query 1: wrong image first


def test_demo_eval_has_few_shot_probes_and_timings(tiny_run):
    workdir = tiny_run[0]
    with open(os.path.join(workdir, "eval_results.json")) as f:
        saved = json.load(f)
    ev, timings = saved["metrics"], saved["timings_s"]
    for attr in ("shape", "color"):
        for k in (1, 2):  # the fixture asks for (1, 2) shots
            assert 0.0 <= ev[f"fewshot/{attr}/{k}shot/mean"] <= 1.0
            assert ev[f"fewshot/{attr}/{k}shot/std"] >= 0.0
        assert f"probe/{attr}/accuracy" in ev and f"zeroshot/{attr}/top1" in ev
    assert timings["few_shot"] > 0 and timings["total"] >= timings["few_shot"]
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        evals = [json.loads(line) for line in f if '"eval"' in line]
    assert evals[-1]["fewshot/shape/1shot/mean"] == ev["fewshot/shape/1shot/mean"]


def test_named_evaluators_run_inside_training(tiny_run):
    """`config.evals.evaluators` ran at the end of training, next to the built-in demo eval."""
    workdir = tiny_run[0]
    with open(os.path.join(workdir, "eval_results.json")) as f:
        ev = json.load(f)["metrics"]
    # Same split, captions, tokenizer and pixels as the built-in retrieval: identical recalls.
    for k in ("i2t/R@1", "i2t/R@5", "t2i/R@1", "t2i/R@10"):
        assert ev[f"shapes_ret/{k}"] == ev[f"retrieval/{k}"], k
    assert ev["recon/masked_mse"] > 0
    for name in ("shapes_ret_step4.png", "recon_step4.png"):
        assert Image.open(os.path.join(workdir, "pictures", name)).size[0] > 50
