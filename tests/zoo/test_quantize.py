"""Int8 exports (`mmfm quantize`, mmfm.zoo.quantize, qwix): int8 values with per-channel scales
that match a numpy symmetric-quantization formula, embeddings close to float32, a real size
reduction on disk, and loading through the public API, `jax.jit` of `model.apply` and the CLI.

The source is the tiny converted Hugging Face CLIP fixture (random weights, its own tokenizer)."""
import functools
import json
import os
import re
import subprocess
import sys

import jax
import numpy as np
import pytest

import mmfm.api as mmfm
from mmfm.zoo import quantize as q

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SRC = os.path.join(ROOT, "tests", "zoo", "fixtures", "hf_clip_tiny")


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """(float32 export, int8 export) of the fixture."""
    from mmfm.zoo.export import convert_to_export

    root = tmp_path_factory.mktemp("quantize")
    f32 = convert_to_export(SRC, str(root / "f32"), converter="hf")
    return f32, mmfm.quantize_export(SRC, str(root / "int8"))


def numpy_int8(w: np.ndarray, channel_axes) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric absmax int8 per channel: scale = max|w| / 127.5 over the other axes (qwix's
    bound: the +-127 buckets reach +-127.5), q = round-half-even(w / scale) in [-128, 127]."""
    reduce = tuple(i for i in range(w.ndim) if i not in channel_axes)
    scale = np.abs(w).max(axis=reduce, keepdims=True) / 127.5
    return np.clip(np.rint(w / scale), -128, 127), scale


def test_int8_values_and_per_channel_scales_match_the_numpy_formula(exports):
    from mmfm.zoo.pretrained import load_export

    f32, int8 = exports
    _, ref, _ = load_export(f32)
    _, flat, info = load_export(int8)
    layers = info["quantization"]["layers"]
    kernels = [k for k in ref if k.endswith("_kernel") or k.endswith("/kernel")]
    conv = [k for k in kernels if ref[k].ndim == 4 and "/embedding/" in k]  # the linear patch conv
    assert set(layers) == (set(kernels) - set(conv)) | {q.EMBEDDING}, sorted(set(layers) ^ set(kernels))
    assert layers["img/encoder/block_0/attn/query_kernel"] == [1, 2]  # [width, heads, head_dim]
    assert layers["img/encoder/block_0/attn/out_kernel"] == [2]
    assert layers["txt/encoder/block_0/mlp/fc1/kernel"] == [1] and layers[q.EMBEDDING] == [0]
    for name, axes in layers.items():
        w, values, scale = ref[name], flat[name], flat[name + ".scale"]
        assert values.dtype == np.int8 and values.shape == w.shape and scale.dtype == np.float32
        q_np, scale_np = numpy_int8(w, axes)
        assert scale.shape == scale_np.shape, name
        np.testing.assert_allclose(scale, scale_np, rtol=1e-6, err_msg=name)
        # Each channel's extreme sits exactly on the edge w / scale = +-127.5, which float
        # rounding sends to either bucket (qwix: -127, numpy: -128); every other value is equal.
        edge = np.abs(np.abs(w / scale_np) - 127.5) < 1e-4
        assert np.array_equal(values[~edge], q_np[~edge]), name
        assert np.abs(values[edge] - q_np[edge]).max(initial=0) <= 1, name
        step = np.broadcast_to(scale, w.shape)
        # float32 rounding of w / scale near 127.5 costs ~1e-5 of a step
        assert np.all(np.abs(q.dequantize(values, scale) - w) <= 0.5 * step * (1 + 1e-4)), name
    for name in set(ref) - set(layers):  # LayerNorms, biases, position tables, the patch conv
        assert flat[name].dtype == np.float32 and not name.endswith(".scale")
        np.testing.assert_array_equal(flat[name], ref[name])


def test_int8_export_is_a_fraction_of_the_float32_one_on_disk(exports):
    f32, int8 = exports
    p32 = os.path.getsize(os.path.join(f32, "params.safetensors"))
    p8 = os.path.getsize(os.path.join(int8, "params.safetensors"))
    # Width 32: biases, LayerNorms and scales are a large share (the demo model and ViT-B-16 reach
    # <= 0.3 with the tokenizer file included, benchmarks/quantize.py); measured here 0.369.
    assert p8 / p32 < 0.38, (p8, p32)
    meta = json.load(open(os.path.join(int8, "config.json")))
    assert meta["version"] == 2 and meta["quantization"]["library"] == "qwix"
    assert meta["quantization"]["library_version"] == "0.1.8"
    assert meta["quantization"]["weight_dtype"] == "int8" and meta["quantization"]["activations"] == "float"
    assert sorted(os.listdir(int8)) == sorted(os.listdir(f32))  # same layout as `mmfm export`


@functools.lru_cache(maxsize=None)  # each export's embeddings are compared more than once
def _embeddings(path: str):
    model, params, _, preprocess = mmfm.create_model_and_transforms(path)
    tok = mmfm.get_tokenizer(path)
    s = model.cfg.image.image_size
    images = np.random.default_rng(0).normal(size=(8, s, s, 3)).astype(np.float32)
    texts = ["a red circle", "two blue squares", "a photo of a cat", "x", "", "left of a triangle",
             "a small green star", "three large yellow hexagons above a circle"]
    return (np.asarray(mmfm.encode_image(model, params, images)),
            np.asarray(mmfm.encode_text(model, params, texts, tokenizer=tok)))


def test_int8_embeddings_are_close_to_float32(exports):
    f32, int8 = exports
    ref_img, ref_txt = _embeddings(f32)
    img, txt = _embeddings(int8)
    cos = np.concatenate([(img * ref_img).sum(-1), (txt * ref_txt).sum(-1)])
    assert cos.min() > 0.999, cos  # measured min 0.99992 (width 32, random weights)
    assert not np.allclose(img, ref_img, atol=1e-7)  # the quantized computation really ran
    with pytest.raises(ValueError, match="not supported"):
        mmfm.quantize_export(SRC, "unused", activations="int4")


@pytest.fixture(scope="module")
def w8a8(tmp_path_factory):
    """The fixture's export with int8 weights and int8 activations."""
    return mmfm.quantize_export(SRC, str(tmp_path_factory.mktemp("w8a8") / "w8a8"),
                                activations="int8")


