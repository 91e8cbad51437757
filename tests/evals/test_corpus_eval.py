"""Retrieval and zero-shot evaluators on a corpus prepared with `mmfm data prepare`, by name."""
import json
import logging
import os

import ml_collections
import numpy as np
import pytest
from PIL import Image

from mmfm.data.builders import corpus
from mmfm.evals import datasets as ds
from mmfm.evals import standalone
from mmfm.evals.evaluators import evaluator_configs

NAMES = ("red", "green", "blue")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A 12-record jsonl corpus (4 images per colour, two captions each) prepared in a data dir."""
    root = tmp_path_factory.mktemp("corpus")
    os.makedirs(root / "images")
    lines = []
    for i in range(12):
        colour = NAMES[i % 3]
        rgb = {"red": (220, 20, 20), "green": (20, 220, 20), "blue": (20, 20, 220)}[colour]
        Image.fromarray(np.full((20, 20, 3), rgb, np.uint8)).save(root / "images" / f"{i}.png")
        lines.append(json.dumps({"image": f"images/{i}.png",
                                 "captions": [f"a {colour} square", f"picture {i}"]}))
    (root / "pairs.jsonl").write_text("\n".join(lines) + "\n")
    data_dir = str(root / "tfds")
    corpus.prepare("jsonl", src=str(root / "pairs.jsonl"), name="mine", data_dir=data_dir,
                   test_fraction=0.5, vocab_size=64)
    return data_dir


def test_loaders_read_a_prepared_corpus(prepared):
    r = ds.load_retrieval("jsonl/mine", "test", data_dir=prepared)
    n = len(r.images)
    assert 1 <= n < 12 and len(r.captions) == 2 * n
    assert r.text_to_image.tolist() == [j for j in range(n) for _ in (0, 1)]
    c = ds.load_classification("jsonl/mine", "train", data_dir=prepared)
    assert set(c.classnames) <= {f"a {x} square" for x in NAMES} and c.templates == ("{}",)
    assert [c.classnames[k] for k in c.labels] == [
        c.images.source[int(i)]["caption"] for i in c.images.indices]
    with pytest.raises(ValueError, match="no split 'val'"):
        ds.load_retrieval("jsonl/mine", "val", data_dir=prepared)
    with pytest.raises(FileNotFoundError, match="prepared jsonl dataset 'other' not found"):
        ds.load_retrieval("jsonl/other", "test", data_dir=prepared)


def test_config_accepts_corpus_names_for_retrieval_and_zeroshot_only():
    cfgs = evaluator_configs({"evaluators": {
        "ret": dict(type="retrieval", dataset="jsonl/mine"),
        "zs": dict(type="zeroshot", dataset="wds/cc3m")}})
    assert [c["dataset"] for c in cfgs] == ["jsonl/mine", "wds/cc3m"]
    with pytest.raises(ValueError, match=r"evals.evaluators.p.dataset: 'jsonl/mine' is not a "
                                         r"linear_probe dataset"):
        evaluator_configs({"evaluators": {"p": dict(type="linear_probe", dataset="jsonl/mine")}})
    with pytest.raises(ValueError, match="'jsonl/NAME' / 'wds/NAME'"):
        evaluator_configs({"evaluators": {"r": dict(type="retrieval", dataset="mine")}})


def test_eval_checkpoint_on_a_prepared_corpus_warns_about_its_size(tiny_run, prepared, tmp_path,
                                                                    caplog):
    workdir, _, _ = tiny_run
    config = ml_collections.ConfigDict({
        "data": {"dir": prepared},
        "evals": {"batch_size": 8, "evaluators": {
            "mine_ret": dict(type="retrieval", dataset="jsonl/mine", ks=(1, 5)),
            "mine_zs": dict(type="zeroshot", dataset="jsonl/mine", topk=(1,))}}})
    with caplog.at_level(logging.WARNING, logger="mmfm"):
        results = standalone.evaluate_checkpoint(config, workdir, out=str(tmp_path / "eval"))
    assert set(results) == {"mine_ret/i2t/R@1", "mine_ret/i2t/R@5", "mine_ret/t2i/R@1",
                            "mine_ret/t2i/R@5", "mine_zs/top1"}
    assert all(0.0 <= v <= 1.0 for v in results.values())
    n = len(ds.load_retrieval("jsonl/mine", "test", data_dir=prepared).images)
    warned = [r.getMessage() for r in caplog.records if "are noise" in r.getMessage()]
    assert any(f"mine_ret: jsonl/mine split 'test': only {n} example(s)" in w for w in warned)
    assert any(f"mine_zs: jsonl/mine split 'test': only {n} example(s)" in w for w in warned)
