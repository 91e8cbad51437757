"""Every shell command of README.md and experiments/README.md runs, as written or as RULES says.

The commands come from the docs' shell code blocks (`doc_commands.markdown_commands`), so one added
later is picked up: each must match exactly one rule, and each rule a command (the table cannot go
stale). A rule runs its command as written, or with literal replacements that keep its meaning
(`:tiny` for a full-size run, the test's own directory for /tmp), or skips it and says why; and it
names what the command writes, which is checked after it ran.

The commands run in document order (later commands use what earlier ones wrote; experiments/
README.md's start from README.md's runs/demo) in one directory outside the checkout: a copy of the
checkout's files, since the docs' commands run from a checkout's root (`experiments/configs/...`,
`python -m build`). HOME is a temporary directory too (`~/mmfm-env`), PATH starts with this
environment's bin (`mmfm` and `python` are its console scripts), and XLA_FLAGS and PYTHONPATH are
unset: a user's plain shell, one CPU device. JAX_COMPILATION_CACHE_DIR gives all the commands one
compilation cache, as a user's shell may: the three identical `demo.py:tiny` runs compile once
(106 s -> 29 s for the second on 2 shared cores).
"""
from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import sysconfig
import time
import zipfile
from dataclasses import dataclass, field
from typing import Callable

import pytest

import doc_commands as dc
from subprocess_env import failure_report

DOCS = ("README.md", "experiments/README.md")
WHEEL = "dist/mmfm-0.1.0-py3-none-any.whl"


@dataclass
class Ctx:
    """Where the commands run, and the output of the last one."""
    work: str  # the copy of the checkout: every command's working directory
    tmp: str  # stands for the machine's /tmp
    env: dict
    replace: tuple = ()  # the rule's replacements, applied to the paths its checks name too
    prefix: list = field(default_factory=list)  # kept commands of the section (`source ...`)
    stdout: str = ""

    def path(self, p: str) -> str:
        for old, new in self.replace:
            p = p.replace(old, new)
        p = p.replace("~", self.env["HOME"], 1) if p.startswith("~") else p
        return os.path.join(self.work, p)

    def shell(self, cmd: str, timeout: int = 900) -> subprocess.CompletedProcess:
        script = " && ".join([*self.prefix, cmd])
        return subprocess.run(["bash", "-c", script], cwd=self.work, env=self.env,
                              capture_output=True, text=True, timeout=timeout)


# ----------------------------------------------------------------------------- what a command writes

def exists(*paths: str) -> Callable[[Ctx], None]:
    def check(ctx):
        for p in paths:
            assert os.path.exists(ctx.path(p)), f"{p} ({ctx.path(p)}) was not written"
    return check


def prints(*words: str) -> Callable[[Ctx], None]:
    def check(ctx):
        for w in words:
            assert w in ctx.stdout, f"output lacks {w!r}:\n{ctx.stdout[-2000:]}"
    return check


def lists_recipes(ctx: Ctx) -> None:
    """One line for each recipe file, starting with its name."""
    names = [os.path.basename(p)[:-3] for p in dc.config_files()]
    missing = [n for n in names if not re.search(rf"^{n}\s+\S", ctx.stdout, re.M)]
    assert names and not missing, f"no line for {missing}:\n{ctx.stdout}"


def file_has(path: str, text: str) -> Callable[[Ctx], None]:
    def check(ctx):
        with open(ctx.path(path)) as f:
            assert text in f.read(), f"{path} lacks {text!r}"
    return check


def wheel_has(path: str, *members: str) -> Callable[[Ctx], None]:
    def check(ctx):
        names = zipfile.ZipFile(ctx.path(path)).namelist()
        missing = [m for m in members if m not in names]
        assert not missing, f"{path} lacks {missing}"
    return check


def succeeds(cmd: str) -> Callable[[Ctx], None]:
    def check(ctx):
        res = ctx.shell(cmd)
        assert res.returncode == 0, f"`{cmd}`: {failure_report(res)}"
    return check


def imports_mmfm_from(venv: str) -> Callable[[Ctx], None]:
    """The venv's python imports mmfm from its own site-packages (the wheel), not the checkout."""
    def check(ctx):
        res = ctx.shell(f"cd ~ && {venv}/bin/python -c 'import mmfm; print(mmfm.__file__)'")
        assert res.returncode == 0, failure_report(res)
        where = res.stdout.strip()
        assert where.startswith(ctx.path(venv)) and "site-packages" in where, where
    return check


