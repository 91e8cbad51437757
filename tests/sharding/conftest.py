"""Shared fixtures for the sharding tests: the built-in data prepared once, the tiny demo config."""
import os

import pytest


@pytest.fixture(scope="session")
def shapes_dir(tmp_path_factory):
    """captioned_shapes at the tiny config's size, built once per session (~10 s)."""
    base = os.environ.get("MMFM_TEST_DATA_DIR")  # reuse across sessions when set
    d = base or str(tmp_path_factory.mktemp("shapes"))
    from mmfm.data.synthetic import prepare_captioned_shapes
    prepare_captioned_shapes(d, image_size=32, num_train=256, num_test=64, seed=0)
    return d


@pytest.fixture(scope="session")
def tiny_config():
    """Factory: `tiny_config(data_dir, **{"mesh.shape": (1, 8, 1)})`."""
    return make_tiny_config


def make_tiny_config(data_dir: str, **overrides):
    """demo.py:tiny with `data.dir` set and dotted overrides ('loss.chunked'=True, ...)."""
    from experiments.configs import demo

    config = demo.get_config("tiny")
    with config.unlocked():
        config.data.dir = data_dir
        for key, value in overrides.items():
            *parents, leaf = key.split(".")
            node = config
            for p in parents:
                node = node[p]
            node[leaf] = value
    return config
