"""One tiny demo run (the real training loop, 4 steps) shared by the evaluation tests."""
import os

import pytest


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """(workdir, data_dir, config) of a finished `demo.py:tiny` run (checkpoint at step 4).

    Its config adds few-shot (1, 2) and two named evaluators, so the loop's eval runs them too.
    """
    from experiments.configs import demo
    from mmfm.evals.runner import train_and_evaluate

    root = tmp_path_factory.mktemp("tiny_run")
    config = demo.get_config("tiny")
    with config.unlocked():
        config.data.dir = str(root / "data")
        config.evals.few_shot = (1, 2)
        # Named evaluators run by the training loop's end-of-run eval (mmfm.evals.runner).
        config.evals.evaluators = dict(
            shapes_ret=dict(type="retrieval", dataset="captioned_shapes", pictures=2, every=2),
            recon=dict(type="mae_pictures", dataset="captioned_shapes", num_images=4))
    workdir = str(root / "run")
    train_and_evaluate(config, workdir)
    assert os.path.isdir(os.path.join(workdir, "checkpoints", "4"))
    return workdir, config.data.dir, config
