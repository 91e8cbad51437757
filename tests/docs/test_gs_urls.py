"""Workdir, data dir and export given as gs:// URLs, through the `mmfm` console script, against a
local GCS emulator: train (stopped at step 2), resume to the end, `mmfm eval --checkpoint URL`,
`mmfm export` to a URL and load the export. Every client in the stack talks to the emulator
(gcsfs for run files, tensorstore for Orbax's arrays, array_record's C++ reader for the TFDS data),
so the files are checked where the emulator keeps them, and nothing may land in the launch
directory (no `./gs:/...`).
"""
import json
import os
import subprocess
import sys
import time

import pytest

import gcs_emulator
from subprocess_env import failure_report

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(ROOT, "experiments", "configs", "demo.py") + ":tiny"
B = f"gs://{gcs_emulator.BUCKET}"


def _objects(store: str, prefix: str) -> set[str]:
    """Object names under `prefix` as the emulator stores them (one file per object)."""
    top = os.path.join(store, ".cloudstorage", gcs_emulator.BUCKET)
    return {os.path.relpath(os.path.join(d, f), top) for d, _, files in os.walk(os.path.join(top, prefix))
            for f in files}


@pytest.mark.slow
def test_train_resume_eval_export_on_gs(tmp_path):
    store, work = str(tmp_path / "store"), tmp_path / "launch"
    work.mkdir()
    bindir = os.path.dirname(sys.executable)
    with gcs_emulator.running(store) as url:
        env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "PYTHONPATH")}
        env.update(gcs_emulator.env(url), PATH=bindir + os.pathsep + env.get("PATH", ""))

        def mmfm(*args, timeout=600):
            t0 = time.perf_counter()
            res = subprocess.run([os.path.join(bindir, "mmfm"), *args], cwd=work, env=env,
                                 capture_output=True, text=True, timeout=timeout)
            assert res.returncode == 0, f"mmfm {' '.join(args)}: {failure_report(res)}"
            print(f"mmfm {args[0]}: {time.perf_counter() - t0:.0f} s")
            return res

        train = ("train", "--config", CONFIG, "--workdir", f"{B}/runs/tiny",
                 f"--config.data.dir={B}/data")
        mmfm(*train, "--max_steps", "2")
        run = _objects(store, "runs/tiny")
        assert "runs/tiny/checkpoints/2/commit_success.txt" in run, sorted(run)
        assert any(o.endswith("tokenizer.model") for o in _objects(store, "data/captioned_shapes"))
        assert any(o.endswith(".array_record-00000-of-00001") for o in _objects(store, "data"))

        second = mmfm(*train)
        assert "resumed from step 2" in second.stderr
        run = _objects(store, "runs/tiny")
        assert {"runs/tiny/checkpoints/4/commit_success.txt", "runs/tiny/run_info.json",
                "runs/tiny/eval_results.json"} <= run
        assert any(o.startswith("runs/tiny/tb/events.out.tfevents") for o in run)
        assert any(o.startswith("runs/tiny/checkpoints/assets/") for o in run)
        top = os.path.join(store, ".cloudstorage", gcs_emulator.BUCKET, "runs", "tiny")
        recs = [json.loads(x) for x in open(os.path.join(top, "metrics.jsonl"))]
        assert [(r["step"], r["kind"]) for r in recs] == [(2, "train"), (4, "train"), (4, "eval")]
        info = json.load(open(os.path.join(top, "run_info.json")))
        assert info["config"]["data"]["dir"] == f"{B}/data"  # a URL stays a URL
        assert [r["step"] for r in info["resumes"]] == [2]

        mmfm("eval", "--checkpoint", f"{B}/runs/tiny", "--out", f"{B}/evals/tiny")
        results = json.load(open(os.path.join(store, ".cloudstorage", gcs_emulator.BUCKET,
                                              "evals", "tiny", "eval_results.json")))
        assert results["step"] == 4 and results["source"]["checkpoint"] == f"{B}/runs/tiny"
        assert "retrieval/i2t/R@1" in results["metrics"]

        mmfm("export", "--workdir", f"{B}/runs/tiny", "--out", f"{B}/exports/tiny")
        export = _objects(store, "exports/tiny")
        assert {"exports/tiny/config.json", "exports/tiny/params.safetensors"} <= export

        load = ("import jax, numpy as np, mmfm\n"
                f"model, params, _, _ = mmfm.create_model_and_transforms('{B}/exports/tiny')\n"
                f"tok = mmfm.get_tokenizer('{B}/exports/tiny')\n"
                "print('leaves', len(jax.tree.leaves(params)))\n"
                "print('tokens', np.asarray(tok(['a red circle'], 16)).shape)\n")
        res = subprocess.run([os.path.join(bindir, "python"), "-c", load], cwd=work, env=env,
                             capture_output=True, text=True, timeout=600)
        assert res.returncode == 0 and "tokens (1," in res.stdout, failure_report(res)
        assert int(res.stdout.split("leaves")[1].split()[0]) > 10, res.stdout
    assert os.listdir(work) == [], os.listdir(work)  # nothing written beside the launch directory
