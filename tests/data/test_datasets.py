"""Config-level datasets: prepared corpora, catalog adapters, mixtures, determinism, resume."""
import io
import json
import os
import subprocess
import sys
import textwrap

import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from mmfm.data import pipeline, sources, transforms
from mmfm.data.build import build_data
from mmfm.data.builders import corpus

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
N = 40


def _write_corpus(root):
    os.makedirs(os.path.join(root, "img"))
    lines = []
    for i in range(N):
        rng = np.random.default_rng(i)
        img = Image.fromarray(rng.integers(0, 255, (20 + i % 5, 28, 3), dtype=np.uint8))
        img.save(os.path.join(root, "img", f"{i}.jpg"), quality=90)
        lines.append(json.dumps({"image": f"img/{i}.jpg", "captions": [f"photo {i}",
                                                                       f"picture {i}"]}))
    lines.append(json.dumps({"image": "img/0.jpg", "caption": ""}))  # skipped: empty_caption
    with open(os.path.join(root, "c.jsonl"), "w") as f:
        f.write("\n".join(lines))
    return os.path.join(root, "c.jsonl")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("ds"))
    corpus.prepare("jsonl", src=_write_corpus(root), name="c", data_dir=os.path.join(root, "tfds"),
                   test_fraction=0.25, vocab_size=64)
    return os.path.join(root, "tfds")


def _cfg(data_dir, **kw):
    cfg = dict(name="jsonl", dataset="c", dir=data_dir, image_size=16, context_length=8,
               crop_scale=(0.5, 1.0), flip=True)
    cfg.update(kw)
    return cfg


def _take(loader, n):
    with iter(loader) as it:
        return [next(it) for _ in range(n)]


def _same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])


def test_corpus_batches_and_skip_counts(data_dir):
    loader, eval_fn, tok, info = build_data(_cfg(data_dir), batch_size=4, seed=0)
    assert info.num_train + info.num_eval == N and info.zeroshot == {}
    with iter(loader) as it:
        batch = next(it)
        counts = it.skip_counts()
    assert set(batch) == {"image", "tokens"}
    assert batch["image"].shape == (4, 16, 16, 3) and batch["tokens"].shape == (4, 8)
    for row in batch["tokens"]:
        word, number = tok.decode(row).split()
        assert word in ("photo", "picture") and 0 <= int(number) < N
    assert counts["data/skipped/empty_caption"] == 1
    assert counts["data/skipped_runtime/read_error"] == 0
    test = eval_fn()
    assert len(test["image"]) == info.num_eval and all(c.startswith("photo") for c in
                                                       test["caption"])


def test_same_seed_same_batches_and_augmentation_varies(data_dir):
    first = _take(build_data(_cfg(data_dir), batch_size=4, seed=3)[0], 9)
    _same(first, _take(build_data(_cfg(data_dir), batch_size=4, seed=3)[0], 9))
    other = _take(build_data(_cfg(data_dir), batch_size=4, seed=4)[0], 1)
    assert not np.array_equal(first[0]["image"], other[0]["image"])


RESUME = textwrap.dedent("""
    import json, sys, numpy as np
    from mmfm.data.build import build_data
    cfg, state, out = json.loads(sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3]
    loader = build_data(cfg, batch_size=4, seed=3)[0]
    with iter(loader) as it:
        it.set_state(state)
        batches = [next(it) for _ in range(3)]
    np.savez(out, **{f"{i}_{k}": v for i, b in enumerate(batches) for k, v in b.items()})
""")


