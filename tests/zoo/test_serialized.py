"""Serialized encoders (`mmfm export --format stablehlo`, mmfm/zoo/serialize.py) run by mmfm.local
with only jax and numpy, and embed exactly as the library's model does, at any batch size, from one
artifact whose batch dimension is symbolic.

The model: a random-init `mmfm-mu-8` (32 px, width 32) with a SentencePiece tokenizer trained here,
written as an export directory the way tests/test_file_modes.py writes one; the run path (slow)
trains `demo.py:tiny` for 2 steps. Building and compiling take about a minute of CPU, so the
tests that need the artifact are `slow`; the command-line refusals are fast."""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import mmfm

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HEAVY = ("flax", "optax", "orbax", "grain", "tensorflow_datasets", "mmfm.models", "mmfm.api")
BATCHES = (1, 7, 64)
TEXTS = ["a red circle", "a small blue square left of a large green triangle", "",
         "circle " * 40]


def env():
    path = os.pathsep.join([ROOT] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
    return dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=path)


def cli(*args, cwd):
    """The installed `mmfm` console script, run from a directory outside the checkout."""
    exe = os.path.join(os.path.dirname(sys.executable), "mmfm")
    return subprocess.run([exe, *args], cwd=cwd, capture_output=True, text=True, timeout=600,
                          env=env())


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    from mmfm.data.tokenizers import train_tokenizer
    from mmfm.zoo.convert import common
    from mmfm.zoo.export import save_export
    from mmfm.zoo.registry import TokenizerSpec
    from mmfm.zoo.sources import default_preprocess

    root = tmp_path_factory.mktemp("serialized")
    model, params = mmfm.create_model("mmfm-mu-8", seed=3)
    cfg = model.cfg
    train_tokenizer([f"a {c} {s} number {i}" for i in range(100) for c, s in
                     (("red", "circle"), ("blue", "square"), ("green", "triangle"))],
                    str(root / "t.model"), vocab_size=60)
    return save_export(str(root / "export"), common.flatten(params), cfg,
                       preprocess=default_preprocess(cfg),
                       tokenizer=TokenizerSpec("sentencepiece", "t.model", cfg.text.context_length),
                       tokenizer_files=[str(root / "t.model")])


@pytest.fixture(scope="module")
def serialized(export_dir, tmp_path_factory):
    """`mmfm export --model EXPORT --format stablehlo`, as a console script from a temp dir."""
    cwd = tmp_path_factory.mktemp("cwd")
    p = cli("export", "--model", export_dir, "--out", "local_model", "--format", "stablehlo", cwd=cwd)
    assert p.returncode == 0, p.stderr[-3000:]
    out = str(cwd / "local_model")
    assert p.stdout.strip().splitlines()[-1] == out
    return out


def run_local(path, inputs_npz, out_npz):
    """mmfm.local in a fresh interpreter: embeddings of every input, and what it imported."""
    code = textwrap.dedent(f"""
        import json, sys
        import numpy as np
        import mmfm.local
        m = mmfm.local.load({path!r})
        x = np.load({inputs_npz!r})
        out = {{f"img{{b}}": m.encode_image(x[f"img{{b}}"]) for b in {BATCHES!r}}}
        out.update({{f"tok{{b}}": m.encode_text(x[f"tok{{b}}"]) for b in {BATCHES!r}}})
        out["strings"] = m.encode_text({TEXTS!r})
        np.savez({out_npz!r}, **out)
        heavy = sorted(n for n in sys.modules if n.split(".")[0] in {HEAVY!r} or n.startswith({HEAVY!r}))
        print(json.dumps(dict(heavy=heavy, name=m.name, image_size=m.image_size, embed_dim=m.embed_dim,
                              context_length=m.context_length, signature=m.signature)))
    """)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                       env=env(), cwd=os.path.dirname(out_npz))
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


