"""MODEL_CARD.md in every export: numbers that match what the run and its files recorded."""
import json
import os

import numpy as np
import pytest

from mmfm.zoo.model_card import RunRecord, failure_modes, param_counts


def _group(**acc_count):
    groups = {k: {"accuracy": a, "count": n} for k, (a, n) in acc_count.items()}
    total = sum(n for _, n in acc_count.values())
    mean = sum(a * n for a, n in acc_count.values()) / total
    accs = [a for a, _ in acc_count.values()]
    worst = min(groups, key=lambda k: groups[k]["accuracy"])
    return {"groups": groups, "worst": min(accs), "worst_group": worst, "best": max(accs),
            "spread": max(accs) - min(accs), "mean": mean}


def test_failure_modes_list_weak_groups_and_edits_near_chance():
    suite = {"suite": "shapes",
             "metrics": {"compositional/swap_color": 0.49, "compositional/replace_shape": 0.91,
                         "compositional/mean": 0.7},
             "groups": {"zeroshot_shape/color": _group(red=(0.95, 40), cyan=(0.60, 40),
                                                       blue=(0.90, 40), pink=(0.2, 3))}}
    run = RunRecord(config={"data": {"name": "captioned_shapes"}}, step=1, suites=[suite])
    found = "\n".join(failure_modes(run))
    # mean 0.8 (pink's 3 examples count in the mean): cyan is 0.2 below, blue only 0.1 above it
    assert "cyan (0.60, 40 examples)" in found and "blue" not in found
    assert "pink" not in found  # too few examples to be a finding
    assert "swap_color 0.49" in found and "replace_shape" not in found
    assert "synthetic coloured shapes" in found
    assert "No per-group evaluation" not in found
    other = RunRecord(config={"data": {"name": "jsonl", "dataset": "mine"}}, step=1)
    assert failure_modes(other) == [failure_modes(None)[-1]]


def test_param_counts_split_by_tower():
    flat = {"img/a": np.zeros((3, 4)), "img/b": np.zeros(5), "txt/c": np.zeros((2, 2, 2)),
            "scale": np.zeros(())}
    assert param_counts(flat) == {"total": 26, "image tower": 17, "text tower": 8, "other": 1}


@pytest.mark.slow  # runs the shapes suite on the tiny run
def test_export_card_matches_the_run_eval_and_suite(tiny_run, tmp_path, capsys):
    from safetensors.numpy import load_file

    from mmfm.cli import export_main
    from mmfm.evals import standalone

    workdir, _, config = tiny_run
    before = sorted(os.listdir(workdir))
    suite_dir = str(tmp_path / "suite")
    standalone.suite_on_checkpoint("shapes", workdir, out=suite_dir, name="tiny")
    out = str(tmp_path / "export")
    export_main(["--workdir", workdir, "--out", out, "--suite_results", suite_dir])
    assert sorted(os.listdir(workdir)) == before  # reading a run never changes it
    card = open(os.path.join(out, "MODEL_CARD.md")).read()

    n_params = sum(v.size for v in load_file(os.path.join(out, "params.safetensors")).values())
    assert f"Parameters: {n_params:,} " in card
    assert f"Steps: 4 of {config.total_steps} at global batch {config.batch_size} " in card
    assert f"MLM (mask ratio {config.loss.mlm_ratio}) x {config.loss.mlm_weight:g}" in card
    ev = json.load(open(os.path.join(workdir, "eval_results.json")))
    assert ev["sizes"]["retrieval_pairs"] == config.data.num_test
    assert f"{ev['sizes']['retrieval_pairs']:,} image-caption pairs for retrieval" in card
    for key in ("retrieval/i2t/R@1", "zeroshot/shape/top1", "probe/color/accuracy"):
        assert f"| {key} | {ev['metrics'][key]:.4f} |" in card
    suite = json.load(open(os.path.join(suite_dir, "suite_results.json")))
    g = suite["groups"]["zeroshot_shape/color"]
    assert f"| zeroshot_shape/color | {g['worst_group']} | {g['worst']:.3f} |" in card
    assert f"| compositional/mean | {suite['metrics']['compositional/mean']:.4f} |" in card
    assert "## Known failure modes" in card and "## Intended use" in card

    missing = str(tmp_path / "nope")
    with pytest.raises(SystemExit) as e:
        export_main(["--workdir", workdir, "--out", str(tmp_path / "x"), "--suite_results", missing])
    assert e.value.code == 2
    assert f"{missing}/suite_results.json not found" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "x")