def resolves(name: str, to: str) -> Callable[[Ctx], None]:
    """After the section's kept commands (`source .../activate`), `name` is `to`."""
    def check(ctx):
        res = ctx.shell(f"command -v {name}")
        assert res.stdout.strip() == ctx.path(to), (res.stdout, res.stderr)
    return check


def _results(path: str) -> dict:
    with open(path) as f:
        res = json.load(f)
    metrics = res["metrics"]
    assert metrics and all(isinstance(v, (int, float)) and math.isfinite(v)
                           for v in metrics.values()), metrics
    return res


def trained(workdir: str, *, steps: int | None = None, resumed_from: str | None = None,
            metrics: tuple[str, ...] = ()) -> Callable[[Ctx], None]:
    """A finished `:tiny` run: run info with absolute paths, a checkpoint at its last step and the
    end-of-training eval at that step (holding `metrics`); `resumed_from`: it started from that
    run's parameters with a fresh optimizer."""
    def check(ctx):
        w = ctx.path(workdir)
        with open(os.path.join(w, "run_info.json")) as f:
            config = json.load(f)["config"]
        total = config["total_steps"]
        assert total == steps if steps else total <= 10, (total, steps)
        assert config["model"]["image"]["width"] == 32, config["model"]["image"]  # :tiny
        assert os.path.isabs(config["data"]["dir"]), config["data"]["dir"]
        if resumed_from:
            assert config["resume_from"] == ctx.path(resumed_from), config["resume_from"]
            assert config["resume_mode"] == "params", config["resume_mode"]
        ckpts = [int(d) for d in os.listdir(os.path.join(w, "checkpoints")) if d.isdigit()]
        assert max(ckpts, default=None) == total, (ckpts, total)
        res = _results(os.path.join(w, "eval_results.json"))
        assert res["step"] == total, (res["step"], total)
        assert set(metrics) <= set(res["metrics"]), (metrics, sorted(res["metrics"]))
    return check


def evaluated(out: str, like_run: str) -> Callable[[Ctx], None]:
    """`mmfm eval --checkpoint RUN` re-ran RUN's end-of-training eval: the same step and metrics."""
    def check(ctx):
        res = _results(os.path.join(ctx.path(out), "eval_results.json"))
        run = _results(os.path.join(ctx.path(like_run), "eval_results.json"))
        assert res["step"] == run["step"] and set(res["metrics"]) == set(run["metrics"]), \
            (res["step"], run["step"], sorted(res["metrics"]), sorted(run["metrics"]))
    return check


def suite_ran(out: str, suite: str) -> Callable[[Ctx], None]:
    """`mmfm eval --suite` wrote its JSON (every task run, an average) and its CSV row."""
    def check(ctx):
        with open(os.path.join(ctx.path(out), "suite_results.json")) as f:
            res = json.load(f)
        assert res["suite"] == suite and res["average"] is not None, res.get("missing")
        assert all(r["status"] == "ok" for r in res["rows"]), res["rows"]
        with open(os.path.join(ctx.path(out), f"{suite}_results.csv")) as f:
            header, row = f.read().splitlines()[:2]
        assert header.startswith("name,pretrained,params (M),FLOPs (B),Average perf."), header
        assert row.split(",")[0] == "demo", row
    return check


def exported(out: str) -> Callable[[Ctx], None]:
    def check(ctx):
        files = os.listdir(ctx.path(out))
        assert {"config.json", "params.safetensors", "MODEL_CARD.md"} <= set(files), files
        assert any(f.endswith(".model") for f in files), f"no tokenizer in {files}"
        with open(os.path.join(ctx.path(out), "config.json")) as f:
            assert json.load(f)["model"]["embed_dim"] > 0
        assert os.path.getsize(os.path.join(ctx.path(out), "params.safetensors")) > 10_000
    return check


