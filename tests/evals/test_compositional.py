"""Compositional hard negatives (mmfm.evals.compositional): every negative is one edit, and false."""
import collections
import itertools

import numpy as np
import pytest

from mmfm.data.synthetic import COLORS, SHAPES, SIZES, compose_caption, sample_objects
from mmfm.evals.compositional import (EDIT_TYPES, check_negative, compositional_scores, describe,
                                      make_negative, negatives_for)

SWAPS = ("swap_color", "swap_size", "swap_position")


def obj(size, color, shape, x, y):
    return {"shape": shape, "color": color, "size": size, "x": x, "y": y, "bbox": [0, 0, 1, 1]}


def no_swap_changes(objects, edit):
    """Brute force: no pair swap of this attribute changes the description."""
    keys = ("x", "y") if edit == "swap_position" else (edit.split("_")[1],)
    for i, j in itertools.combinations(range(len(objects)), 2):
        swapped = [dict(o) for o in objects]
        for key in keys:
            swapped[i][key], swapped[j][key] = objects[j][key], objects[i][key]
        if describe(swapped) != describe(objects):
            return False
    return True


def test_10000_draws_are_single_edits_and_false():
    rng = np.random.default_rng(0)
    produced = collections.Counter()
    for _ in range(10_000):
        objects = sample_objects(rng, 64, int(rng.integers(1, 4)))
        truth = compose_caption(objects)
        for edit in EDIT_TYPES:
            negative = make_negative(objects, edit, rng)
            if negative is None:  # only where the edit cannot apply
                assert edit in SWAPS + ("drop_object",)
                assert len(objects) == 1 or (edit in SWAPS and no_swap_changes(objects, edit))
                continue
            check_negative(objects, negative, edit)
            assert compose_caption(negative) != truth
            assert describe(negative) != describe(objects)  # never true for its image
            produced[edit] += 1
    print("negatives per edit type over 10,000 draws:", dict(produced))
    assert set(produced) == set(EDIT_TYPES)
    assert all(count > 500 for count in produced.values()), produced


def test_describe_reads_the_caption():
    objects = [obj("small", "red", "circle", 0.1, 0.1), obj("large", "orange", "hexagon", 0.5, 0.9)]
    assert compose_caption(objects) == ("a small red circle at the top left and "
                                        "a large orange hexagon at the bottom")
    assert describe(objects) == collections.Counter(
        {("small", "red", "circle", "at the top left"): 1,
         ("large", "orange", "hexagon", "at the bottom"): 1})
    # Order does not matter; the same object twice counts twice.
    assert describe(objects[::-1]) == describe(objects)
    assert describe([objects[0]] * 2)[("small", "red", "circle", "at the top left")] == 2


def test_replace_edits_change_exactly_one_word():
    rng = np.random.default_rng(1)
    for _ in range(300):
        objects = sample_objects(rng, 64, int(rng.integers(1, 4)))
        truth = compose_caption(objects).split()
        for edit in ("replace_color", "replace_shape", "replace_size"):
            words = compose_caption(make_negative(objects, edit, rng)).split()
            assert len(words) == len(truth)
            diff = [(a, b) for a, b in zip(truth, words) if a != b]
            assert len(diff) == 1
            vocab = {"replace_color": COLORS, "replace_shape": SHAPES, "replace_size": SIZES}[edit]
            assert diff[0][0] in vocab and diff[0][1] in vocab


def test_swaps_and_drop_read_as_intended():
    a, b = obj("small", "red", "circle", 0.1, 0.1), obj("large", "blue", "square", 0.9, 0.9)
    rng = np.random.default_rng(0)
    assert compose_caption(make_negative([a, b], "swap_color", rng)) == (
        "a small blue circle at the top left and a large red square at the bottom right")
    assert compose_caption(make_negative([a, b], "swap_size", rng)) == (
        "a large red circle at the top left and a small blue square at the bottom right")
    swapped = make_negative([a, b], "swap_position", rng)
    assert compose_caption(swapped) == (
        "a small red circle at the bottom right and a large blue square at the top left")
    assert [o["bbox"] for o in swapped] == [a["bbox"], b["bbox"]]  # boxes stay as drawn
    assert compose_caption(make_negative([a, b], "drop_object", rng)) in (
        compose_caption([a]), compose_caption([b]))
    assert a == obj("small", "red", "circle", 0.1, 0.1)  # the input is not modified


def test_swap_must_change_the_description():
    # Red and blue small circles at different places: swapping colours states other tuples.
    red, blue = obj("small", "red", "circle", 0.1, 0.1), obj("small", "blue", "circle", 0.9, 0.9)
    negative = make_negative([red, blue], "swap_color", np.random.default_rng(0))
    check_negative([red, blue], negative, "swap_color")
    # Same size, shape and place: the swap describes the same image, so there is no negative.
    blue_there = obj("small", "blue", "circle", 0.15, 0.2)
    assert make_negative([red, blue_there], "swap_color", np.random.default_rng(0)) is None
    assert make_negative([red, blue_there], "swap_position", np.random.default_rng(0)) is None
    # A third object with a valid pair: only that pair is used.
    big = obj("large", "green", "star", 0.5, 0.5)
    for seed in range(20):
        neg = make_negative([red, blue_there, big], "swap_color", np.random.default_rng(seed))
        check_negative([red, blue_there, big], neg, "swap_color")
    # One object: nothing to swap or drop.
    for edit in SWAPS + ("drop_object",):
        assert make_negative([red], edit, np.random.default_rng(0)) is None


