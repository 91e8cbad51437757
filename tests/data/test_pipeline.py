"""Tests for the grain input pipeline, transforms and the config-level `build_data` entry."""
import io
import json
import pickle

import ml_collections
import numpy as np
import pytest
from PIL import Image

from mmfm.data import pipeline, sources, synthetic, transforms
from mmfm.data.build import build_data
from mmfm.data.tokenizers import train_tokenizer

N = 40  # examples in the in-memory source


def _source(n=N):
    """A plain list of records: the pipeline needs only `image` and `caption` (+ int labels)."""
    return [{"image": np.full((6, 10, 3), i, np.uint8), "caption": f"item {i} red",
             "id": i, "note": "ignored"} for i in range(n)]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    texts = [f"item {i} red" for i in range(N)]
    return train_tokenizer(texts, tmp_path_factory.mktemp("tok") / "tok.model", vocab_size=64)


def _loader(tok, **kw):
    args = dict(batch_size=4, seed=0, tokenizer=tok, context_length=8,
                transform=transforms.make_image_transform(8))
    args.update(kw)
    return pipeline.make_train_loader(_source(), **args)


def _take(loader, n):
    with iter(loader) as it:
        return [next(it) for _ in range(n)]


def _assert_same(batches_a, batches_b):
    assert len(batches_a) == len(batches_b)
    for a, b in zip(batches_a, batches_b):
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])


def test_batch_format(tok):
    (batch,) = _take(_loader(tok), 1)
    assert set(batch) == {"image", "tokens", "id"}
    assert batch["image"].dtype == np.uint8 and batch["image"].shape == (4, 8, 8, 3)
    assert batch["tokens"].dtype == np.int32 and batch["tokens"].shape == (4, 8)
    assert batch["id"].dtype == np.int32 and (batch["tokens"][:, 0] == tok.bos_id).all()
    for ids, row in zip(batch["id"], batch["tokens"]):
        assert tok.decode(row) == f"item {ids} red"
        assert (batch["image"][batch["id"] == ids] == ids).all()  # image stayed with its caption


def test_same_seed_same_batches_and_epochs_reshuffle(tok):
    first = _take(_loader(tok), 12)  # 10 batches per epoch: crosses into the second epoch
    _assert_same(first, _take(_loader(tok), 12))
    other = _take(_loader(tok, seed=1), 1)
    assert not np.array_equal(first[0]["id"], other[0]["id"])
    epoch0 = np.concatenate([b["id"] for b in first[:10]])
    assert sorted(epoch0) == list(range(N))
    assert not np.array_equal(epoch0[:8], np.concatenate([b["id"] for b in first[10:12]]))


@pytest.mark.parametrize("steps", [3, 11])
def test_state_round_trip_gives_the_next_batch(tok, steps):
    loader = _loader(tok)
    with iter(loader) as it:
        for _ in range(steps):
            next(it)
        state = json.loads(json.dumps(it.get_state()))
        expected = [next(it), next(it)]
    with iter(_loader(tok)) as resumed:
        resumed.set_state(state)
        _assert_same(expected, [next(resumed), next(resumed)])


def test_state_from_other_settings_is_rejected(tok):
    with iter(_loader(tok)) as it:
        next(it)
        state = it.get_state()
    with iter(_loader(tok, seed=5)) as other, pytest.raises(ValueError, match="seed"):
        other.set_state(state)
    with iter(_loader(tok, batch_size=2)) as other:
        other.set_state(state, strict=False)  # e.g. resuming on another host count
        assert other.get_state()["next_batch"] == 1
    with iter(_loader(tok)) as other, pytest.raises(ValueError, match="not a TrainIterator"):
        other.set_state({"next_index": 3})
    assert state["next_batch"] == 1 and state["loader"]["seed"] == 0


def test_shards_are_disjoint_and_cover_the_data(tok):
    seen = []
    for index in range(2):
        loader = _loader(tok, shard_index=index, shard_count=2, num_epochs=1)
        assert loader.batches_per_epoch == 5
        with iter(loader) as it:
            seen.append(set(np.concatenate([b["id"] for b in it]).tolist()))
    assert not seen[0] & seen[1] and seen[0] | seen[1] == set(range(N))


def test_caption_fn_rng_is_per_example_and_reproducible(tok):
    def ids_and_tokens(loader):
        with iter(loader) as it:
            batches = [next(it) for _ in range(20)]
        return np.concatenate([b["id"] for b in batches]), np.concatenate(
            [b["tokens"] for b in batches])

    loader = _loader(tok, caption_fn=_RandomSuffix())
    ids, tokens = ids_and_tokens(loader)
    _, again = ids_and_tokens(_loader(tok, caption_fn=_RandomSuffix()))
    np.testing.assert_array_equal(tokens, again)
    # Two epochs: the same example gets independent draws (rng keyed by global example index).
    first, second = tokens[:N][np.argsort(ids[:N])], tokens[N:][np.argsort(ids[N:])]
    assert (first != second).any(axis=1).sum() > N // 4


class _RandomSuffix:
    """Picklable caption_fn: appends "red" 0-3 times (words the test tokenizer knows)."""

    def __call__(self, record, rng):
        return record["caption"] + " red" * int(rng.integers(0, 4))


@pytest.mark.slow  # spawns worker processes (a few seconds)
def test_worker_processes_give_the_same_batches(tok):
    single = _take(_loader(tok, caption_fn=_RandomSuffix()), 4)
    with iter(_loader(tok, caption_fn=_RandomSuffix(), worker_count=2)) as it:
        batches = [next(it) for _ in range(3)]
        state = json.loads(json.dumps(it.get_state()))
    _assert_same(single[:3], batches)
    # The state is a batch count, so it resumes with any worker count.
    with iter(_loader(tok, caption_fn=_RandomSuffix())) as resumed:
        resumed.set_state(state)
        _assert_same(single[3:], [next(resumed)])