def test_int8_activation_embeddings_are_close_to_float32_and_to_weight_only(exports, w8a8):
    f32, int8 = exports
    meta = json.load(open(os.path.join(w8a8, "config.json")))["quantization"]
    assert meta["activations"] == "int8" and "per token" in meta["activation_method"]
    assert meta["layers"] == json.load(open(os.path.join(int8, "config.json")))["quantization"]["layers"]
    (ref_img, ref_txt), (w_img, w_txt) = _embeddings(f32), _embeddings(int8)
    img, txt = _embeddings(w8a8)
    cos = np.concatenate([(img * ref_img).sum(-1), (txt * ref_txt).sum(-1)])
    assert cos.min() > 0.999, cos  # measured min 0.99980 (weight-only: 0.99992)
    # The activations really were quantized: not the weight-only numbers.
    assert np.abs(img - w_img).max() > 1e-5 and np.abs(txt - w_txt).max() > 1e-5


def _dots(model, params, method, x, compile: bool = True) -> tuple[list[str], list[str]]:
    """(operand/result types of the lowered StableHLO dot_generals, XLA:CPU's compiled dot
    fusions' signatures if `compile`) of `method` applied to `x` under jit."""
    fn = jax.jit(lambda p, x: model.apply({"params": p}, x, method=method))
    lowered = fn.lower(params, x)
    hlo = [line.split(" : ", 1)[1] for line in lowered.as_text().splitlines()
           if "stablehlo.dot_general" in line]
    compiled = [] if not compile else [
        line.strip() for line in lowered.compile().as_text().splitlines()
        if " dot(" in line or re.match(r"\s*%fused\S* \(.*\) -> s32", line)]
    return hlo, compiled


