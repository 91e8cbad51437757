"""A model trained by the demo config and exported loads by path with identical outputs and the
same zero-shot / retrieval numbers as the training-time eval."""
import json
import os

import numpy as np
import pytest

import mmfm.api as mmfm
from mmfm.cli import export_main

# Minutes of CPU: run by `make test-slow` (and CI), not by `make test`.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from experiments.configs import demo
    from mmfm.evals.runner import train_and_evaluate

    root = tmp_path_factory.mktemp("demo")
    config = demo.get_config("tiny")
    config.unlock()
    config.data.dir = str(root / "data")
    config.lock()
    workdir = str(root / "work")
    train_and_evaluate(config, workdir)
    out = str(root / "export")
    export_main(["--workdir", workdir, "--out", out])
    return config, workdir, out


def _training_params(config, workdir):
    from mmfm import checkpoint
    from mmfm.train.loop import Trainer
    return Trainer(config, workdir), checkpoint.load_run(workdir).params


def test_export_loads_by_path_with_identical_embeddings_and_zeroshot(trained):
    from mmfm.evals.runner import evaluate_arrays

    config, workdir, out = trained
    meta = json.load(open(os.path.join(out, "config.json")))
    assert meta["format"] == "mmfm-export" and meta["source"]["step"] == config.total_steps
    assert os.path.isfile(os.path.join(out, meta["tokenizer"]["file"]))

    model, params, _, preprocess = mmfm.create_model_and_transforms(out)
    tr, train_params = _training_params(config, workdir)
    assert model.cfg == tr.model_cfg

    test = tr.eval_arrays()
    images = np.stack([preprocess(im) for im in test["image"][:8]])
    mine = np.asarray(mmfm.encode_image(model, params, images))
    theirs = np.asarray(mmfm.encode_image(tr.model, train_params, images))
    np.testing.assert_array_equal(mine, theirs)
    tok = mmfm.get_tokenizer(out)
    np.testing.assert_array_equal(tok(["a red circle"], 24), tr.tokenizer(["a red circle"], 24))
    np.testing.assert_array_equal(np.asarray(mmfm.encode_text(model, params, ["a red circle"], tokenizer=tok)),
                                  np.asarray(mmfm.encode_text(tr.model, train_params, ["a red circle"], tokenizer=tr.tokenizer)))

    # Zero-shot and retrieval from the export alone (its mean/std, tokenizer, class names) equal
    # the numbers the training run wrote to eval_results.json.
    m = mmfm.load_eval_model(out, batch_size=config.evals.batch_size)
    assert m.zeroshot == {k: (tuple(n), tuple(t)) for k, (n, t) in meta["zeroshot"].items()}
    mine = evaluate_arrays(m, test, None, m.zeroshot)
    with open(os.path.join(workdir, "eval_results.json")) as f:
        at_training = json.load(f)["metrics"]
    keys = [k for k in mine if k.startswith(("zeroshot/", "retrieval/"))]
    assert any(k.startswith("zeroshot/") for k in keys)
    assert {k: mine[k] for k in keys} == {k: at_training[k] for k in keys}


def test_export_of_non_workdir_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        export_main(["--workdir", str(tmp_path), "--out", str(tmp_path / "x")])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mmfm export: error: ") and "no finalised checkpoint" in err
    assert len(err.splitlines()) == 1
    assert not os.path.exists(tmp_path / "x")
