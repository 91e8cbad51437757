"""`mmfm eval` end to end on tfds.testing.mock_data cifar10 / imagenet2012 / coco_captions.

Mock data is random, so only the path and the metric names are checked (plus metric ranges).
"""
import importlib.util
import json
import os
import subprocess
import sys

import pytest
import tensorflow_datasets as tfds

from mmfm.evals import standalone

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_spec = importlib.util.spec_from_file_location(
    "catalog_eval_config", os.path.join(ROOT, "tests", "evals", "catalog_eval_config.py"))
catalog_eval_config = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(catalog_eval_config)
EXPECTED = {
    "c10_zeroshot/top1", "c10_zeroshot/top5", "c10_probe/accuracy", "c10_probe/best_l2",
    "c10_probe/val_accuracy", "c10_fewshot/1shot/mean", "c10_fewshot/1shot/std",
    "c10_fewshot/2shot/mean", "c10_fewshot/2shot/std", "in1k_zeroshot/top1", "in1k_zeroshot/top5",
    "coco/i2t/R@1", "coco/i2t/R@5", "coco/i2t/R@10", "coco/t2i/R@1", "coco/t2i/R@5", "coco/t2i/R@10",
}


def test_eval_checkpoint_on_mock_catalog(tiny_run, tmp_path):
    workdir, _, _ = tiny_run
    out = str(tmp_path / "eval")
    with tfds.testing.mock_data(num_examples=24):
        results = standalone.evaluate_checkpoint(catalog_eval_config.get_config(), workdir, out=out)
    assert set(results) == EXPECTED
    for k, v in results.items():
        if not k.endswith(("best_l2", "/std")):
            assert 0.0 <= v <= 1.0, (k, v)
    for d in ("i2t", "t2i"):
        assert results[f"coco/{d}/R@1"] <= results[f"coco/{d}/R@5"] <= results[f"coco/{d}/R@10"]
    with open(os.path.join(out, "eval_results.json")) as f:
        saved = json.load(f)
    assert saved["step"] == 4 and saved["metrics"] == results
    with open(os.path.join(out, "metrics.jsonl")) as f:
        rec = json.loads(f.readlines()[-1])
    assert rec["kind"] == "eval" and rec["step"] == 4 and rec["coco/t2i/R@1"] == results["coco/t2i/R@1"]
    assert os.listdir(os.path.join(out, "tb"))
    png = os.path.join(out, "pictures", "coco_step4.png")
    from PIL import Image
    assert Image.open(png).size[0] > 100


def test_eval_command_line_with_export(tiny_run, tmp_path):
    """The real CLI dispatch (`mmfm eval --model EXPORT`) in a fresh process with mocked TFDS."""
    workdir, _, _ = tiny_run
    from mmfm.zoo.export import export_from_workdir
    export = export_from_workdir(workdir, str(tmp_path / "export"))
    out = str(tmp_path / "eval_cli")
    script = (
        "import sys, tensorflow_datasets as tfds\n"
        "from mmfm import cli\n"
        "sys.argv = ['mmfm', 'eval', '--config', 'tests/evals/catalog_eval_config.py', '--model', "
        f"{export!r}, '--out', {out!r}, '--config.evals.evaluators.c10_fewshot.shots=(1,)']\n"
        "with tfds.testing.mock_data(num_examples=12):\n"
        "    cli.main()\n")
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(os.path.join(out, "eval_results.json")) as f:
        saved = json.load(f)
    expected = {k for k in EXPECTED if "2shot" not in k}
    assert set(saved["metrics"]) == expected
    assert saved["source"]["model"] == export
    assert "in1k_zeroshot/top1" in proc.stdout  # the printed table


def test_bad_evaluator_configs_name_the_key():
    from mmfm.evals.evaluators import evaluator_configs

    with pytest.raises(ValueError, match=r"evals.evaluators.x.type: 'zero_shot' is not"):
        evaluator_configs({"evaluators": {"x": {"type": "zero_shot", "dataset": "cifar10"}}})
    with pytest.raises(ValueError, match=r"evals.evaluators.x: unknown key\(s\) \['shots'\]"):
        evaluator_configs({"evaluators": {"x": {"type": "zeroshot", "dataset": "cifar10",
                                                "shots": 1}}})
    with pytest.raises(ValueError, match=r"evals.evaluators.x.dataset: 'mnist' is not"):
        evaluator_configs({"evaluators": {"x": {"type": "zeroshot", "dataset": "mnist"}}})
    with pytest.raises(ValueError, match="duplicate"):
        evaluator_configs({"evaluators": [{"name": "a", "type": "zeroshot", "dataset": "cifar10"},
                                          {"name": "a", "type": "zeroshot", "dataset": "cifar10"}]})
    with pytest.raises(FileNotFoundError, match="no finalised checkpoint"):
        standalone.evaluate_checkpoint(catalog_eval_config.get_config(), ROOT + "/mmfm")


@pytest.mark.parametrize("args, message", [
    ([], "exactly one of --checkpoint"),
    (["--checkpoint", "/nonexistent/run"], "does not exist"),
    (["--model", "ViT-B-32"], "--model needs --config"),
])
def test_eval_command_mistakes_are_one_line(args, message):
    proc = subprocess.run([sys.executable, "-c", "from mmfm.cli import main; main()", "eval", *args],
                          cwd=ROOT, env=dict(os.environ, JAX_PLATFORMS="cpu"), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode != 0
    assert message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-2000:]


def test_every_n_steps_schedule():
    from mmfm.evals.evaluators import build_evaluators

    (e,) = build_evaluators({"evaluators": {"z": {"type": "zeroshot", "dataset": "cifar10",
                                                  "every": 100}}})
    assert [s for s in range(1, 451) if e.due(s, 450)] == [100, 200, 300, 400, 450]
    (e0,) = build_evaluators({"evaluators": [{"name": "z", "type": "zeroshot", "dataset": "cifar10"}]})
    assert [s for s in range(1, 451) if e0.due(s, 450)] == [450]


def test_split_errors_list_valid_splits():
    from mmfm.evals import datasets

    with pytest.raises(ValueError, match=r"has no split 'dev'; valid: \['test', 'train'\]"):
        datasets.load_classification("cifar10", "dev")
    with pytest.raises(ValueError, match="unknown retrieval dataset 'flickr'"):
        datasets.load_retrieval("flickr", "test")


def test_eval_checkpoint_without_evaluators_reruns_the_training_eval(tiny_run, tmp_path):
    """`mmfm eval --checkpoint RUN` with no evaluators: the run's own end-of-training eval."""
    import ml_collections

    workdir, _, _ = tiny_run
    config = ml_collections.ConfigDict(dict(evals=dict(batch_size=48)))  # names no evaluator
    results = standalone.evaluate_checkpoint(config, workdir, out=str(tmp_path / "ev"))
    with open(os.path.join(workdir, "eval_results.json")) as f:
        at_training = json.load(f)["metrics"]
    builtin = {k for k in at_training if k.split("/")[0] in
               ("retrieval", "zeroshot", "probe", "fewshot")}
    assert builtin and set(results) == builtin
    assert {k: results[k] for k in builtin} == {k: at_training[k] for k in builtin}