@pytest.mark.slow  # the fixtures build, train a tokenizer and lower (~30 s), compiles (~20 s)
def test_local_model_embeds_exactly_as_the_library_with_only_jax(export_dir, serialized, tmp_path):
    model, params, _, preprocess = mmfm.create_model_and_transforms(export_dir)
    tokenizer = mmfm.get_tokenizer(export_dir)
    size, length = model.cfg.image.image_size, model.cfg.text.context_length
    rng = np.random.default_rng(0)
    inputs = {}
    for b in BATCHES:
        inputs[f"img{b}"] = rng.integers(0, 256, (b, size, size, 3), dtype=np.uint8)
        inputs[f"tok{b}"] = tokenizer([f"a red circle number {i}" for i in range(b)], length)
    np.savez(tmp_path / "in.npz", **inputs)
    info = run_local(serialized, str(tmp_path / "in.npz"), str(tmp_path / "out.npz"))

    assert info["heavy"] == [], info["heavy"]
    assert (info["name"], info["image_size"], info["context_length"]) == ("export", size, length)
    # One artifact per encoder, its batch dimension symbolic.
    assert info["signature"] == {"image": f"uint8[b,{size},{size},3]", "text": f"int32[b,{length}]"}
    got = np.load(tmp_path / "out.npz")
    errors = {}
    for b in BATCHES:
        ref_img = np.asarray(mmfm.encode_image(model, params, preprocess.normalize(inputs[f"img{b}"])))
        ref_txt = np.asarray(mmfm.encode_text(model, params, inputs[f"tok{b}"]))
        assert got[f"img{b}"].shape == (b, info["embed_dim"]) and got[f"img{b}"].dtype == np.float32
        errors[b] = (float(np.abs(got[f"img{b}"] - ref_img).max()),
                     float(np.abs(got[f"tok{b}"] - ref_txt).max()))
    assert all(e <= 1e-6 for pair in errors.values() for e in pair), errors
    ref_str = np.asarray(mmfm.encode_text(model, params, TEXTS, tokenizer=tokenizer))
    assert np.abs(got["strings"] - ref_str).max() <= 1e-6
    np.testing.assert_allclose(np.linalg.norm(got["img7"], axis=-1), 1.0, atol=1e-5)


@pytest.mark.slow
def test_artifact_holds_two_encoders_metadata_and_the_tokenizer(export_dir, serialized):
    files = sorted(os.listdir(serialized))
    assert files == ["MODEL_CARD.md", "image_encoder.jaxexport", "serialized.json", "t.model",
                     "text_encoder.jaxexport"]
    card = open(os.path.join(serialized, "MODEL_CARD.md")).read()
    export_card = open(os.path.join(export_dir, "MODEL_CARD.md")).read()
    assert card.startswith(export_card.rstrip("\n")) and "## Serialized encoders" in card
    meta = json.load(open(os.path.join(serialized, "serialized.json")))
    export_meta = json.load(open(os.path.join(export_dir, "config.json")))
    assert meta["format"] == "mmfm-serialized" and meta["mmfm_version"] == mmfm.__version__
    assert meta["mean"] == list(export_meta["preprocess"]["mean"])
    assert meta["tokenizer"]["kind"] == "sentencepiece" and meta["tokenizer_files"] == ["t.model"]
    assert meta["embed_dim"] == export_meta["model"]["embed_dim"]
    assert "cpu" in meta["platforms"]


@pytest.mark.slow
def test_local_checks_its_inputs_and_names_what_it_reads(export_dir, serialized):
    import mmfm.local

    m = mmfm.local.load(serialized)
    with pytest.raises(ValueError, match=r"uint8 \[batch, 32, 32, 3\]"):
        m.encode_image(np.zeros((2, 32, 32, 3), np.float32))
    with pytest.raises(ValueError, match=r"int \[batch, 64\]"):
        m.encode_text(np.zeros((2, 16), np.int32))
    with pytest.raises(FileNotFoundError, match="--format stablehlo"):
        mmfm.local.load(export_dir)  # an export directory, not serialized encoders


def test_naflex_models_are_refused_in_one_line(tmp_path):
    from mmfm.models.multimodal import TwoTower
    from mmfm.zoo.registry import get_model_config
    from mmfm.zoo.serialize import write_serialized
    from mmfm.zoo.sources import default_preprocess

    cfg = get_model_config("ViT-B-16-SigLIP2-naflex")
    with pytest.raises(ValueError, match="only fixed-size models can be serialized"):
        write_serialized(TwoTower(cfg), None, default_preprocess(cfg), None, [], str(tmp_path / "o"),
                         name="naflex")
    assert not os.path.exists(tmp_path / "o")


