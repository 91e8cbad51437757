"""mmfm.fileio: one path layer for local paths and URLs; URLs tested on a local GCS emulator."""
import json
import os
import stat
import subprocess
import sys

import pytest

import gcs_emulator
from mmfm import fileio
from mmfm.train.metrics import MetricsWriter

B = f"gs://{gcs_emulator.BUCKET}"


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
    """The emulator's URL, with this process's GCS clients pointed at it."""
    with gcs_emulator.running(str(tmp_path_factory.mktemp("gcs"))) as url:
        old = {k: os.environ.get(k) for k in gcs_emulator.env(url)}
        os.environ.update(gcs_emulator.env(url))
        yield url
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)


def test_urls_stay_urls(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert fileio.absolute("gs://b/run/") == "gs://b/run"
    assert fileio.absolute("run") == os.path.join(str(tmp_path), "run")
    assert fileio.absolute("file:///x/y") == "/x/y"
    assert fileio.join("gs://b/run", "checkpoints", "2") == "gs://b/run/checkpoints/2"
    assert fileio.dirname("gs://b/run/checkpoints/") == "gs://b/run"
    assert fileio.basename("gs://b/run/checkpoints/2") == "2"
    assert fileio.is_url("gs://b") and not fileio.is_url("/gs:/b") and not fileio.is_url("a:b")


def test_unknown_scheme_is_a_user_error():
    with pytest.raises(ValueError, match="unsupported URL scheme ftp://"):
        fileio.exists("ftp://host/x")


def test_missing_gcsfs_names_the_extra():
    code = ("import sys; sys.modules['gcsfs'] = None\n"
            "from mmfm import fileio\n"
            "try:\n    fileio.exists('gs://b/x')\n"
            "except fileio.MissingExtraError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "pip install 'mmfm[gcs]'" in out.stdout, out.stderr[-2000:]


def test_local_write_atomic_replaces_whole_and_honours_umask(tmp_path):
    path = str(tmp_path / "sub" / "run_info.json")
    fileio.write_atomic(path, "old")
    fileio.write_atomic(path, b"new")
    assert open(path).read() == "new"
    assert os.listdir(tmp_path / "sub") == ["run_info.json"]  # no temporary left behind
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o666 & ~fileio.umask()


def test_local_copytree_order_and_find(tmp_path):
    src = tmp_path / "src"
    (src / "1.0.0").mkdir(parents=True)
    for rel in ("1.0.0/dataset_info.json", "1.0.0/a.array_record", "tokenizer.model"):
        (src / rel).write_text(rel)
    fileio.copytree(str(src), str(tmp_path / "dst"), last=("1.0.0/dataset_info.json",))
    assert fileio.find(str(tmp_path / "dst"), "dataset_info.json") == [
        str(tmp_path / "dst" / "1.0.0" / "dataset_info.json")]
    assert fileio.find(str(tmp_path / "missing"), "x") == []


def test_gs_files_round_trip(gcs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = f"{B}/unit/run"
    fileio.write_atomic(fileio.join(run, "a", "b.json"), json.dumps({"x": 1}))
    assert json.loads(fileio.read_text(f"{run}/a/b.json")) == {"x": 1}
    assert fileio.isdir(run) and fileio.isfile(f"{run}/a/b.json") and not fileio.isfile(run)
    assert fileio.listdir(run) == ["a"] and fileio.getsize(f"{run}/a/b.json") == 8
    assert fileio.find(run, "b.json") == [f"{run}/a/b.json"]
    with pytest.raises(ValueError, match="appending is not supported"):
        fileio.open(f"{run}/m.jsonl", "a")
    fileio.move(f"{run}/a", f"{run}/c")
    assert fileio.listdir(run) == ["c"]
    with fileio.staged(run) as local:
        assert open(os.path.join(local, "c", "b.json")).read() == '{"x": 1}'
    with fileio.local_file(f"{run}/c/b.json") as local:
        assert os.path.isfile(local) and not fileio.is_url(local)
    fileio.rmtree(run)
    assert not fileio.exists(run)
    assert not os.path.exists("gs:") and os.listdir(tmp_path) == []  # nothing landed locally


def test_gs_copytree_uploads_marker_last(gcs, tmp_path):
    src = tmp_path / "export"
    src.mkdir()
    for name in ("config.json", "params.safetensors", "spiece.model"):
        (src / name).write_bytes(name.encode())
    dst = f"{B}/unit/export"
    fileio.copytree(str(src), dst, last=("config.json",))
    assert fileio.listdir(dst) == ["config.json", "params.safetensors", "spiece.model"]
    assert fileio.read_bytes(f"{dst}/params.safetensors") == b"params.safetensors"


def test_metrics_writer_on_gs_truncates_on_resume(gcs):
    workdir = f"{B}/unit/metrics"
    w = MetricsWriter(workdir, total_steps=10)
    for step in (2, 4, 6):
        w.write(step, {"loss": float(step)})
    w.flush()  # what the loop calls before each checkpoint save
    lines = fileio.read_text(f"{workdir}/metrics.jsonl").splitlines()
    assert [json.loads(x)["step"] for x in lines] == [2, 4, 6]
    w.close()
    w = MetricsWriter(workdir, total_steps=10, resume_step=4)  # resumed from step 4's checkpoint
    w.write(6, {"loss": 0.5})
    w.close()
    recs = [json.loads(x) for x in fileio.read_text(f"{workdir}/metrics.jsonl").splitlines()]
    assert [(r["step"], r["loss"]) for r in recs] == [(2, 2.0), (4, 4.0), (6, 0.5)]
    events = fileio.listdir(f"{workdir}/tb")
    assert events and all(e.startswith("events.out.tfevents") for e in events)  # 1 s names
    assert fileio.getsize(f"{workdir}/tb/{events[0]}") > 0
