"""Tests for the captioned-shapes TFDS builder and caption composition (real TFDS, no mocks)."""
import json
import os
import pickle
import re

import numpy as np
import pytest
import tensorflow_datasets as tfds

from mmfm.data import synthetic
from mmfm.data.synthetic import COLORS, SHAPES, compose_caption

SMALL = dict(image_size=32, num_train=200, num_test=50, seed=0)


def _records(builder, split):
    source = builder.as_data_source(split=split)
    return [source[i] for i in range(len(source))]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("shapes")
    builder = synthetic.prepare_captioned_shapes(data_dir, **SMALL)
    return data_dir, builder, {s: _records(builder, s) for s in ("train", "test")}


def test_two_builds_are_identical(built, tmp_path):
    _, _, records = built
    other = synthetic.prepare_captioned_shapes(tmp_path, **SMALL)
    for split in ("train", "test"):
        again = _records(other, split)
        assert len(again) == len(records[split]) == SMALL[f"num_{split}"]
        for a, b in zip(records[split], again):
            assert a["caption"] == b["caption"] and a["objects"] == b["objects"]
            np.testing.assert_array_equal(a["image"], b["image"])
    paths = [synthetic.shapes_tokenizer_path(d, **SMALL) for d in (built[0], tmp_path)]
    with open(paths[0], "rb") as f0, open(paths[1], "rb") as f1:
        assert f0.read() == f1.read()


def test_objects_do_not_overlap_and_stay_in_their_boxes(built):
    _, _, records = built
    for record in records["train"] + records["test"]:
        image = record["image"]
        assert image.shape == (32, 32, 3) and image.dtype == np.uint8
        objects = json.loads(record["objects"])
        inside = np.zeros(image.shape[:2], bool)
        for obj in objects:
            x0, y0, x1, y1 = obj["bbox"]
            assert not inside[y0:y1, x0:x1].any(), "object boxes overlap"
            inside[y0:y1, x0:x1] = True
            assert image[y0:y1, x0:x1].max() > image[0, 0].max(), "object not drawn"
        # Everything outside the boxes is the plain background (the corner is never covered).
        background = image[0, 0]
        assert background[0] == background[1] == background[2] <= 40
        assert (image[~inside] == background).all()


def test_labels_and_caption_agree_with_objects(built):
    _, _, records = built
    for record in records["train"] + records["test"]:
        objects = json.loads(record["objects"])
        assert set(objects[0]) >= {"shape", "color", "size", "x", "y"}
        assert record["num_objects"] == len(objects) and 1 <= len(objects) <= 3
        assert SHAPES[record["shape"]] == objects[0]["shape"]
        assert COLORS[record["color"]] == objects[0]["color"]
        caption = record["caption"].decode()
        assert caption == compose_caption(objects)
        first = caption.split(",")[0].split(" and ")[0]
        assert objects[0]["shape"] in first and objects[0]["color"] in first


def test_split_mixes(built):
    _, _, records = built
    test_counts = np.array([r["num_objects"] for r in records["test"]])
    train_counts = np.array([r["num_objects"] for r in records["train"]])
    assert (test_counts == 1).mean() >= 0.4
    assert set(train_counts) == {1, 2, 3} and 0.35 < (train_counts == 1).mean() < 0.65


def test_sizes_are_clearly_different(built):
    _, _, records = built
    sides = {"small": [], "large": []}
    for record in records["train"]:
        for obj in json.loads(record["objects"]):
            sides[obj["size"]].append(obj["bbox"][2] - obj["bbox"][0])
    assert max(sides["small"]) * 1.4 < min(sides["large"])


def _tree_state(root):
    """{relative path: (size, mtime_ns, inode)} of every file under root."""
    out = {}
    for d, _, files in os.walk(root):
        for f in files:
            st = os.stat(os.path.join(d, f))
            out[os.path.relpath(os.path.join(d, f), root)] = (st.st_size, st.st_mtime_ns, st.st_ino)
    return out


def test_prepare_is_idempotent_and_stores_tokenizer(built):
    data_dir, builder, records = built
    path = synthetic.shapes_tokenizer_path(data_dir, **SMALL)
    assert os.path.isfile(path) and os.path.dirname(path).endswith(builder.builder_config.name)
    before = _tree_state(data_dir)
    assert any(name.endswith(".array_record-00000-of-00001") for name in before), sorted(before)
    again = synthetic.prepare_captioned_shapes(data_dir, **SMALL)
    # A second prepare generates nothing: no file is added, removed, rewritten or replaced.
    assert _tree_state(data_dir) == before
    assert _records(again, "test")[0]["caption"] == records["test"][0]["caption"]