def serialized(out: str) -> Callable[[Ctx], None]:
    """`mmfm export --format stablehlo`: both encoders, and mmfm.local embeds with them."""
    def check(ctx):
        files = set(os.listdir(ctx.path(out)))
        assert {"image_encoder.jaxexport", "text_encoder.jaxexport", "serialized.json"} <= files, files
        code = ("import numpy as np, mmfm.local; m = mmfm.local.load(%r); "
                "print(m.encode_text(['a red circle']).shape, "
                "m.encode_image(np.zeros((3, m.image_size, m.image_size, 3), np.uint8)).shape)")
        res = ctx.shell(f"python -c \"{code % ctx.path(out)}\"")
        assert res.returncode == 0, failure_report(res)
        with open(os.path.join(ctx.path(out), "serialized.json")) as f:
            dim = json.load(f)["embed_dim"]
        assert res.stdout.split() == ["(1,", f"{dim})", "(3,", f"{dim})"], res.stdout
    return check


# ----------------------------------------------------------------------------- the table

@dataclass(frozen=True)
class Rule:
    section: str  # the heading the command is under
    command: str | None  # the command as the doc writes it (trailing comment dropped); None: all
    replace: tuple[tuple[str, str], ...] = ()  # literal (old, new) applied before it runs
    skip: bool = False
    why: str = ""  # why it is replaced or skipped
    keep: bool = False  # also run before the section's later commands (`source`)
    checks: tuple[Callable[[Ctx], None], ...] = ()


FULL = "a full-size run; :tiny runs the same code in a few steps at the smallest sizes"
TMP = "/tmp is shared with the machine's other jobs: the test's own directory stands for it"
DEPS_PTH = ("echo {site} > \"$(~/mmfm-env/bin/python -c "
            "'import sysconfig; print(sysconfig.get_paths()[\"purelib\"])')/deps.pth\" && ")
TRAIN = "python -m mmfm.train --config experiments/configs/"

