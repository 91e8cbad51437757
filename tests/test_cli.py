"""The command line teaches: `mmfm --help` lists every command, each command's `--help` its own
flags with defaults, one flag spelling, and user errors are one line with exit code 2 (a traceback
only with MMFM_DEBUG=1). Real `mmfm` processes (`mmfm.cli.main`), no mocks."""
import os
import subprocess
import sys

import pytest

from mmfm import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(ROOT, "experiments", "configs", "demo.py")


def mmfm(*args, cwd=None, timeout=300, **env):
    return subprocess.run([sys.executable, "-c", "from mmfm.cli import main; main()", *args],
                          cwd=cwd or ROOT, capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, JAX_PLATFORMS="cpu", **env))


def error_lines(proc) -> list[str]:
    return [line for line in proc.stderr.splitlines() if line.strip()]


@pytest.mark.parametrize("flag", ["--help", "-h", "help"])
def test_top_level_help_lists_every_command_with_a_description(flag):
    p = mmfm(flag)
    assert p.returncode == 0, p.stderr
    for name, fn in cli.COMMANDS.items():
        summary = cli._summary(fn)
        assert len(summary) > 15, name
        assert any(line.split()[:1] == [name] and summary in line for line in p.stdout.splitlines()), \
            (name, p.stdout)


def test_a_bad_command_says_so_in_one_line():
    p = mmfm("trian")
    assert p.returncode == 2
    assert error_lines(p) == [error_lines(p)[0]] and "unknown command 'trian'" in p.stderr
    assert "did you mean train" in p.stderr


# Each command's --help: exit 0, its own flags (no absl "Try --helpfull" wall), defaults shown.
HELP = {
    ("train",): ["--config", "--workdir", "--max_steps", "--num_processes", "--config.KEY=VALUE",
                 "--help --config"],
    ("eval",): ["--checkpoint", "--model", "--pretrained", "--out", "--data_dir",
                "--config.KEY=VALUE", "(default: <workdir>/eval)", "eval_results.json"],
    ("export",): ["--workdir", "--out", "--format", "stablehlo", "--suite_results"],
    ("convert",): ["--from", "--arch", "--tokenizer"],
    ("data",): ["prepare"],
    ("data", "prepare"): ["--format", "--src", "--name", "--data_dir", "--image_root",
                          "(default: 0.01)", "(default: 8000)", '"caption"', '"captions"', "KEY.txt"],
    ("tokenizer",): ["train"],
    ("tokenizer", "train"): ["--input", "--output", "--vocab_size", "(default: bpe)"],
    ("zoo",): ["--cache_dir", "MMFM_CACHE_DIR"],
    ("recipes",): ["list", "copy"],
    ("recipes", "copy"): ["name", "dest", "--force"],
    ("embed",): ["--model", "--images", "--texts", "--out", "--save_every", "(default: 64)"],
    ("search",): ["--index", "--text", "--image", "--grid", "(default: 5)"],
    ("quantize",): ["--out", "--pretrained", "int8", "--activations", "(default: float)"],
}


@pytest.mark.parametrize("argv", sorted(HELP), ids=" ".join)
def test_every_command_help_shows_its_own_flags(argv):
    p = mmfm(*argv, "--help")
    assert p.returncode == 0, p.stderr[-2000:]
    assert "helpfull" not in p.stdout and "absl" not in p.stdout
    assert len(p.stdout.splitlines()) < 70, p.stdout
    missing = [s for s in HELP[argv] if s not in p.stdout]
    assert not missing, (missing, p.stdout)


def test_help_names_every_command():
    assert {a[0] for a in HELP} >= set(cli.COMMANDS)


def test_train_help_with_a_config_lists_its_keys_and_values():
    p = mmfm("train", "--help", "--config", f"{DEMO}:tiny")
    assert p.returncode == 0, p.stderr[-2000:]
    assert "optim.lr = 0.002" in p.stdout and "total_steps = 4" in p.stdout


def test_help_command_shows_a_command_help():
    p = mmfm("help", "export")
    assert p.returncode == 0 and "--workdir" in p.stdout