def test_add_object_is_new_and_appended():
    rng = np.random.default_rng(2)
    phrases = set()
    for _ in range(300):
        objects = sample_objects(rng, 64, int(rng.integers(1, 4)))
        negative = make_negative(objects, "add_object", rng)
        new = negative[-1]
        assert negative[:-1] == objects
        assert (new["size"], new["color"], new["shape"]) not in {
            (o["size"], o["color"], o["shape"]) for o in objects}
        assert compose_caption(negative) == compose_caption(objects + [new])
        phrases.add(compose_caption([new]).split(" ", 4)[4])
    assert len(phrases) == 9  # every grid cell is used


def test_check_negative_rejects_wrong_negatives():
    a, b = obj("small", "red", "circle", 0.1, 0.1), obj("large", "blue", "square", 0.9, 0.9)
    objects = [a, b]
    for edit in EDIT_TYPES:  # identity
        with pytest.raises(ValueError, match="true"):
            check_negative(objects, [dict(a), dict(b)], edit)
    with pytest.raises(ValueError, match="true"):  # reordering is no edit either
        check_negative(objects, [b, a], "swap_position")
    two = [dict(a, color="green", shape="star"), b]  # two attributes of one object
    for edit in EDIT_TYPES:
        with pytest.raises(ValueError):
            check_negative(objects, two, edit)
    both = [dict(a, color="green"), dict(b, color="green")]  # two objects recoloured
    with pytest.raises(ValueError):
        check_negative(objects, both, "replace_color")
    recolour = [dict(a, color="green"), b]
    check_negative(objects, recolour, "replace_color")
    for edit in set(EDIT_TYPES) - {"replace_color"}:  # the wrong kind of edit
        with pytest.raises(ValueError):
            check_negative(objects, recolour, edit)
    swap = make_negative(objects, "swap_color", np.random.default_rng(0))
    with pytest.raises(ValueError):
        check_negative(objects, swap, "replace_color")
    with pytest.raises(ValueError):
        check_negative(objects, swap, "swap_size")
    with pytest.raises(ValueError):
        check_negative(objects, [a], "add_object")
    with pytest.raises(ValueError):
        check_negative(objects, objects + [dict(a, x=0.9)], "add_object")  # a copy, not new
    with pytest.raises(ValueError):
        check_negative([a], [], "drop_object")
    with pytest.raises(ValueError, match="vocabulary"):
        check_negative(objects, [dict(a, color="magenta"), b], "replace_color")
    with pytest.raises(ValueError, match="unknown edit"):
        check_negative(objects, recolour, "replace_colour")
    with pytest.raises(ValueError, match="unknown edit"):
        make_negative(objects, "negate", np.random.default_rng(0))


def test_negatives_for():
    one = [obj("small", "red", "circle", 0.1, 0.1)]
    rng = np.random.default_rng(0)
    got = negatives_for(one, rng)
    assert set(got) == {"replace_color", "replace_shape", "replace_size", "add_object"}
    assert all(isinstance(c, str) and c != compose_caption(one) for c in got.values())
    objects = sample_objects(rng, 64, 3)
    assert set(negatives_for(objects, rng, edits=("swap_size", "drop_object"))) <= {
        "swap_size", "drop_object"}
    assert negatives_for(objects, np.random.default_rng(5)) == negatives_for(
        objects, np.random.default_rng(5))


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_scores_match_numpy():
    rng = np.random.default_rng(3)
    n, d = 300, 16
    img, pos, neg = (_unit(rng.normal(size=(n, d))) for _ in range(3))
    edits = [EDIT_TYPES[i] for i in rng.integers(len(EDIT_TYPES), size=n)]
    got = compositional_scores(img, pos, neg, edits)
    correct = np.einsum("nd,nd->n", img, pos) > np.einsum("nd,nd->n", img, neg)
    accs = []
    for e in EDIT_TYPES:
        sel = np.array(edits) == e
        assert got["edits"][e]["count"] == sel.sum()
        assert got["edits"][e]["accuracy"] == pytest.approx(correct[sel].mean())
        accs.append(correct[sel].mean())
    assert list(got["edits"]) == list(EDIT_TYPES)
    assert got["mean"] == pytest.approx(np.mean(accs))
    assert got["overall"] == pytest.approx(correct.mean())
    assert got["count"] == n


def test_scores_known_case():
    e = np.eye(3)
    img = e[[0, 0, 0, 1]]
    pos = e[[0, 0, 0, 1]]
    neg = e[[1, 0, 2, 1]]  # right, tie (a miss), right, tie
    got = compositional_scores(img, pos, neg, ["replace_color", "replace_color", "add_object",
                                               "swap_size"])
    assert got["edits"] == {"replace_color": {"accuracy": 0.5, "count": 2},
                            "swap_size": {"accuracy": 0.0, "count": 1},
                            "add_object": {"accuracy": 1.0, "count": 1}}
    assert got["mean"] == pytest.approx(0.5)  # macro: (0.5 + 0 + 1) / 3
    assert got["overall"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="edit labels"):
        compositional_scores(img, pos, neg, ["add_object"])
    with pytest.raises(ValueError, match="shape"):
        compositional_scores(img, pos[:2], neg, ["add_object"] * 4)