def test_resume_in_a_new_process(data_dir, tmp_path):
    cfg = _cfg(data_dir, worker_count=0)
    loader = build_data(cfg, batch_size=4, seed=3)[0]
    with iter(loader) as it:
        for _ in range(7):  # crosses the epoch boundary (7 batches per epoch)
            next(it)
        state = json.loads(json.dumps(it.get_state()))
        expected = [next(it) for _ in range(3)]
    out = str(tmp_path / "resumed.npz")
    run = subprocess.run([sys.executable, "-c", RESUME, json.dumps(cfg), json.dumps(state), out],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    got = np.load(out)
    resumed = [{k: got[f"{i}_{k}"] for k in expected[0]} for i in range(3)]
    _same(expected, resumed)


def test_two_shards_read_disjoint_halves(data_dir):
    seen = []
    for index in range(2):
        loader, _, tok, _ = build_data(_cfg(data_dir, crop_scale=(1.0, 1.0)),
                                                batch_size=3, seed=0, shard_index=index,
                                                shard_count=2)
        batches = _take(loader, loader.batches_per_epoch)
        seen.append({tok.decode(r).split()[1] for b in batches for r in b["tokens"]})
        assert len(seen[-1]) == loader.batches_per_epoch * 3  # no repeats within an epoch
    assert not seen[0] & seen[1]


class _Flaky:
    """A source whose records 3 and 4 fail to read and record 5 does not decode."""

    def __len__(self):
        return 12

    def __getitem__(self, i):
        if i in (3, 4):
            raise OSError("damaged record")
        image = b"not an image" if i == 5 else np.full((4, 4, 3), i, np.uint8)
        return {"image": image, "caption": f"item {i}"}


def test_bad_records_at_read_time_are_replaced_and_counted(tmp_path):
    from mmfm.data.tokenizers import train_tokenizer
    tok = train_tokenizer([f"item {i}" for i in range(12)], tmp_path / "t.model", vocab_size=40)
    safe = sources.SafeSource(_Flaky())
    assert safe[3]["image"][0, 0, 0] == 6 and list(safe[3]["_skipped"]) == [2, 1]
    loader = pipeline.make_train_loader(safe, batch_size=4, seed=0, tokenizer=tok,
                                        context_length=6)
    with iter(loader) as it:
        for _ in range(3):  # one epoch: every index once
            assert "_skipped" not in next(it)
        assert it.skip_counts() == {"data/skipped_runtime/read_error": 2 + 1 + 0,
                                    "data/skipped_runtime/decode_error": 1 + 1 + 1}
        state = it.get_state()
    with iter(loader) as it:
        it.set_state(state)
        assert it.skip_counts()["data/skipped_runtime/decode_error"] == 3


def test_mixture_proportions_and_config(data_dir):
    a = [{"src": "a", "i": i} for i in range(10)]
    b = [{"src": "b", "i": i} for i in range(3)]
    mix = sources.MixtureSource([a, b], [0.75, 0.25], seed=0, length=100)
    picks = [mix[i] for i in range(100)]
    assert sum(p["src"] == "a" for p in picks) == 75
    assert {p["i"] for p in picks if p["src"] == "b"} == {0, 1, 2}  # the small one repeats
    cfg = _cfg(data_dir, name="mixture", dataset="",
               mixture=(dict(name="jsonl", dataset="c", weight=3), dict(name="jsonl",
                                                                          dataset="c")))
    loader, _, _, info = build_data(cfg, batch_size=4, seed=0)
    assert info.name == "mixture" and _take(loader, 1)[0]["image"].shape == (4, 16, 16, 3)
    assert loader.skip_counts() == {"data/skipped/empty_caption": 2}


def test_unknown_names_fail_listing_choices(data_dir):
    with pytest.raises(ValueError, match=r"available: \[.*'cifar10'.*'wds'"):
        build_data(_cfg(data_dir, name="laion"), batch_size=4, seed=0)
    with pytest.raises(FileNotFoundError, match=r"available in .*\['c'\]"):
        build_data(_cfg(data_dir, dataset="nope"), batch_size=4, seed=0)
    with pytest.raises(ValueError, match="unknown 'jsonl' data config keys"):
        build_data(_cfg(data_dir, colour=1), batch_size=4, seed=0)
    with pytest.raises(ValueError, match="module:function"):
        build_data(_cfg(data_dir, transform="nocolon"), batch_size=4, seed=0)


@pytest.mark.parametrize("name", ["demo", "clip_b16", "siglip_b16", "flip_l16", "mae_b16",
                                  "m3ae_b16", "mmfm_b16"])
def test_every_experiment_config_switches_dataset(data_dir, name):
    import importlib
    config = importlib.import_module(f"experiments.configs.{name}").get_config("tiny")
    config.data.name, config.data.dataset, config.data.dir = "jsonl", "c", data_dir
    config.data.context_length = 8
    loader, _, tok, info = build_data(config.data, batch_size=4, seed=0)
    assert info.name == "jsonl" and _take(loader, 1)[0]["tokens"].shape == (4, 8)


@pytest.mark.parametrize("name,labels", [("cifar10", {"label": 10}),
                                         ("cifar100", {"label": 100, "coarse_label": 20}),
                                         ("imagenet2012", {"label": 1000})])
def test_catalog_datasets_with_mock_data(tmp_path, name, labels):
    with tfds.testing.mock_data(num_examples=12):
        cfg = dict(name=name, dir=str(tmp_path), image_size=16, context_length=16)
        loader, eval_fn, tok, info = build_data(cfg, batch_size=4, seed=0)
        builder = tfds.builder(name)
        for key, n in labels.items():
            names, templates = info.zeroshot[key]
            assert len(names) == n
            assert names == tuple(x.replace("_", " ") for x in builder.info.features[key].names)
        batch = _take(loader, 1)[0]
        assert set(batch) == {"image", "tokens", *labels} and batch["image"].shape == (4, 16, 16, 3)
        test = eval_fn()
        names = info.zeroshot["label"][0]
        for caption, label in zip(test["caption"], test["label"]):
            assert caption == templates[0].format(names[label])  # canonical prompt per label


def test_random_resized_crop():
    image = np.arange(30 * 40 * 3, dtype=np.uint8).reshape(30, 40, 3)
    crop = transforms.RandomResizedCrop(8, scale=(0.25, 0.5))
    for seed in range(20):
        top, left, h, w = crop.crop_box(30, 40, np.random.default_rng(seed))
        assert 0 <= top and top + h <= 30 and 0 <= left and left + w <= 40
        assert 0.2 <= h * w / 1200 <= 0.55 and 0.7 <= w / h <= 1.4  # rounding slack only
    assert crop(image, np.random.default_rng(0)).shape == (8, 8, 3)
    np.testing.assert_array_equal(crop(image, None), transforms.Resize(8)(image))  # eval path
    with pytest.raises(ValueError, match="crop scale"):
        transforms.RandomResizedCrop(8, scale=(0.0, 1.0))


def test_tokenizer_cli(tmp_path):
    src = tmp_path / "caps.jsonl"
    src.write_text("\n".join(json.dumps({"captions": [f"a red cube {i}", "A BLUE ball"]})
                             for i in range(20)))
    out = tmp_path / "tok.model"
    run = subprocess.run([sys.executable, "-c", "from mmfm.cli import main; main()", "tokenizer",
                          "train", "--input", str(src), "--output", str(out), "--vocab-size",
                          "60"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    from mmfm.data.tokenizers import load_tokenizer
    tok = load_tokenizer(str(out))
    assert tok.decode(tok("a blue ball", 10)[0]) == "a blue ball"
    assert tok.decode(tok("A BLUE BALL", 10)[0]) == "a blue ball"  # case folded