# User errors: one line on stderr, exit 2; MMFM_DEBUG=1 shows the traceback.
@pytest.mark.parametrize("args, expect", [
    (("train", "--config", f"{DEMO}:tiny", "--workdirr=/tmp/x"), "Did you mean: workdir"),
    (("train", "--config", f"{DEMO}:tiny", "--workdir=/tmp/x", "--config.optim.learning_rate=1"),
     "valid keys in optim"),
    (("train", "--config", f"{DEMO}:huge", "--workdir=/tmp/x"), "unknown config argument(s) ['huge']"),
    (("train", "--config", "no/such.py", "--workdir=/tmp/x"), "no such config file"),
    (("eval", "--checkpoint", "/no/such/run"), "/no/such/run does not exist"),
    (("eval",), "give exactly one of --checkpoint"),
    (("export", "--workdir", "/no/such/run", "--out", "/tmp/x"), "does not exist"),
    (("export", "--workdir", "/tmp"), "--out"),
    (("data", "prepare", "--format", "jsonl", "--src", "/no/such.jsonl", "--name", "x",
      "--data_dir", "/tmp/x", "--test_fraction", "2"), "--test_fraction must be in [0, 1)"),
    (("data", "frobnicate"), "invalid choice: 'frobnicate'"),
])
def test_user_errors_are_one_line_and_exit_2(args, expect):
    p = mmfm(*args)
    assert p.returncode == 2, p.stderr[-2000:]
    lines = error_lines(p)
    assert len(lines) == 1 and expect in lines[0], p.stderr[-3000:]


def test_bad_data_is_one_line_and_debug_shows_the_traceback(tmp_path):
    args = ("train", "--config", f"{DEMO}:tiny", "--workdir", str(tmp_path / "w"),
            "--config.data.name=jsonl", "--config.data.dataset=nope",
            f"--config.data.dir={tmp_path / 'd'}")
    p = mmfm(*args)
    assert p.returncode == 2, p.stderr[-3000:]
    ours = [line for line in error_lines(p) if line.startswith("mmfm train: error:")]
    assert ours and "prepared jsonl dataset 'nope' not found" in ours[0] and "MMFM_DEBUG" in ours[0]
    assert "Traceback" not in p.stderr
    p = mmfm(*args, MMFM_DEBUG="1")
    assert p.returncode != 0 and "Traceback (most recent call last)" in p.stderr


def test_both_flag_spellings_are_accepted():
    # The dashed spelling reaches the underscore flag: its value is what fails.
    p = mmfm("train", "--config", f"{DEMO}:tiny", "--workdir=/tmp/x", "--max-steps=abc")
    assert p.returncode == 2 and "--max_steps=abc" in p.stderr, p.stderr
    p = mmfm("data", "prepare", "--format", "jsonl", "--src", "/x.jsonl", "--name", "x",
             "--data-dir", "/tmp/x", "--test-fraction", "2")
    assert p.returncode == 2 and "--test_fraction must be" in p.stderr, p.stderr


def test_the_flag_convention_is_underscores_everywhere():
    """Every flag any command defines is spelt with underscores (the dashed form is an alias)."""
    import re
    for argv in HELP:
        text = mmfm(*argv, "--help").stdout
        dashed = [f for f in re.findall(r"--([a-z][\w-]*)", text) if "-" in f]
        assert not dashed, (argv, dashed)


def test_zoo_lists_architectures_and_tags_with_source_size_and_cache(tmp_path):
    import mmfm as lib
    from mmfm.zoo import pretrained, registry

    tag = registry.PRETRAINED[("ViT-B-32", "openai")]
    d = pretrained.tag_cache_dir(tag, str(tmp_path))
    os.makedirs(d)
    for name in tag.files:
        open(os.path.join(d, name), "wb").close()
    p = mmfm("zoo", "--cache_dir", str(tmp_path))
    assert p.returncode == 0, p.stderr[-2000:]
    lines = p.stdout.splitlines()
    for arch in lib.list_models():
        assert any(line.split()[:1] == [arch] for line in lines), arch
    for arch, t in lib.list_pretrained():
        row = next(line for line in lines if line.split()[:2] == [arch, t])
        src = registry.PRETRAINED[(arch, t)].source
        assert src in row and ("MB" in row or "GB" in row), row
        assert row.split()[-1] == ("yes" if (arch, t) == ("ViT-B-32", "openai") else "no"), row
    assert "605.1MB" in next(line for line in lines if line.split()[:2] == ["ViT-B-32", "openai"])
    assert str(tmp_path) in p.stdout
