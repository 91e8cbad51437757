"""The pip user's path: build the wheel, install it into a fresh venv, copy a recipe out with the
documented command, train it (`:tiny`) from an unrelated directory, evaluate, export and load the
export, with the checkout nowhere on `sys.path`.

The fresh venv reaches the already-installed dependencies through a path entry to this
environment's site-packages (no download of jax & co.); `.pth` files of an entry added that way are
not processed, so the checkout's editable install stays invisible to it.
"""
import json
import os
import subprocess
import sys
import sysconfig
import venv

import pytest

from tests.subprocess_env import failure_report

pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run(cmd, cwd, env, timeout=600):
    p = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, failure_report(p)
    return p


def test_wheel_trains_a_copied_recipe_from_anywhere(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    archive = subprocess.run(["git", "-C", REPO, "archive", "HEAD"], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(src)], input=archive.stdout, check=True)
    env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("PYTHONPATH", None)
    env.pop("XLA_FLAGS", None)  # one device, as on a laptop
    _run([sys.executable, "-m", "build", "--wheel", "-o", str(tmp_path / "dist"), str(src)],
         tmp_path, env)
    wheel = next((tmp_path / "dist").glob("mmfm-*.whl"))

    root = tmp_path / "venv"
    venv.create(root, with_pip=True)
    py, bindir = str(root / "bin" / "python"), root / "bin"
    site = subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    with open(os.path.join(site, "deps.pth"), "w") as f:
        f.write(sysconfig.get_paths()["purelib"] + "\n")
    _run([py, "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], tmp_path, env)

    user = tmp_path / "elsewhere"  # an unrelated working directory
    user.mkdir()
    env["PATH"] = f"{bindir}:{env['PATH']}"
    mmfm = str(bindir / "mmfm")
    listing = _run([mmfm, "recipes"], user, env).stdout
    assert "demo" in listing and "finetune_shapes" in listing, listing
    _run([mmfm, "recipes", "copy", "demo", "my_demo.py"], user, env)
    with open(user / "my_demo.py") as f:  # the user edits their copy
        text = f.read().replace("config.optim.lr = 2e-3", "config.optim.lr = 1e-3")
    assert "lr = 1e-3" in text
    with open(user / "my_demo.py", "w") as f:
        f.write(text)
    _run([mmfm, "train", "--config", "my_demo.py:tiny", "--workdir", "run",
          "--config.data.dir=data", "--config.evals.few_shot=()"], user, env, timeout=900)
    with open(user / "run" / "run_info.json") as f:
        assert json.load(f)["config"]["optim"]["lr"] == 1e-3
    _run([mmfm, "eval", "--checkpoint", "run", "--out", "ev"], user, env)
    assert any(name.endswith(".json") for name in os.listdir(user / "ev")), os.listdir(user / "ev")
    _run([mmfm, "export", "--workdir", "run", "--out", "exp"], user, env)
    probe = _run([py, "-c", """
import os, sys, numpy as np, mmfm
assert "site-packages" in mmfm.__file__, mmfm.__file__
assert sys.argv[1] not in [os.path.realpath(p or ".") for p in sys.path], sys.path  # no checkout
print(mmfm.__file__)
model, params, _, preprocess = mmfm.create_model_and_transforms("exp")
tok = mmfm.get_tokenizer("exp")
emb = np.asarray(mmfm.encode_text(model, params, ["a red circle", "a blue star"], tokenizer=tok))
print(emb.shape, float(np.abs(np.linalg.norm(emb, axis=1) - 1).max()))
""", REPO], user, env).stdout
    print(probe)
    assert str(root) in probe.splitlines()[0]
    shape, err = probe.splitlines()[1].rsplit(" ", 1)
    assert shape.startswith("(2, ") and float(err) < 1e-5, probe