RULES = (
    Rule("Two commands", "make demo", skip=True,
         why="the full demo (1800 steps, ~10 min); test_make_demo_is_the_readme_train_command "
             "checks it is the first command of 'Train, evaluate, export', run here at :tiny"),
    Rule("Two commands", "make test", skip=True, why="the test suite, this test among them"),
    Rule("Install with pip", "python -m pip install build",
         checks=(succeeds("python -m build --version"),)),
    Rule("Install with pip", "python -m build --wheel",
         checks=(wheel_has(WHEEL, "mmfm/recipes/demo.py", "mmfm/recipes/common.py"),)),
    Rule("Install with pip", "python -m venv ~/mmfm-env", checks=(exists("~/mmfm-env/bin/pip"),)),
    Rule("Install with pip", f"~/mmfm-env/bin/pip install -c requirements/lock.txt {WHEEL}",
         replace=(("~/mmfm-env/bin/pip install", DEPS_PTH + "~/mmfm-env/bin/pip install --no-index"),),
         why="the dependencies (1.1 GB) come from this environment through a path entry, not the "
             "index; the wheel is installed and checked against the lock",
         checks=(imports_mmfm_from("~/mmfm-env"),)),
    Rule("Install with pip", "source ~/mmfm-env/bin/activate", keep=True,
         checks=(resolves("mmfm", "~/mmfm-env/bin/mmfm"),)),
    Rule("Install with pip", "mmfm recipes", checks=(lists_recipes,)),
    Rule("Install with pip", "mmfm recipes copy demo my_demo.py",
         checks=(file_has("my_demo.py", "def get_config"),)),
    Rule("Install with pip", "mmfm train --config my_demo.py:tiny --workdir runs/try "
                             "--config.data.dir=data",
         checks=(trained("runs/try", steps=4), exists("data/captioned_shapes"))),
    Rule("Train, evaluate, export", TRAIN + "demo.py --workdir runs/demo --config.data.dir=data",
         replace=(("demo.py ", "demo.py:tiny "),), why=FULL, checks=(trained("runs/demo"),)),
    Rule("Train, evaluate, export", TRAIN + "demo.py:tiny --workdir /tmp/demo_tiny "
                                    "--config.data.dir=/tmp/data",
         replace=(("/tmp/", "{tmp}/"),), why=TMP,
         checks=(trained("/tmp/demo_tiny"), exists("/tmp/data/captioned_shapes"))),
    Rule("Train, evaluate, export", "mmfm eval --checkpoint runs/demo --out runs/demo_eval",
         checks=(evaluated("runs/demo_eval", like_run="runs/demo"),)),
    Rule("Train, evaluate, export", "mmfm eval --checkpoint runs/demo --suite shapes "
                                    "--out runs/demo_suite",
         checks=(suite_ran("runs/demo_suite", "shapes"),)),
    Rule("Train, evaluate, export", "mmfm export --workdir runs/demo --out runs/demo_export",
         checks=(exported("runs/demo_export"),)),
    Rule("Train, evaluate, export", "mmfm export --workdir runs/demo --out runs/demo_local "
                                    "--format stablehlo",
         checks=(serialized("runs/demo_local"),)),
    Rule("Embed and search a folder", "mmfm embed --model runs/demo_export --images photos/ "
                                      "--out photos.safetensors", skip=True,
         why="run by tests/evals/test_embed_search.py on 36 generated PNGs (the reader's photos/)"),
    Rule("Embed and search a folder", 'mmfm search --index photos.safetensors --text "a small red '
                                      'circle" -k 5 --grid hits.png', skip=True,
         why="run by tests/evals/test_embed_search.py on the index it embedded"),
    Rule("Bring your own data", None, skip=True,
         why="run as written by test_readme_own_data.py on 60 generated images (the section "
             "starts from the reader's own corpus/)"),
    Rule("Experiment recipes", TRAIN + "clip_b16.py:tiny --workdir /tmp/clip_tiny "
                               "--config.data.dir=/tmp/data",
         replace=(("/tmp/", "{tmp}/"),), why=TMP, checks=(trained("/tmp/clip_tiny"),)),
    Rule("Experiment recipes", TRAIN + "siglip_b16.py --workdir /mnt/gcs/runs/siglip_b16 "
                               "--config.data.name=wds --config.data.dir=/mnt/gcs/tfds "
                               "--config.mesh.shape='(1,-1,1)'", skip=True,
         why="SigLIP B/16 at full size on a TPU slice from a Cloud Storage mount; "
             "test_doc_commands checks its config and flags, test_configs_tiny_step runs "
             "siglip_b16.py:tiny"),
    Rule("What each recipe reproduces", TRAIN + "lit_shapes.py --workdir runs/lit "
                                        "--config.resume_from=runs/demo --config.data.dir=data",
         replace=(("lit_shapes.py ", "lit_shapes.py:tiny "),), why=FULL,
         checks=(trained("runs/lit", resumed_from="runs/demo"),)),
    Rule("What each recipe reproduces",
         "mmfm train --config experiments/configs/finetune_shapes.py --workdir runs/ft_shape "
         "--config.resume_from=runs/demo --config.data.dir=data",
         replace=(("finetune_shapes.py ", "finetune_shapes.py:tiny "),), why=FULL,
         checks=(trained("runs/ft_shape", resumed_from="runs/demo",
                         metrics=("head/top1", "linear_probe/accuracy")),)),
)


def bare(text: str) -> str:
    """A doc command as a rule names it: trailing `# comment` dropped, blanks collapsed."""
    return " ".join(re.sub(r"\s#\s.*$", "", text).split())


def doc_commands() -> list[dc.Command]:
    return [c for doc in DOCS for c in dc.markdown_commands(os.path.join(dc.ROOT, doc))]


def matches(rule: Rule, cmd: dc.Command) -> bool:
    return rule.section == cmd.section and rule.command in (None, bare(cmd.text))


def plan(rules: tuple[Rule, ...] = RULES) -> list[tuple[dc.Command, Rule]]:
    """Every doc command with its rule, in document order; fails on an unmatched command, a
    command with two rules, a rule with no command, or a replacement that replaces nothing."""
    out, errors = [], []
    for cmd in doc_commands():
        found = [r for r in rules if matches(r, cmd)]
        if len(found) != 1:
            errors.append(f"{cmd.where} [{cmd.section}] `{bare(cmd.text)}` matches {len(found)} "
                          f"rules of {__name__}.RULES; give it exactly one")
            continue
        out.append((cmd, found[0]))
    for rule in rules:
        cmds = [c for c, r in out if r is rule]
        if not cmds:
            errors.append(f"rule for [{rule.section}] `{rule.command}` matches no doc command")
        for old, _ in rule.replace:
            if any(old not in bare(c.text) for c in cmds):
                errors.append(f"rule for `{rule.command}`: {old!r} is not in the command")
        if (rule.replace or rule.skip) and not rule.why:
            errors.append(f"rule for `{rule.command}` replaces or skips without saying why")
    assert not errors, "\n".join(errors)
    return out