def test_int8_activation_model_runs_int8_x_int8_to_int32_dots_on_cpu(w8a8):
    model, params, _, _ = mmfm.create_model_and_transforms(w8a8)
    s, ctx = model.cfg.image.image_size, model.cfg.text.context_length
    for method, x in ((model.encode_image, np.zeros((2, s, s, 3), np.float32)),
                      (model.encode_text, np.ones((2, ctx), np.int32))):
        hlo, compiled = _dots(model, params, method, x)
        # Every matmul: q/k/v/out projections, the two attention products, fc1/fc2, the head.
        assert len(hlo) == 2 * (4 + 2 + 2) + 1, hlo
        assert all(re.fullmatch(r"\(tensor<[\dx]+xi8>, tensor<[\dx]+xi8>\) -> tensor<[\dx]+xi32>", t)
                   for t in hlo), hlo
        dots = [c for c in compiled if " dot(" in c]
        assert len(dots) == len(hlo) and all(re.search(r"= s32\[", d) for d in dots), dots
        assert all("f32" not in c.split("->")[0] for c in compiled if "->" in c), compiled


def test_quantized_pair_runs_under_jit_and_keeps_the_model_config(exports):
    from mmfm.models.multimodal import TwoTower

    f32, int8 = exports
    model, params, _, _ = mmfm.create_model_and_transforms(int8)
    ref_model, _, _, _ = mmfm.create_model_and_transforms(f32)
    assert isinstance(model, TwoTower) and model.cfg == ref_model.cfg
    assert mmfm.model_info(model).quantization["weight_dtype"] == "int8"
    leaves = jax.tree_util.tree_leaves(params)
    assert any(x.dtype == np.int8 for x in leaves)
    s = model.cfg.image.image_size
    x = np.zeros((2, s, s, 3), np.float32)
    fn = jax.jit(lambda p, x: model.apply({"params": p}, x, method=model.encode_image))
    emb, _ = fn(params, x)
    np.testing.assert_allclose(np.asarray(emb), np.asarray(mmfm.encode_image(model, params, x)),
                               atol=1e-6)
    m = mmfm.load_eval_model(int8)
    out = m.encode_texts(["a red circle", "a blue square"])
    assert out.shape == (2, model.cfg.embed_dim)
    np.testing.assert_allclose(np.linalg.norm(out, axis=-1), 1.0, atol=1e-5)


def _cli(*args, cwd):
    return subprocess.run([sys.executable, "-c", "from mmfm.cli import main; main()", *args],
                          cwd=cwd, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, JAX_PLATFORMS="cpu",
                                   PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])))