@pytest.mark.parametrize("args, expect", [
    (("--model", "mmfm-mu-8", "--workdir", "/tmp", "--out", "o", "--format", "stablehlo"),
     "exactly one of --workdir RUN or --model"),
    (("--out", "o", "--format", "stablehlo"), "exactly one of --workdir RUN or --model"),
    (("--model", "/no/such/export", "--out", "o", "--format", "stablehlo"), "path not found"),
    (("--workdir", "/no/such/run", "--out", "o", "--format", "stablehlo"), "does not exist"),
    (("--model", "mmfm-mu-8", "--out", "o"), "--model needs --format stablehlo"),
    (("--workdir", "/tmp", "--pretrained", "x", "--out", "o"), "--pretrained goes with --model"),
    (("--model", "mmfm-mu-8", "--out", "o", "--format", "onnx"), "invalid choice: 'onnx'"),
])
def test_bad_export_flags_are_one_line_and_exit_2(args, expect, tmp_path):
    p = cli("export", *args, cwd=tmp_path)
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert p.returncode == 2 and len(lines) == 1 and expect in lines[0], p.stderr[-3000:]
    assert not os.path.exists(tmp_path / "o")


@pytest.mark.slow
def test_export_from_a_run_matches_the_runs_export(tmp_path):
    import mmfm.local

    work = tmp_path / "work"
    train = subprocess.run(
        [sys.executable, "-m", "mmfm.train", "--config",
         os.path.join(ROOT, "experiments", "configs", "demo.py:tiny"),
         "--workdir", str(work / "runs" / "tiny"), f"--config.data.dir={work / 'data'}",
         "--config.total_steps=4", "--max_steps=2"],
        cwd=ROOT, capture_output=True, text=True, timeout=900, env=env())
    assert train.returncode == 0, train.stderr[-3000:]
    for fmt, out in (("stablehlo", "tiny_local"), ("mmfm", "tiny_export")):
        p = cli("export", "--workdir", "runs/tiny", "--out", out, "--format", fmt, cwd=work)
        assert p.returncode == 0, p.stderr[-3000:]
    m = mmfm.local.load(str(work / "tiny_local"))
    assert m.name == "tiny"
    model, params, _, preprocess = mmfm.create_model_and_transforms(str(work / "tiny_export"))
    tokenizer = mmfm.get_tokenizer(str(work / "tiny_export"))
    images = np.random.default_rng(1).integers(0, 256, (5, m.image_size, m.image_size, 3), np.uint8)
    ref = np.asarray(mmfm.encode_image(model, params, preprocess.normalize(images)))
    assert np.abs(m.encode_image(images) - ref).max() <= 1e-6
    ref = np.asarray(mmfm.encode_text(model, params, TEXTS, tokenizer=tokenizer))
    assert np.abs(m.encode_text(TEXTS) - ref).max() <= 1e-6


@pytest.mark.slow
def test_embed_and_search_run_on_the_serialized_model(export_dir, serialized, tmp_path):
    """`mmfm embed` on a serialized dir gives the library's embeddings; each image finds itself."""
    from PIL import Image

    from mmfm.embed import embed_images, load_encoder, load_index
    from mmfm.search import top_k

    model, params, _, preprocess = mmfm.create_model_and_transforms(export_dir)
    size = model.cfg.image.image_size
    images = np.random.default_rng(2).integers(0, 256, (12, size, size, 3), np.uint8)
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, im in enumerate(images):
        Image.fromarray(im).save(folder / f"{i:02d}.png")
    enc = load_encoder(serialized)
    out = str(tmp_path / "index.safetensors")
    summary = embed_images(enc, [str(folder)], out, batch_size=5)
    assert summary["embedded"] == 12
    index = load_index(out)
    assert index.ids == [f"{i:02d}.png" for i in range(12)]
    ref = np.asarray(mmfm.encode_image(model, params, preprocess.normalize(images)))
    assert np.abs(index.embeddings - ref).max() <= 1e-6
    hits = top_k(index.embeddings, index.embeddings, 1)
    assert [h[0][1] for h in hits] == list(range(12))