# ----------------------------------------------------------------------------- tests

def test_every_doc_command_has_one_rule():
    steps = plan()
    assert sum(not r.skip for _, r in steps) >= 10, [c.text for c, _ in steps]


@pytest.mark.parametrize("rules, expect", [
    (RULES[1:], "`make demo` matches 0 rules"),
    (RULES + (Rule("Two commands", "make deploy"),), "`make deploy` matches no doc command"),
    (RULES + (Rule("Two commands", "make test"),), "`make test` matches 2 rules"),
    ((Rule("Two commands", "make demo", replace=(("demo.py", "demo.py:tiny"),), why="x"),
      *RULES[1:]), "'demo.py' is not in the command"),
])
def test_plan_rejects_a_stale_table(rules, expect):
    with pytest.raises(AssertionError, match=re.escape(expect)):
        plan(rules)


def test_make_demo_is_the_readme_train_command():
    """`make demo` (skipped above) runs the README's first training command, which runs here."""
    train = next(bare(c.text) for c, _ in plan() if c.section == "Train, evaluate, export")
    res = subprocess.run(["make", "-n", "demo"], cwd=dc.ROOT,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    run = [line for line in res.stdout.splitlines() if "mmfm.train" in line]
    assert run and run[-1].split(" -m ", 1)[-1] == train.split(" -m ", 1)[-1], (run, train)


def test_own_data_section_is_run_elsewhere():
    import test_readme_own_data

    assert any(r.section == test_readme_own_data.SECTION and r.skip for r in RULES)


def _copy_checkout(dest: str) -> None:
    """The checkout's files as they are now (tracked and new, not ignored ones such as runs/)."""
    files = subprocess.run(["git", "-C", dc.ROOT, "ls-files", "-z", "--cached", "--others",
                            "--exclude-standard"], capture_output=True, check=True).stdout
    paths = [p for p in files.decode().split("\0") if p and os.path.lexists(os.path.join(dc.ROOT, p))]
    tar = subprocess.run(["tar", "-C", dc.ROOT, "--null", "-T", "-", "-cf", "-"],
                         input="\0".join(paths).encode(), capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", dest], input=tar, check=True)


@pytest.mark.slow
def test_doc_commands_run(tmp_path):
    work, tmp, home = tmp_path / "checkout", tmp_path / "tmp", tmp_path / "home"
    for d in (work, tmp, home):
        d.mkdir()
    assert not str(work.resolve()).startswith(os.path.realpath(dc.ROOT) + os.sep)
    _copy_checkout(str(work))
    bindir = os.path.dirname(sys.executable)
    assert os.path.isfile(os.path.join(bindir, "mmfm")), bindir
    env = {k: v for k, v in os.environ.items()
           if k not in ("XLA_FLAGS", "PYTHONPATH", "VIRTUAL_ENV")}
    env.update(PATH=bindir + os.pathsep + env.get("PATH", ""), HOME=str(home),
               JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jax_cache"))
    site = sysconfig.get_paths()["purelib"]

    ctx, section, timings = Ctx(str(work), str(tmp), env), None, []
    for cmd, rule in plan():
        if cmd.section != section:
            section, ctx.prefix = cmd.section, []
        if rule.skip:
            timings.append(("skipped", cmd.where, bare(cmd.text)))
            continue
        text = bare(cmd.text)
        ctx.replace = tuple((old, new.format(tmp=tmp, site=site)) for old, new in rule.replace)
        for old, new in ctx.replace:
            text = text.replace(old, new)
        t0 = time.perf_counter()
        res = ctx.shell(text)
        timings.append((f"{time.perf_counter() - t0:.1f} s", cmd.where, text))
        assert res.returncode == 0, f"{cmd.where}: `{text}`\n{failure_report(res)}"
        ctx.stdout = res.stdout
        if rule.keep:
            ctx.prefix.append(text)
        for check in rule.checks:
            check(ctx)
    print("\n".join("  ".join(t) for t in timings))