@pytest.mark.slow  # five mmfm processes: ~30 s
def test_cli_quantizes_from_another_directory_and_reports_bad_paths_in_one_line(tmp_path, exports):
    f32 = exports[0]
    p = _cli("quantize", f32, "--out", "q", cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    out = str(tmp_path / "q")
    assert p.stdout.strip().startswith(out) and "MB" in p.stdout
    assert mmfm.load_eval_model(out).encode_texts(["a red circle"]).shape == (1, 24)

    p = _cli("quantize", str(tmp_path / "no" / "such"), "--out", "q2", cwd=tmp_path)
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert p.returncode == 2 and len(lines) == 1 and "not found" in lines[0], p.stderr[-3000:]
    assert "Traceback" not in p.stderr and not os.path.exists(tmp_path / "q2")

    p = _cli("quantize", f32, "--out", "q8", "--activations", "int8", cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    meta = json.load(open(tmp_path / "q8" / "config.json"))["quantization"]
    assert meta["activations"] == "int8" and meta["weight_dtype"] == "int8"
    assert mmfm.load_eval_model(str(tmp_path / "q8")).encode_texts(["a red circle"]).shape == (1, 24)
    p = _cli("quantize", f32, "--out", "q4", "--activations", "int4", cwd=tmp_path)
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert p.returncode == 2 and len(lines) == 1 and "int4" in lines[0], p.stderr[-3000:]

    p = _cli("quantize", out, "--out", "q3", cwd=tmp_path)  # already int8
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert p.returncode == 2 and len(lines) == 1 and "already an int8 export" in lines[0], p.stderr


@pytest.mark.slow  # lowers both encoders (~15 s)
def test_int8_export_serializes_and_runs_with_only_jax_as_in_the_library(exports, tmp_path):
    """`mmfm export --model INT8 --format stablehlo`: the int8 weights baked into the artifact give
    the library's int8 embeddings, and the card says what was quantized."""
    from mmfm.local import load as load_local

    _, int8 = exports
    out = mmfm.serialize(int8, out=str(tmp_path / "local"))
    m = load_local(out)
    model, params, _, preprocess = mmfm.create_model_and_transforms(int8)
    images = np.random.default_rng(3).integers(0, 256, (7, m.image_size, m.image_size, 3), np.uint8)
    ref = np.asarray(mmfm.encode_image(model, params, preprocess.normalize(images)))
    assert np.abs(m.encode_image(images) - ref).max() <= 1e-6
    texts = ["a red circle", "two blue squares"]
    ref = np.asarray(mmfm.encode_text(model, params, texts, tokenizer=mmfm.get_tokenizer(int8)))
    assert np.abs(m.encode_text(texts) - ref).max() <= 1e-6
    card = open(os.path.join(out, "MODEL_CARD.md")).read()
    assert "## Quantization" in card and "## Serialized encoders" in card
    f32_bytes = sum(np.asarray(v).size * 4 for v in jax.tree_util.tree_leaves(
        mmfm.create_model_and_transforms(exports[0])[1]))
    artifact = sum(os.path.getsize(os.path.join(out, f)) for f in os.listdir(out)
                   if f.endswith(".jaxexport"))
    # int8 constants, not float copies, went into the artifact: float ones would be >= 1x. At width
    # 32 biases, LayerNorms and scales are a large share: 0.53x here, 0.26x for the demo model.
    assert artifact < 0.75 * f32_bytes


@pytest.mark.slow  # 20-25 s on 2 shared cores (qwix traces the model twice, two encoders)
def test_int8_activations_cover_the_demo_models_hmlp_stem_and_tied_mlm_embedding():
    """The demo recipe's model (tiny, no MAE decoder): an hMLP stem (an einsum with `...`) and a
    token embedding that is also the MLM head's matmul weight (gathered from its qwix wrapper)."""
    import dataclasses

    import flax.linen as nn

    from experiments.configs import demo
    from mmfm.config_utils import model_config
    from mmfm.models.multimodal import TwoTower, init_params
    from mmfm.zoo.convert import common

    cfg = q.inference_config(model_config(demo.get_config("tiny")))
    cfg = dataclasses.replace(cfg, mae_decoder=None)
    assert cfg.image.stem == "hmlp" and cfg.text.mlm_head
    model = TwoTower(cfg)
    shapes = common.flatten(jax.eval_shape(lambda r: nn.meta.unbox(init_params(model, r)),
                                           jax.random.PRNGKey(0)))
    rng = np.random.default_rng(0)  # random weights without compiling the init (~10 s)
    flat = {k: (k.endswith("scale") + 0.1 * rng.normal(size=v.shape)).astype(np.float32)
            for k, v in shapes.items()}
    cfg, tensors, entry = q.quantize_flat(cfg, flat, "int8")
    assert q.EMBEDDING in entry["layers"] and any("conv_0" in k for k in entry["layers"])
    qmodel, qparams = q.load_quantized(TwoTower(cfg), tensors, entry)
    params = common.unflatten(flat)
    images = rng.normal(size=(4, cfg.image.image_size, cfg.image.image_size, 3)).astype(np.float32)
    tokens = rng.integers(1, cfg.text.vocab_size, (4, cfg.text.context_length)).astype(np.int32)
    for encode, x in ((mmfm.encode_image, images), (mmfm.encode_text, tokens)):
        cos = (np.asarray(encode(model, params, x)) * np.asarray(encode(qmodel, qparams, x))).sum(-1)
        assert cos.min() > 0.995, (encode.__name__, cos)  # measured min 0.99986 (both)
    hlo, _ = _dots(qmodel, qparams, qmodel.encode_image, images, compile=False)
    assert len(hlo) > 2 and all(re.fullmatch(
        r"\(tensor<[\dx]+xi8>, tensor<[\dx]+xi8>\) -> tensor<[\dx]+xi32>", t) for t in hlo), hlo
