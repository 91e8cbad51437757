"""`data prepare` without silent surprises: a reused name must be the same source, tiny corpora
get a test record (or say they have none), and every skipped record is named."""
import collections
import json
import os
import subprocess
import sys

import pytest
import tensorflow_datasets as tfds

import bad_corpus as bc
from mmfm.data.builders import common, corpus

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _write_corpus(root, n, *, broken=0, caption="photo"):
    """n valid records (+ `broken` lines naming missing files) in root/pairs.jsonl."""
    os.makedirs(os.path.join(root, "images"), exist_ok=True)
    lines = []
    for i in range(n):
        with open(os.path.join(root, "images", f"{i}.jpg"), "wb") as f:
            f.write(bc._jpeg(i, size=(16, 16)))
        lines.append({"image": f"images/{i}.jpg", "caption": f"{caption} {i}"})
    lines += [{"image": f"images/gone{i}.jpg", "caption": "gone"} for i in range(broken)]
    src = os.path.join(root, "pairs.jsonl")
    with open(src, "w") as f:
        f.write("".join(json.dumps(line) + "\n" for line in lines))
    return src


def _split_sizes(data_dir, name):
    builder = tfds.builder_from_directory(common.dataset_dir(data_dir, "jsonl", name))
    return {s: len(builder.as_data_source(split=s)) for s in builder.info.splits}


def _cli(*args):
    cmd = [sys.executable, "-c", "from mmfm.cli import main; main()", "data", "prepare", *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)


def test_same_name_other_source_is_refused_unless_overwrite(tmp_path):
    data_dir = str(tmp_path / "tfds")
    first = _write_corpus(str(tmp_path / "a"), 12)
    second = _write_corpus(str(tmp_path / "b"), 20, caption="other")
    summary = corpus.prepare("jsonl", src=first, name="mine", data_dir=data_dir,
                             test_fraction=0.2, vocab_size=64)
    assert summary["total"]["written"] == 12
    again = corpus.prepare("jsonl", src=first, name="mine", data_dir=data_dir,
                           test_fraction=0.2, vocab_size=64)
    assert again["reused"] and again["total"]["written"] == 12
    with pytest.raises(ValueError, match="prepared from another source.*--overwrite"):
        corpus.prepare("jsonl", src=second, name="mine", data_dir=data_dir, test_fraction=0.2)
    # The same path with other content is another source too.
    with open(first, "a") as f:
        f.write(json.dumps({"image": "images/0.jpg", "caption": "one more"}) + "\n")
    with pytest.raises(ValueError, match="another source"):
        corpus.prepare("jsonl", src=first, name="mine", data_dir=data_dir, test_fraction=0.2)

    args = ["--format", "jsonl", "--src", second, "--name", "mine", "--data-dir", data_dir,
            "--test-fraction", "0.2", "--vocab-size", "64"]
    refused = _cli(*args)
    assert refused.returncode == 2
    err = refused.stderr.strip().splitlines()
    assert len(err) == 1 and "--overwrite" in err[0] and second in err[0], refused.stderr
    rebuilt = _cli(*args, "--overwrite")
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert "written 20" in rebuilt.stdout
    assert sum(_split_sizes(data_dir, "mine").values()) == 20
    source = tfds.builder_from_directory(common.dataset_dir(data_dir, "jsonl", "mine"))
    caption = source.as_data_source(split="train")[0]["caption"].decode()
    assert caption.startswith("other ")


def test_reuse_with_other_options_says_so(tmp_path):
    data_dir = str(tmp_path / "tfds")
    src = _write_corpus(str(tmp_path / "a"), 8)
    corpus.prepare("jsonl", src=src, name="mine", data_dir=data_dir, test_fraction=0.25,
                   vocab_size=64)
    again = corpus.prepare("jsonl", src=src, name="mine", data_dir=data_dir, test_fraction=0.5)
    assert again["options_differ"] == {"test_fraction": [0.25, 0.5]}
    assert "test_fraction=0.25, not 0.5" in corpus.format_summary(again)


@pytest.mark.parametrize("n", [30, 58])
def test_tiny_corpus_gets_a_test_record(tmp_path, n):
    src = _write_corpus(str(tmp_path / "c"), n)
    hashed = [k for k in (f"line{i:09d}" for i in range(n)) if common.in_test_split(k, 0.01)]
    data_dir = str(tmp_path / "tfds")
    summary = corpus.prepare("jsonl", src=src, name="tiny", data_dir=data_dir, vocab_size=64)
    sizes = _split_sizes(data_dir, "tiny")
    assert sizes["test"] == max(1, len(hashed)) and sizes["train"] == n - sizes["test"]
    assert summary["splits"]["test"]["written"] == sizes["test"]
    text = corpus.format_summary(summary)
    assert f"the test split has only {sizes['test']} record(s)" in text
    if not hashed:  # the case that failed after the full pass
        assert summary["test_fallback"]["where"].startswith("pairs.jsonl:")
        assert "was moved there" in text


def test_one_usable_record_gives_an_explicit_train_only_dataset(tmp_path):
    src = _write_corpus(str(tmp_path / "c"), 1, broken=3)
    data_dir = str(tmp_path / "tfds")
    summary = corpus.prepare("jsonl", src=src, name="one", data_dir=data_dir, vocab_size=64)
    assert _split_sizes(data_dir, "one") == {"train": 1}
    assert "only 1 usable record" in summary["no_test_split"]
    assert summary["total"]["skipped"] == {"missing_file": 3}
    assert "no test split" in corpus.format_summary(summary)


def test_no_usable_record_is_one_clear_error(tmp_path):
    src = _write_corpus(str(tmp_path / "c"), 0, broken=4)
    with pytest.raises(ValueError, match=r"no usable record.*'missing_file': 4"):
        corpus.prepare("jsonl", src=src, name="none", data_dir=str(tmp_path / "tfds"))


@pytest.mark.parametrize("fmt", ["wds", "jsonl"])
def test_every_skipped_record_is_named(tmp_path, fmt):
    root = str(tmp_path)
    src = (bc.write_wds(os.path.join(root, "src"), os.path.join(root, "outside", "x.jpg"))
           if fmt == "wds" else bc.write_jsonl(os.path.join(root, "src"), "/etc/hostname"))
    data_dir = os.path.join(root, "tfds")
    summary = corpus.prepare(fmt, src=src, name="bad", data_dir=data_dir, test_fraction=0.3,
                             vocab_size=64)
    path = os.path.join(common.dataset_dir(data_dir, fmt, "bad"), common.SKIPPED_FILE)
    with open(path) as f:
        rows = [json.loads(line) for line in f]
    assert collections.Counter(r["reason"] for r in rows) == summary["total"]["skipped"]
    assert all(r["where"] for r in rows)
    examples = summary["total"]["examples"]
    assert set(examples) == set(summary["total"]["skipped"])
    if fmt == "jsonl":
        assert examples["undecodable_image"] == ["pairs.jsonl:7 images/corrupt.jpg"]
        assert sorted(examples["unsafe_path"]) == ["pairs.jsonl:19 /etc/hostname",
                                                   "pairs.jsonl:20 ../../etc/passwd"]
    else:
        assert examples["truncated_shard"][0].startswith(os.path.join(root, "src", "shards",
                                                                      "00002.tar"))
        assert examples["undecodable_image"] == [os.path.join(root, "src", "shards",
                                                              "00001.tar", "corrupt")]
    text = corpus.format_summary(summary, data_dir=data_dir)
    assert f"e.g. {examples['undecodable_image'][0]}" in text
    assert f"every skipped record: {path}" in text