def test_loader_argument_errors(tok):
    with pytest.raises(ValueError, match="shard_index"):
        _loader(tok, shard_index=2, shard_count=2)
    with pytest.raises(ValueError, match="fewer than batch_size"):
        _loader(tok, batch_size=64)
    with pytest.raises(KeyError, match="no text field"):
        _take(pipeline.make_train_loader([{"image": np.zeros((4, 4, 3), np.uint8)}] * 4,
                                         batch_size=2, seed=0, tokenizer=tok, context_length=8),
              1)


def test_transforms():
    gray = Image.fromarray(np.arange(48, dtype=np.uint8).reshape(6, 8))
    buf = io.BytesIO()
    gray.save(buf, format="PNG")
    decoded = transforms.Decode()(buf.getvalue())
    assert decoded.shape == (6, 8, 3) and decoded.dtype == np.uint8
    resized = transforms.Resize(4)(decoded)
    assert resized.shape == (4, 4, 3) and resized.dtype == np.uint8
    flip = pickle.loads(pickle.dumps(transforms.make_image_transform(6, flip=True)))
    image = np.random.default_rng(0).integers(0, 255, (6, 6, 3), dtype=np.uint8)
    np.testing.assert_array_equal(flip(image, None), image)  # no rng: deterministic no-op
    outs = {flip(image, np.random.default_rng(s)).tobytes() for s in range(10)}
    assert outs == {image.tobytes(), image[:, ::-1].tobytes()}
    with pytest.raises(ValueError, match="cannot decode"):
        transforms.Decode()(b"not an image")
    with pytest.raises(ValueError, match="uint8"):
        transforms.Decode()(np.zeros((4, 4, 3), np.float32))


def _data_cfg(data_dir, **kw):
    cfg = ml_collections.ConfigDict(dict(
        name="captioned_shapes", dir=str(data_dir), image_size=32, num_train=200, num_test=50,
        seed=0, context_length=24, caption_drop=dict(synthetic.DEFAULT_CAPTION_DROP),
        worker_count=0))
    cfg.update(kw)
    return cfg


def test_build_data_captioned_shapes(tmp_path):
    loader, eval_fn, tok, info = build_data(_data_cfg(tmp_path), batch_size=8, seed=0)
    assert info.image_size == 32 and info.num_eval == 50 and info.vocab_size == tok.vocab_size
    assert info.zeroshot["shape"][0] == synthetic.SHAPES
    (batch,) = _take(loader, 1)
    assert batch["image"].shape == (8, 32, 32, 3) and batch["tokens"].shape == (8, 24)
    assert {"shape", "color", "num_objects"} <= set(batch)
    arrays = eval_fn()
    assert arrays["image"].shape == (50, 32, 32, 3) and arrays["tokens"].shape == (50, 24)
    assert len(arrays["caption"]) == 50 and arrays["shape"].dtype == np.int32
    for caption, shape, color in zip(arrays["caption"], arrays["shape"], arrays["color"]):
        assert synthetic.SHAPES[shape] in caption and synthetic.COLORS[color] in caption
    assert eval_fn(max_examples=5)["tokens"].shape == (5, 24)
    train = eval_fn(split="train", max_examples=7)
    assert train["image"].shape == (7, 32, 32, 3) and len(train["caption"]) == 7
    with pytest.raises(ValueError, match="validation"):
        eval_fn(split="validation")


class _CountingSource(list):
    """A list source that counts reads per index."""

    def __init__(self, records):
        super().__init__(records)
        self.reads = np.zeros(len(records), int)

    def __getitem__(self, index):
        self.reads[index] += 1
        return super().__getitem__(index)


def test_cached_source_reads_each_record_once_and_gives_the_same_batches(tok):
    counting = _CountingSource(_source())
    cached = sources.CachedSource(counting)
    args = dict(batch_size=4, seed=0, tokenizer=tok, context_length=8,
                transform=transforms.make_image_transform(8))
    epochs = 3 * N // 4
    _assert_same(_take(pipeline.make_train_loader(cached, **args), epochs),
                 _take(pipeline.make_train_loader(_source(), **args), epochs))
    assert counting.reads.tolist() == [1] * N  # three epochs, one read per record
    assert len(pickle.loads(pickle.dumps(cached))._records) == 0  # workers start empty


def test_build_data_in_memory_gives_the_same_batches(tmp_path):
    loaders = [build_data(_data_cfg(tmp_path, in_memory=m), batch_size=8, seed=0)[0]
               for m in (False, True)]
    _assert_same(_take(loaders[0], 3), _take(loaders[1], 3))


def test_build_data_errors(tmp_path):
    with pytest.raises(ValueError, match="available: .*captioned_shapes"):
        build_data(_data_cfg(tmp_path, name="imagenet"), batch_size=8, seed=0)
    cfg = _data_cfg(tmp_path).to_dict()
    cfg["img_size"] = 32
    with pytest.raises(ValueError, match="img_size"):
        build_data(cfg, batch_size=8, seed=0)
    no_drops = {a: 0.0 for a in synthetic.ATTRIBUTES}
    with pytest.raises(ValueError, match="caption_whole"):
        build_data(_data_cfg(tmp_path, caption_drop=no_drops, caption_whole=0.5),
                            batch_size=8, seed=0)
