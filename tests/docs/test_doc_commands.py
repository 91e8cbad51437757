"""Every run command in README.md, TPU_SETUP.md, experiments/README.md, benchmarks/README.md and
the config docstrings names a config, flags and config keys that exist; links and MMFM_* variables
resolve."""
import glob
import os
import re

import pytest

import doc_commands as dc


def test_each_doc_and_config_has_commands():
    for doc in dc.DOCS:
        assert dc.markdown_commands(os.path.join(dc.ROOT, doc)), f"{doc}: no shell commands found"
    for path in dc.config_files():
        cmds = [c.text for c in dc.docstring_commands(path)]
        assert any(("python -m mmfm." in c or "mmfm train" in c)
                   and "--config" in c for c in cmds), \
            f"{path}: the docstring gives no run command"


def test_every_command_names_existing_configs_flags_and_keys():
    errors = [e for cmd in dc.all_commands() for e in dc.check_command(cmd)]
    assert not errors, "\n".join(errors)


@pytest.mark.parametrize("text, expect", [
    ("python -m mmfm.train --config experiments/configs/nope.py --workdir w", "does not exist"),
    ("python -m mmfm.train --config experiments/configs/demo.py:huge --workdir w", "huge"),
    ("python -m mmfm.train --config experiments/configs/demo.py --config.optim.learning_rate=1",
     "learning_rate"),
    ("python -m mmfm.train --config experiments/configs/demo.py --work_dir w", "--work_dir"),
    ("python -m mmfm.train --config experiments/configs/demo.py --config.data.name=laion9",
     "laion9"),
    ("mmfm export --workdir w --output o", "--output"),
    ("mmfm frobnicate", "not a command"),
    ("make deploy", "no such target"),
    ("mmfm recipes copy demoo my.py", "demoo"),
    ("mmfm train --config never_copied.py:tiny --workdir w", "never_copied.py"),
    ("mmfm train --config my_demo.py:tiny --workdir w --config.data.nope=1", "nope"),
    ("gcloud compute tpus tpu-vm ssh x --worker=all "
     "--command='cd mmfm && python -m mmfm.train --config experiments/configs/demo.py --bogus=1'",
     "--bogus"),
    ("python benchmarks/train_step.py --stepz 3", "--stepz"),
    ("experiments/tpu/launch.sh --tpu t --zone z -- --config experiments/configs/demo.py "
     "--workdir w --config.nope=1", "nope"),
    ("sbatch experiments/tpu/slurm_train.sbatch experiments/configs/demo.py /w --config.nope=1",
     "nope"),
])
def test_checker_rejects_bad_commands(text, expect):
    errors = dc.check_command(dc.Command("test", text))
    assert errors and any(expect in e for e in errors), errors


def test_checker_accepts_a_good_command():
    text = ("MMFM_DISTRIBUTED=auto python -m mmfm.train --config experiments/configs/demo.py:tiny "
            "--workdir /tmp/x --config.data.dir=/tmp/d --config.mesh.shape='(1,-1,1)' --max_steps=2")
    assert dc.check_command(dc.Command("test", text)) == []


def test_a_copied_recipe_is_checked_as_the_recipe():
    """README copies demo to my_demo.py; `--config my_demo.py` is then checked against demo.py."""
    assert dc.copied_recipes().get("my_demo.py", "").endswith("demo.py")
    text = ("mmfm train --config my_demo.py:tiny --workdir w --config.data.name=jsonl "
            "--config.data.dataset=mine --config.data.dir=prepared")
    assert dc.check_command(dc.Command("test", text)) == []


def test_mmfm_environment_variables_exist_in_code():
    code = ""
    for path in glob.glob(os.path.join(dc.ROOT, "mmfm", "**", "*.py"), recursive=True) + \
            glob.glob(os.path.join(dc.ROOT, "experiments", "tpu", "*")):
        with open(path) as f:
            code += f.read()
    missing = {n: w for n, w in dc.env_vars_in_docs().items() if n not in code}
    assert not missing, f"MMFM_* variables documented but never read: {missing}"


def test_relative_links_resolve():
    bad = []
    for doc in dc.DOCS:
        base = os.path.dirname(os.path.join(dc.ROOT, doc))
        with open(os.path.join(dc.ROOT, doc)) as f:
            for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", f.read()):
                if not target.startswith(("http://", "https://", "mailto:")):
                    if not os.path.exists(os.path.join(base, target)):
                        bad.append(f"{doc}: {target}")
    assert not bad, bad
