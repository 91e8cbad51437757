"""Preparing webdataset and jsonl corpora full of bad inputs: exact counts, exact contents."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

import bad_corpus as bc
from mmfm.data.builders import common, corpus, wds

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _tree(path):
    return sorted(os.path.relpath(os.path.join(d, f), path)
                  for d, _, files in os.walk(path) for f in files)


def _read_all(data_dir, fmt, name):
    builder = tfds.builder_from_directory(common.dataset_dir(data_dir, fmt, name))
    out = {}
    for split in builder.info.splits:
        source = builder.as_data_source(split=split)
        for i in range(len(source)):
            r = source[i]
            out[r["key"].decode()] = (split, r["image"], [c.decode() for c in r["captions"]])
    return out


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """Both corpora prepared once; the sandbox root is checked for stray files."""
    root = str(tmp_path_factory.mktemp("corpora"))
    outside = os.path.join(root, "outside", "evil.jpg")
    wds_src = bc.write_wds(os.path.join(root, "wds_src"), outside)
    jsonl_src = bc.write_jsonl(os.path.join(root, "jsonl_src"), "/etc/hostname")
    before = _tree(root)
    data_dir = os.path.join(root, "tfds")
    summaries = {
        "wds": corpus.prepare("wds", src=wds_src, name="bad", data_dir=data_dir,
                              test_fraction=0.3, vocab_size=64),
        "jsonl": corpus.prepare("jsonl", src=jsonl_src, name="bad", data_dir=data_dir,
                                test_fraction=0.3, vocab_size=64),
    }
    after = _tree(root)
    return dict(root=root, data_dir=data_dir, summaries=summaries, before=before, after=after,
                outside=outside, wds_src=wds_src)


@pytest.mark.parametrize("fmt,expected", [("wds", bc.EXPECTED_WDS_SKIPS),
                                          ("jsonl", bc.EXPECTED_JSONL_SKIPS)])
def test_counts_by_reason(prepared, fmt, expected):
    total = prepared["summaries"][fmt]["total"]
    assert total["skipped"] == expected
    assert total["converted"] == bc.EXPECTED_CONVERTED
    assert total["written"] == bc.NUM_VALID + len(bc.EXPECTED_CONVERTED)
    splits = prepared["summaries"][fmt]["splits"]
    assert splits["train"]["written"] + splits["test"]["written"] == total["written"]


def test_nothing_written_outside_data_dir(prepared):
    new = sorted(set(prepared["after"]) - set(prepared["before"]))
    assert new and all(p.startswith("tfds" + os.sep) for p in new), new
    assert not os.path.exists(prepared["outside"])
    assert not os.path.exists(os.path.join(os.path.dirname(prepared["root"]), "escaped.jpg"))


@pytest.mark.parametrize("fmt", ["wds", "jsonl"])
def test_read_back_exactly_the_valid_records(prepared, fmt):
    records = _read_all(prepared["data_dir"], fmt, "bad")
    valid = {key: img for key, img, _ in bc.valid_records()}
    conv = bc.convertible_images()
    captions = sorted(c for _, _, cs in records.values() for c in cs)
    want = sorted([f"valid photo number {i}" for i in range(bc.NUM_VALID)]
                  + [f"a {n} image" for n in conv]
                  + (["second caption"] * len(conv) if fmt == "jsonl" else []))
    assert captions == want  # the empty second caption of jsonl records was dropped
    by_caption = {cs[0]: img for _, img, cs in records.values()}
    for key, data in valid.items():  # valid RGB JPEGs are stored untouched: same decode
        expected = np.asarray(__import__("PIL.Image").Image.open(__import__("io").BytesIO(data)))
        np.testing.assert_array_equal(by_caption[f"valid photo number {key[2:]}"], expected)
    for name, (_, expected, _) in conv.items():
        image = by_caption[f"a {name} image"]
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[-1] == 3
        if expected is not None:
            np.testing.assert_array_equal(image, expected)
        else:  # CMYK (0,255,255,0) is red; JPEG re-encoding is lossy
            assert np.abs(image.astype(int) - (255, 0, 0)).max() <= 8


def test_train_test_split_follows_key_hash(prepared):
    for key, (split, _, _) in _read_all(prepared["data_dir"], "wds", "bad").items():
        assert (split == "test") == common.in_test_split(key, 0.3)


def test_prepare_is_idempotent_and_cli_prints_summary(prepared):
    cmd = [sys.executable, "-c", "from mmfm.cli import main; main()", "data", "prepare",
           "--format", "wds", "--src", prepared["wds_src"], "--name", "bad",
           "--data-dir", prepared["data_dir"]]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "written 11" in out.stdout and "truncated_shard" in out.stdout
    assert "--config.data.dataset=bad" in out.stdout


def test_brace_expansion():
    assert wds.expand_braces("s{008..011}.tar") == ["s008.tar", "s009.tar", "s010.tar",
                                                    "s011.tar"]
    assert wds.expand_braces("{a,b}/{1..2}.tar::x.tar") == ["a/1.tar", "a/2.tar", "b/1.tar",
                                                           "b/2.tar", "x.tar"]
    with pytest.raises(ValueError, match="unbalanced"):
        wds.expand_braces("s{1..2.tar")


def test_bad_arguments_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="shards"):
        corpus.prepare("wds", src=str(tmp_path / "{0..1}.tar"), name="x", data_dir=str(tmp_path))
    with pytest.raises(ValueError, match="dataset name"):
        corpus.prepare("wds", src="x", name="Bad-Name", data_dir=str(tmp_path))
    with pytest.raises(ValueError, match="unknown prepare options"):
        corpus.prepare("jsonl", src="x", name="x", data_dir=str(tmp_path), colour=1)
    with pytest.raises(ValueError, match="unknown corpus format"):
        corpus.prepare("csv", src="x", name="x", data_dir=str(tmp_path))