def test_configs_get_their_own_directories(built):
    data_dir, builder, _ = built
    other = synthetic.CaptionedShapes(data_dir=os.fspath(data_dir), image_size=32, num_train=200,
                                      num_test=50, seed=1)
    assert other.data_dir != builder.data_dir
    # The config name alone is enough to read a prepared build through the TFDS catalog.
    name = f"captioned_shapes/{builder.builder_config.name}"
    source = tfds.data_source(name, data_dir=os.fspath(data_dir), split="test")
    assert len(source) == SMALL["num_test"]


@pytest.mark.parametrize("bad", [dict(image_size=8), dict(num_train=0), dict(seed=-1),
                                 dict(num_test=2.5)])
def test_bad_config_is_rejected(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        synthetic.shapes_config(**bad)


def test_unknown_prepare_option(tmp_path):
    with pytest.raises(ValueError, match="imagesize"):
        synthetic.prepare_captioned_shapes(tmp_path, imagesize=32)


# Grammar of a (possibly attribute-dropped) caption.
_PHRASE = (r"an? (?:(?:small|large) )?(?:(?:" + "|".join(COLORS) + r") )?(?:"
           + "|".join(SHAPES) + r"|shape)"
           r"(?: (?:in the center|on the (?:left|right)"
           r"|at the (?:top|bottom)(?: (?:left|right))?))?")
_CAPTION = re.compile(rf"{_PHRASE}(?:(?:, {_PHRASE})* and {_PHRASE})?")


def _random_objects(rng, n):
    return synthetic.sample_objects(rng, 64, n)


def test_compose_caption_with_drops_is_grammatical_and_reproducible():
    rng = np.random.default_rng(0)
    drops = {"color": 0.5, "size": 0.5, "position": 0.5, "shape": 0.5}
    seen_dropped_shape = False
    for i in range(300):
        objects = _random_objects(rng, 1 + i % 3)
        full = compose_caption(objects)
        assert _CAPTION.fullmatch(full), full
        dropped = compose_caption(objects, np.random.default_rng(i), drops)
        assert _CAPTION.fullmatch(dropped), dropped
        assert dropped == compose_caption(objects, np.random.default_rng(i), drops)
        assert not re.search(r"\ba [aeiou]|\ban [^aeiou]", dropped), dropped
        seen_dropped_shape |= "shape" in dropped
    assert seen_dropped_shape


def test_compose_caption_edge_cases():
    obj = {"shape": "star", "color": "orange", "size": "small", "x": 0.1, "y": 0.9}
    everything = {a: 1.0 for a in synthetic.ATTRIBUTES}
    assert compose_caption([obj], np.random.default_rng(0), everything) == "a shape"
    only_color = {"shape": 1.0, "size": 1.0, "position": 1.0}
    assert compose_caption([obj], np.random.default_rng(0), only_color) == "an orange shape"
    assert compose_caption([obj]) == "a small orange star at the bottom left"
    assert compose_caption([obj] * 3).count(" and ") == 1
    with pytest.raises(ValueError, match="colour"):
        compose_caption([obj], np.random.default_rng(0), {"colour": 0.5})
    with pytest.raises(ValueError, match="rng"):
        compose_caption([obj], None, {"color": 0.5})
    with pytest.raises(ValueError, match="at least one"):
        compose_caption([])


def test_caption_dropper_is_picklable_and_deterministic(built):
    _, _, records = built
    dropper = pickle.loads(pickle.dumps(synthetic.CaptionDropper()))
    record = records["train"][0]
    first = dropper(record, np.random.default_rng(3))
    assert first == dropper(record, np.random.default_rng(3))
    assert _CAPTION.fullmatch(first)


def test_caption_dropper_leaves_the_whole_share_of_captions_whole():
    rng = np.random.default_rng(1)
    records = [{"objects": json.dumps(_random_objects(rng, 1 + i % 3))} for i in range(2000)]
    drop_all = {a: 1.0 for a in synthetic.ATTRIBUTES}  # a dropped caption never equals the full one
    for whole_prob in (0.0, 0.3, 1.0):
        dropper = synthetic.CaptionDropper(drop_all, whole_prob)
        whole = [dropper(r, np.random.default_rng(i)) == compose_caption(json.loads(r["objects"]))
                 for i, r in enumerate(records)]
        # Binomial(2000, 0.3): 5 standard deviations is +-0.051.
        assert abs(np.mean(whole) - whole_prob) < 0.05, (whole_prob, np.mean(whole))
    with pytest.raises(ValueError, match="caption_whole"):
        synthetic.CaptionDropper(drop_all, 1.5)


def test_zeroshot_prompts_match_caption_grammar():
    for names, templates in synthetic.ZEROSHOT.values():
        for name in names:
            for template in templates:
                assert _CAPTION.fullmatch(template.format(name)), template.format(name)
